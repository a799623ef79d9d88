"""`poolwarden drill` on the command line: bad input, the scenario list, a whole quick run.

The run is the README's main command in quick mode (guard off, then on) as a real
subprocess: it must exit 0, print the report as JSON, pass the default scenario's checks
(root cause, detection bound, <= 1 % failed with the guard on), and leave a postmortem
whose four sections carry the impact the drill recorded in the store, with its charts,
and no password anywhere in what it wrote or printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from poolwarden.drill.scenarios import SCENARIOS
from poolwarden.review.postmortem import SECTIONS
from poolwarden.watch.store import Store


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m poolwarden ARGS` as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "poolwarden", *args], capture_output=True, text=True,
        timeout=timeout, check=False, env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["drill", "no_such_fault"], "unknown scenario 'no_such_fault'"),
        (["drill", "--guard", "maybe"], "--guard 'maybe' must be off, on or both"),
        (["drill", "--quick", "--bogus"], "--bogus"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(args: list[str], expected: str) -> None:
    """An unknown scenario or flag: exit 2, one line naming it, nothing on stdout."""
    result = run(*args)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("poolwarden: error: ")
    assert expected in line
    assert result.stdout == ""


def test_an_out_that_is_a_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """--out naming a file: exit 2, one line; the file is left as it was."""
    out = tmp_path / "taken"
    out.write_text("mine")
    result = run("drill", "--quick", "--out", str(out))
    assert result.returncode == 2
    assert "is a file; give a directory" in result.stderr
    assert out.read_text() == "mine"


def test_list_names_every_scenario_the_default_first() -> None:
    """--list prints one line per scenario, oversized_pool first."""
    result = run("drill", "--list")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == list(SCENARIOS)
    assert names[0] == "oversized_pool"


@pytest.mark.slow
def test_the_default_drill_writes_a_postmortem_with_the_figures_from_the_store(
    tmp_path: Path,
) -> None:
    """The default drill, guard off then on: its checks pass; the postmortem reads the store."""
    result = run("drill", "--quick", "--json", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    off, on = report["runs"]
    scenario = SCENARIOS[report["scenario"]]
    assert (report["scenario"], off["guard"], on["guard"]) == ("oversized_pool", False, True)
    assert off["cause"] == scenario.cause
    assert off["detected_s"] is not None
    assert off["detected_s"] <= scenario.detect_within_s
    assert off["diagnosed_s"] is not None
    assert on["failed_pct"] <= 1.0
    text = Path(off["postmortem"]).read_text()
    for section in SECTIONS:
        assert f"# {section}" in text

    with Store(off["store_url"]) as store:
        incident = store.get_incident(off["incident_id"])
    assert incident is not None
    (impact,) = [e for e in incident.timeline if e.kind == "note" and "users_affected" in e.data]
    assert f"{impact.data['failed']} of {impact.data['requests']} requests failed" in text
    assert f"{impact.data['users_affected']} of {impact.data['users']} users" in text
    assert {Path(c).name for c in off["charts"]} == {"connections.png", "errors.png", "latency.png"}
    stamps = re.findall(r"^- (\d\d:\d\d:\d\d) - ", text, flags=re.M)
    assert stamps == sorted(stamps)
    assert len(stamps) >= 4  # fault, alert, root cause, remedy at least
    assert (tmp_path / "drill.md").read_text().startswith("## `oversized_pool`")
    # The audit of the fleet as the deploy left it is a task: 4 x 20 connections > 27.
    measures = text[text.index("## Corrective and Preventative Measures") :]
    assert "(audit `fleet-exceeds-server`: the fleet may open" in measures
    assert (Path(off["postmortem"]).parent / "topology.yaml").is_file()
    # The roles' random passwords never leave the process: not in any file, not printed.
    secret = re.compile(rb"(orders_app|billing_worker|reporting):[^@\s/]+@")
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and secret.search(p.read_bytes())]
    assert leaked == []
    assert not secret.search((result.stdout + result.stderr).encode())
