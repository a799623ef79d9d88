"""Run a scenario end to end: baseline -> fault -> detection -> diagnosis -> fix -> recovery.

`run_drill` starts the scenario's own embedded PostgreSQL, seeds the orders database, and
for each guard setting (off, then on) starts the demo app's replicas, a `Watcher` on the
server and the replicas' /metrics, and open-loop HTTP load through a round-robin balancer.
After a healthy baseline it injects the fault, waits for the watch to fire and to name
the root cause, applies the scenario's remedy (computed from the diagnosis), and keeps the
load on while the service recovers. Every request is filed under the phase its scheduled
start fell in. The incident, with notes for the fault, the remedy and the measured impact,
is in the run's store; the postmortem and its charts are written next to it.
Reference: docs/drill.md.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from poolwarden.drill._drill_run import RunContext, RunSettings
from poolwarden.drill._drill_server import DrillServer
from poolwarden.drill.scenarios import Scenario, get_scenario

__all__ = ["DrillReport", "GuardMode", "PhaseResult", "RunResult", "run_drill"]

GuardMode = Literal["off", "on", "both"]


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """What the requests scheduled during one phase became."""

    name: str
    seconds: float
    requests: int
    served: int
    rejected: int  # 503 + Retry-After: shed on purpose by the guard
    failed: int  # errors and timeouts
    goodput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]

    @property
    def failed_pct(self) -> float:
        """Return the failed share of the phase's requests, in percent."""
        return 100.0 * self.failed / self.requests if self.requests else 0.0

    @property
    def rejected_pct(self) -> float:
        """Return the shed share of the phase's requests, in percent."""
        return 100.0 * self.rejected / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run of a scenario, guard off or on."""

    scenario: str
    guard: bool
    fault: str
    fault_at: datetime
    detected_s: float | None  # fault -> first alert
    diagnosed_s: float | None  # fault -> the expected root cause named
    cause: str | None  # the root cause named first (None: no incident)
    culprit: str | None
    summary: str | None
    remedy: str | None
    fix: str | None  # what the runner applied (None: nothing to fix)
    expected_cause: str
    detect_within_s: float
    incident_id: str | None
    phases: tuple[PhaseResult, ...]
    users: int
    users_affected: int
    store_url: str
    postmortem: str | None  # path of the Markdown written, if any
    charts: tuple[str, ...]

    @property
    def requests(self) -> int:
        """Return the requests of all phases."""
        return sum(p.requests for p in self.phases)

    @property
    def failed_pct(self) -> float:
        """Return the failed share of all requests, in percent."""
        total = self.requests
        return 100.0 * sum(p.failed for p in self.phases) / total if total else 0.0

    @property
    def rejected_pct(self) -> float:
        """Return the shed share of all requests, in percent."""
        total = self.requests
        return 100.0 * sum(p.rejected for p in self.phases) / total if total else 0.0

    def to_json(self) -> dict[str, Any]:
        """Return the run as JSON-ready data."""
        data = asdict(self)
        data["fault_at"] = self.fault_at.isoformat()
        data["phases"] = [
            asdict(p) | {"failed_pct": p.failed_pct, "rejected_pct": p.rejected_pct}
            for p in self.phases
        ]
        data |= {"requests": self.requests, "failed_pct": self.failed_pct,
                 "rejected_pct": self.rejected_pct}  # fmt: skip
        return data


@dataclass(frozen=True, slots=True)
class DrillReport:
    """A drill: the scenario and its runs."""

    scenario: str
    title: str
    story: str
    quick: bool
    out_dir: str
    runs: tuple[RunResult, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "scenario": self.scenario, "title": self.title, "story": self.story,
            "quick": self.quick, "out_dir": self.out_dir,
            "runs": [r.to_json() for r in self.runs],
        }  # fmt: skip


Progress = Callable[[str, dict[str, Any]], None]


def run_drill(
    name: str,
    *,
    guard: GuardMode = "both",
    quick: bool = False,
    out_dir: Path,
    on_progress: Progress = lambda kind, data: None,
) -> DrillReport:
    """Run scenario `name` with the guard off, on, or both; write results under `out_dir`."""
    scenario = get_scenario(name)
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[guard]
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    with _server(scenario, on_progress) as server:
        for on in modes:
            run_dir = out_dir / scenario.name / ("guard-on" if on else "guard-off")
            _fresh(run_dir)
            settings = RunSettings(scenario, guard=on, quick=quick, out_dir=run_dir)
            on_progress("run", {"guard": on, "dir": str(run_dir)})
            server.reset()
            runs.append(RunContext(settings, server, on_progress).execute())
    report = DrillReport(
        scenario.name, scenario.title, scenario.story, quick, str(out_dir), tuple(runs)
    )
    (out_dir / "drill.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


@contextlib.contextmanager
def _server(scenario: Scenario, on_progress: Progress) -> Iterator[DrillServer]:
    """Start the scenario's own embedded server in a temporary data dir; remove it after."""
    with tempfile.TemporaryDirectory(prefix="poolwarden-drill-") as tmp:
        started = time.monotonic()
        server = DrillServer(Path(tmp), max_connections=scenario.max_connections)
        try:
            server.start()
            on_progress("server", {"max_connections": scenario.max_connections,
                                   "seconds": time.monotonic() - started})  # fmt: skip
            yield server
        finally:
            server.stop()


def _fresh(run_dir: Path) -> None:
    """Empty a run's output directory (our own output from an earlier drill)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
