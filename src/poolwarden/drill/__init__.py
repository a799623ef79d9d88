"""The drill: replay an outage on a real PostgreSQL, end to end, guard off and on.

`run_drill(name, guard=..., quick=..., out_dir=...)` (runner.py) runs a scenario of
scenarios.py against the demo app (demoapp.py) under open-loop load (load.py); report.py
lays the results out. Reference: docs/drill.md.
"""

from __future__ import annotations

from poolwarden.drill.demoapp import AppConfig, AppProcess, create_app, create_schema
from poolwarden.drill.load import LatencyHistogram, LoadResult, LoadSecond, Outcome, open_loop
from poolwarden.drill.report import comparison_rows, phase_rows, render_markdown
from poolwarden.drill.runner import DrillReport, GuardMode, PhaseResult, RunResult, run_drill
from poolwarden.drill.scenarios import (
    DEFAULT_SCENARIO,
    SCENARIOS,
    DrillContext,
    Scenario,
    get_scenario,
)

__all__ = [
    "AppConfig",
    "AppProcess",
    "DEFAULT_SCENARIO",
    "DrillContext",
    "DrillReport",
    "GuardMode",
    "LatencyHistogram",
    "LoadResult",
    "LoadSecond",
    "Outcome",
    "PhaseResult",
    "RunResult",
    "SCENARIOS",
    "Scenario",
    "comparison_rows",
    "create_app",
    "create_schema",
    "get_scenario",
    "open_loop",
    "phase_rows",
    "render_markdown",
    "run_drill",
]
