"""The postmortem of an incident: four sections, its timeline, root cause and typed tasks.

Incidents are built the way watch builds them (`IncidentBook` fed alert events and a
diagnosis finding); the CLI reads them back from a real SQLite store in tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from tests.fixtures.alerts import Event, alert_event, at, counter_ids

from poolwarden.review import SECTIONS, action_items, postmortem_json, render_postmortem
from poolwarden.watch.diagnose import CAUSES
from poolwarden.watch.incidents import Incident, IncidentBook
from poolwarden.watch.store import Store

SECRET = "hunter2-never-in-a-postmortem"
REMEDY = (
    "lower orders-api's pool max_size from 100 to 77 (1 replica x 77 = 77 fits 97 usable)"
    " - see 'poolwarden plan'"
)
CLI = (
    "import sys; from poolwarden.cli import app, main; "
    "from poolwarden._cli_review import register; register(app); sys.exit(main(sys.argv[1:]))"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """A diagnosis finding as `IncidentBook.diagnose` reads it (`FindingLike`)."""

    cause: str = "pool_oversized"
    confidence: float = 0.95
    culprit: str = "orders-api"
    evidence: Mapping[str, float] = field(
        default_factory=lambda: {
            "client_connections": 96.0,
            "usable": 97.0,
            "held_by_culprit": 90.0,
            "pool_max": 100.0,
        }
    )
    remedy: str = REMEDY


def event(kind: str, seconds: float, rule: str = "PostgresConnectionsNearLimit") -> Event:
    """An alert event of `rule` on database main, `seconds` after T0."""
    return alert_event(
        kind,
        rule.lower()[:16],
        seconds,
        rule=rule,
        severity="critical",
        database="main",
        summary="server connections at 96/97 on main",
        description="usage above 95 %",
        value=0.96,
    )


def outage(*, resolve: bool = True, finding: Finding | None = None) -> Incident:
    """The seed's outage: connections near the limit, diagnosis, a notification, recovery."""
    book = IncidentBook(new_id=counter_ids())
    (opened,) = book.observe(event("firing", 0))
    incident_id = opened.incident.id
    book.observe(event("firing", 5, rule="PoolRejections"))
    book.diagnose(incident_id, finding or Finding(), at(12))
    book.record_notification(
        incident_id, channel="console", ok=True, detail="", at=at(13), status="firing"
    )
    if resolve:
        book.observe(event("resolved", 300))
        book.observe(event("resolved", 301, rule="PoolRejections"))
    incident = book.get(incident_id)
    assert incident is not None
    return incident


def test_the_four_sections_come_in_the_seed_order_under_a_header() -> None:
    """The Markdown opens with the title and id, then the seed's four sections in order."""
    text = render_postmortem(outage())
    assert text.startswith("# Postmortem: server connections at 96/97 on main")
    assert "`INC001`" in text
    positions = [text.index(f"## {name}") for name in SECTIONS]
    assert positions == sorted(positions)
    assert SECTIONS == (
        "Issue Summary",
        "Timeline",
        "Root Cause and Resolution",
        "Corrective and Preventative Measures",
    )


def test_the_summary_gives_duration_what_fired_and_the_root_cause() -> None:
    """A resolved incident's summary has its duration, both alerts and cause with culprit."""
    text = render_postmortem(outage())
    summary = text[text.index("## Issue Summary") : text.index("## Timeline")]
    assert "**Duration:** 5m01s (2026-05-01 12:00:00 UTC to 2026-05-01 12:05:01 UTC)" in summary
    assert "`PostgresConnectionsNearLimit` (critical)" in summary
    assert "`PoolRejections` (critical)" in summary
    assert "`pool_oversized` - orders-api (95% confident)" in summary


def test_the_timeline_lists_each_recorded_event_at_its_utc_time() -> None:
    """Alerts fired and resolved, the diagnosis and the notification, each as HH:MM:SS."""
    text = render_postmortem(outage())
    timeline = text[text.index("## Timeline") : text.index("## Root Cause")]
    entries = [line for line in timeline.splitlines() if line.startswith("- ")]
    assert [e.split(" - ")[0] for e in entries] == [
        "- 12:00:00",
        "- 12:00:05",
        "- 12:00:12",
        "- 12:00:13",
        "- 12:05:00",
        "- 12:05:01",
        "- 12:05:01",
    ]
    assert "PostgresConnectionsNearLimit firing (critical)" in entries[0]
    assert "root cause pool_oversized (95%): orders-api" in entries[2]
    assert "notification via console sent" in entries[3]
    assert "incident resolved after 5m01s" in entries[-1]
    assert "All times UTC, on 2026-05-01." in timeline


def test_the_root_cause_section_explains_the_class_and_tables_the_evidence() -> None:
    """Cause in plain words, the culprit, each evidence number in a row, and the remedy."""
    text = render_postmortem(outage())
    section = text[text.index("## Root Cause") : text.index("## Corrective")]
    assert "more connections than the database can serve" in section
    assert "**Culprit:** orders-api (confidence 95%)" in section
    assert "| `client_connections` | 96 |" in section
    assert "| `held_by_culprit` | 90 |" in section
    assert f"**Remedy:** {REMEDY}" in section
    assert "all alerts resolved at 2026-05-01 12:05:01 UTC, 5m01s after" in section


def test_action_items_for_pool_oversized_are_typed_and_start_with_the_remedy() -> None:
    """Remedy (mitigate), guard budget and audit in CI (prevent), watch and review (process)."""
    items = action_items(outage().root_cause)
    assert (items[0].type, items[0].text) == ("mitigate", REMEDY)
    assert [i.type for i in items] == ["mitigate", "prevent", "prevent", "process", "process"]
    assert "budget=Budget(" in items[1].text
    assert "poolwarden audit" in items[2].text
    assert "poolwarden watch" in items[3].text
    assert "post-incident review" in items[4].text
    text = render_postmortem(outage())
    assert f"| 1 | {REMEDY} | mitigate |" in text


@pytest.mark.parametrize("cause", CAUSES)
def test_every_cause_gets_prevention_and_a_post_incident_review(cause: str) -> None:
    """Each of the ten causes is explained and yields remedy, prevention and the review."""
    incident = outage(finding=Finding(cause=cause, remedy="do the thing"))
    items = action_items(incident.root_cause)
    assert items[0].type == "mitigate"
    assert "prevent" in [i.type for i in items]
    assert items[-1].type == "process"
    assert "post-incident review" in items[-1].text
    assert "a cause class this version does not describe" not in render_postmortem(incident)


def test_an_undiagnosed_incident_still_has_four_sections_and_a_review() -> None:
    """Without a root cause the postmortem says so and its first task is to find one."""
    book = IncidentBook(new_id=counter_ids())
    (opened,) = book.observe(event("firing", 0))
    text = render_postmortem(opened.incident)
    assert all(f"## {name}" in text for name in SECTIONS)
    assert "not diagnosed" in text
    items = action_items(None)
    assert items[0].type == "mitigate"
    assert "poolwarden status" in items[0].text
    assert "post-incident review" in items[-1].text


def test_an_ongoing_incident_says_ongoing() -> None:
    """An open incident's duration, header and timeline say ongoing, timed from `now`."""
    text = render_postmortem(outage(resolve=False), now=at(600))
    assert "**Duration:** ongoing (10m00s so far, opened 2026-05-01 12:00:00 UTC)" in text
    assert "| Resolved | ongoing |" in text
    assert "- ongoing at 12:10:00: the incident is not resolved yet" in text
    assert "**Resolution:** none yet; the incident is ongoing." in text
    assert postmortem_json(outage(resolve=False))["ongoing"] is True


def test_a_timeline_over_midnight_dates_its_entries() -> None:
    """When the entries span two UTC days each carries its date, not only HH:MM:SS."""
    text = render_postmortem(outage(resolve=False), now=at(86_400))
    assert "- 2026-05-01 12:00:00 - PostgresConnectionsNearLimit firing" in text
    assert "- ongoing at 2026-05-02 12:00:00: the incident is not resolved yet" in text
    assert "All times UTC." in text


def test_no_secret_from_labels_or_evidence_reaches_the_output() -> None:
    """A password in a DSN in labels, culprit, remedy or an evidence key is redacted."""
    dsn = f"postgresql://app:{SECRET}@db.internal/main"
    incident = outage()
    assert incident.root_cause is not None
    cause = replace(
        incident.root_cause,
        culprit=f"app at {dsn}",
        remedy=f"connect with password={SECRET} less often",
        evidence={f"conn {dsn}": 1.0, f"password={SECRET}": 2.0},
    )
    leaky = replace(incident, labels={"database": dsn}, title=f"down: {dsn}", root_cause=cause)
    text = render_postmortem(leaky)
    document = json.dumps(postmortem_json(leaky))
    assert SECRET not in text
    assert SECRET not in document
    assert "postgresql://app:***@db.internal/main" in text


def test_postmortem_json_holds_the_same_content() -> None:
    """The JSON has the header fields, duration, root cause, timeline and typed tasks."""
    document = postmortem_json(outage())
    assert document["incident_id"] == "INC001"
    assert document["duration_s"] == 301.0
    assert document["opened_at"] == "2026-05-01T12:00:00+00:00"
    root = document["root_cause"]
    assert isinstance(root, dict)
    assert (root["cause"], root["culprit"], root["remedy"]) == (
        "pool_oversized",
        "orders-api",
        REMEDY,
    )
    timeline = document["timeline"]
    assert isinstance(timeline, list)
    assert len(timeline) == 7
    tasks = document["action_items"]
    assert isinstance(tasks, list)
    assert tasks[0] == {"type": "mitigate", "text": REMEDY}


# -- the store and the CLI -------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `poolwarden ARGS` with the postmortem command registered, as a subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in ("POOLWARDEN_DSN", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite store in tmp_path holding the outage, as watch would have saved it."""
    url = f"sqlite:///{tmp_path / 'store' / 'poolwarden.db'}"
    with Store(url) as store:
        store.create_schema()
        store.save(outage())
    return url


def test_the_store_round_trip_renders_the_same_postmortem(store_url: str) -> None:
    """An incident read back from SQLite renders exactly as the one that was saved."""
    with Store(store_url) as store:
        loaded = store.get_incident("INC001")
    assert loaded is not None
    assert render_postmortem(loaded) == render_postmortem(outage())


def test_the_cli_prints_the_markdown_from_the_store(store_url: str) -> None:
    """`poolwarden postmortem INC001 --store URL` prints the four sections and the culprit."""
    result = run_cli("postmortem", "INC001", "--store", store_url)
    assert result.returncode == 0, result.stderr
    assert all(f"## {name}" in result.stdout for name in SECTIONS)
    assert "**Culprit:** orders-api" in result.stdout
    assert "- 12:00:12 - root cause pool_oversized" in result.stdout


def test_the_cli_writes_out_file_and_json(store_url: str, tmp_path: Path) -> None:
    """--out writes the file (no temporary left behind); --json writes the JSON document."""
    out = tmp_path / "pm.md"
    result = run_cli("postmortem", "INC001", "--store", store_url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}"
    assert out.read_text().startswith("# Postmortem:")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    result = run_cli("postmortem", "INC001", "--store", store_url, "--json")
    assert json.loads(result.stdout)["root_cause"]["culprit"] == "orders-api"


def test_the_cli_refuses_an_unknown_incident_in_one_line(store_url: str) -> None:
    """An id the store does not hold exits 2 with one line naming it."""
    result = run_cli("postmortem", "NOPE", "--store", store_url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "incident 'NOPE': not in store" in result.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"mysql://root:{SECRET}@127.0.0.1/x", "is not supported"),
        ("not a url", "cannot parse it"),
        ("sqlite:///{tmp}/missing.db", "no such file"),
    ],
)
def test_the_cli_refuses_a_bad_store_url_in_one_line(url: str, says: str, tmp_path: Path) -> None:
    """An unsupported, unparsable or missing store exits 2 with one redacted line."""
    result = run_cli("postmortem", "INC001", "--store", url.format(tmp=tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert says in result.stderr
    assert SECRET not in result.stderr
    assert not (tmp_path / "missing.db").exists()
