"""Every drill scenario end to end in quick mode, on its own real PostgreSQL (issue 6, point 7).

Each test runs `run_drill(name, guard="both", quick=True)`: the demo app's replicas under
open-loop HTTP load, the fault set up for real, a real `Watcher` on the server and the
replicas' /metrics. With the guard off the watch must name the scenario's root cause and
fire its first alert within the scenario's bound; with the guard on at most 1 % of the
requests may fail (503 + Retry-After sheds are counted apart: they are the guard's answer,
fast and retryable). The default drill's postmortem is checked through the CLI in
test_cli_drill.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from poolwarden.drill.runner import DrillReport, RunResult, run_drill
from poolwarden.drill.scenarios import DEFAULT_SCENARIO, SCENARIOS, Scenario

pytestmark = pytest.mark.slow


def runs(report: DrillReport) -> tuple[RunResult, RunResult]:
    """Return the guard-off and guard-on runs of a report."""
    off, on = report.runs
    assert (off.guard, on.guard) == (False, True)
    return off, on


# The default scenario runs through the command line, with the same checks, in
# test_cli_drill.py (the README's main command).
@pytest.mark.parametrize("name", [name for name in SCENARIOS if name != DEFAULT_SCENARIO])
def test_scenario_names_its_root_cause_in_time_and_the_guard_keeps_failures_under_1pct(
    name: str, tmp_path: Path
) -> None:
    """Guard off: the expected cause, first alert within the bound; guard on: <= 1 % failed."""
    scenario = SCENARIOS[name]
    off, on = runs(run_drill(name, guard="both", quick=True, out_dir=tmp_path))

    check_runs(scenario, off, on)


def check_runs(scenario: Scenario, off: RunResult, on: RunResult) -> None:
    """Guard off: the expected cause, named, first alert within the bound; on: <= 1 % failed."""
    assert off.cause == scenario.cause, off.summary
    assert off.detected_s is not None
    assert off.detected_s <= scenario.detect_within_s
    assert off.diagnosed_s is not None
    assert on.failed_pct <= 1.0, on.phases
    assert on.requests > 0
