"""Turn a finished run into its `RunResult`: phases, times, notes, postmortem and charts."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poolwarden.drill._traffic import PhaseTally
from poolwarden.watch.incidents import Incident
from poolwarden.watch.store import Store

if TYPE_CHECKING:
    from poolwarden.drill._drill_run import RunContext
    from poolwarden.drill.runner import PhaseResult, RunResult

_log = logging.getLogger("poolwarden.drill")


def phase_results(tallies: list[PhaseTally], ended: float) -> tuple[PhaseResult, ...]:
    """Return each phase's figures; a phase lasts until the next one starts."""
    from poolwarden.drill.runner import PhaseResult

    results = []
    for i, tally in enumerate(tallies):
        end = tallies[i + 1].started if i + 1 < len(tallies) else ended
        seconds = max(end - tally.started, 1e-9)
        if tally.offered == 0 and seconds < 0.5:
            continue  # detection and diagnosis in the same tick: no phase between them
        p50, p99 = tally.latency.quantile(0.50), tally.latency.quantile(0.99)
        results.append(PhaseResult(
            name=tally.name, seconds=round(seconds, 2), requests=tally.offered,
            served=tally.served, rejected=tally.rejected, failed=tally.failed,
            goodput_rps=round(tally.served / seconds, 1),
            p50_ms=None if p50 is None else round(p50 * 1000, 1),
            p99_ms=None if p99 is None else round(p99 * 1000, 1),
            errors=dict(sorted(tally.errors.items())),
        ))  # fmt: skip
    return tuple(results)


def finish(ctx: RunContext, store: Store, timeline: dict[str, Any]) -> RunResult:
    """Compute the run's figures, annotate its incident, write its postmortem."""
    from poolwarden.drill.runner import RunResult

    settings, seen, scenario = ctx.settings, ctx.seen, ctx.settings.scenario
    fault_at = float(timeline["fault_at"])
    phases = phase_results(ctx.ledger.phases, ctx.ledger.ended or time.monotonic())
    first = seen.first_alert
    expected = next((c for c in seen.causes if c.data.get("cause") == scenario.cause), None)
    named = expected or (seen.causes[0] if seen.causes else None)
    incident_id = _incident_id(first, named)
    cause = timeline.get("cause")
    traffic = ctx.traffic
    users = len(traffic.seen) if traffic else 0
    affected = len(traffic.affected) if traffic else 0
    postmortem: str | None = None
    charts: tuple[str, ...] = ()
    if incident_id:
        _annotate(ctx, store, incident_id, phases, users, affected)
        _audit_notes(ctx, store, incident_id, timeline)
        postmortem, charts = _write_postmortem(store, incident_id, settings.out_dir)
    return RunResult(
        scenario=scenario.name, guard=settings.guard, fault=str(timeline.get("fault", "")),
        fault_at=datetime.fromtimestamp(fault_at, UTC),
        detected_s=None if first is None else round(max(0.0, first.at - fault_at), 1),
        diagnosed_s=None if expected is None else round(max(0.0, expected.at - fault_at), 1),
        cause=None if named is None else str(named.data.get("cause")),
        culprit=None if named is None else str(named.data.get("culprit")),
        summary=None if named is None else str(named.data.get("summary")),
        remedy=None if cause is None else cause.remedy,
        fix=timeline.get("fix"), expected_cause=scenario.cause,
        detect_within_s=scenario.detect_within_s, incident_id=incident_id or None,
        phases=phases, users=users, users_affected=affected, store_url=ctx.store_url,
        postmortem=postmortem, charts=charts,
    )  # fmt: skip


def _incident_id(first: Any, named: Any) -> str:
    for event in (named, first):
        if event is not None and event.data.get("incident_id"):
            return str(event.data["incident_id"])
    return ""


def _annotate(
    ctx: RunContext,
    store: Store,
    incident_id: str,
    phases: tuple[PhaseResult, ...],
    users: int,
    affected: int,
) -> None:
    """Add the fault, the remedy and the measured impact to the incident's timeline."""
    for at, text, data in ctx.notes:
        store.add_note(incident_id, at, text, data)
    hit = [p for p in phases if p.name != "baseline"]
    requests = sum(p.requests for p in hit)
    failed = sum(p.failed for p in hit)
    rejected = sum(p.rejected for p in hit)
    share = 100.0 * failed / requests if requests else 0.0
    text = (
        f"impact measured by the drill's load: {failed} of {requests} requests failed "
        f"({share:.1f} %), {rejected} shed with 503 + Retry-After; {affected} of {users} "
        "users saw an error"
    )
    data = {"requests": requests, "failed": failed, "rejected": rejected, "users": users,
            "users_affected": affected}  # fmt: skip
    store.add_note(incident_id, datetime.now(UTC), text, data)


def _audit_notes(ctx: RunContext, store: Store, incident_id: str, timeline: dict[str, Any]) -> None:
    """Audit the fleet as the fault left it; note each finding on the incident."""
    from poolwarden.drill._drill_audit import audit_fleet

    config = timeline.get("fleet_config")
    if config is None:
        return
    scenario = ctx.settings.scenario
    try:
        findings = audit_fleet(config, scenario.replicas, scenario.neighbours,
                               ctx.server.admin_dsn(), ctx.settings.out_dir)  # fmt: skip
    except Exception as exc:  # the audit adds to the postmortem; it must not lose it
        _log.warning("drill: audit of the fleet failed: %s", exc)
        return
    at = datetime.fromtimestamp(float(timeline["fault_at"]), UTC)
    for f in findings:
        text = f"audit {f.severity} {f.code}: {f.title}"
        store.add_note(incident_id, at, text, {"audit": f.code, "severity": f.severity,
                                               "title": f.title, "fix": f.fix})  # fmt: skip


def _write_postmortem(
    store: Store, incident_id: str, out_dir: Path
) -> tuple[str | None, tuple[str, ...]]:
    """Write postmortem.md and its charts into `out_dir`; return their paths."""
    from poolwarden.review.charts import write_charts
    from poolwarden.review.postmortem import incident_window, render_postmortem

    incident: Incident | None = store.get_incident(incident_id)
    if incident is None:
        return None, ()
    now = datetime.now(UTC)
    start, end = incident_window(incident, now)  # the window `poolwarden postmortem` reads
    samples = store.read_samples(start, end or now)
    charts = write_charts(incident, samples, out_dir)
    path = out_dir / "postmortem.md"
    partial = path.with_suffix(".md.tmp")  # written whole, then renamed: never half a file
    partial.write_text(render_postmortem(incident, samples=samples, charts=charts, now=now))
    partial.replace(path)
    return str(path), tuple(str(c) for c in charts)
