"""What the dashboard shows: the latest tick as JSON, and the pool series it charts.

`state_json(snapshot, watcher)` turns a `StateSnapshot` into the document of
``/api/state`` (shape: docs/dashboard.md); `incident_json` one incident with its alerts,
root cause and timeline; `record_dashboard` is the recorder the dashboard adds to the
loop, appending each guarded pool's used/idle/pending and wait p95 every tick. Strings
that could hold a DSN pass through `redact_dsn`. No Starlette here: pure data.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from poolwarden._dsn import redact_dsn
from poolwarden.probe.pgbouncer import PgBouncerSnapshot
from poolwarden.probe.postgres import ServerSnapshot
from poolwarden.probe.scrape import ScrapeResult
from poolwarden.watch.incidents import Incident
from poolwarden.watch.loop import StateSnapshot, Watcher
from poolwarden.watch.observation import Observation
from poolwarden.watch.series import LabelSet, SeriesStore

__all__ = [
    "POOL_COUNT",
    "POOL_PENDING",
    "POOL_WAIT_P95",
    "incident_json",
    "record_dashboard",
    "state_json",
]

# The series `record_dashboard` adds to the watcher's store (the loop records the rest).
POOL_COUNT = "target_pool:db_client_connection_count:sum"  # labels target, pool, state
POOL_PENDING = "target_pool:db_client_connection_pending_requests:sum"
POOL_WAIT_P95 = "target_pool:db_client_connection_wait_time_seconds:p95"
_WAIT_BUCKETS = "target_pool:db_client_connection_wait_time_seconds_bucket:sum"
_WAIT_WINDOW_S = 60.0


def record_dashboard(store: SeriesStore, obs: Observation) -> None:
    """Append each pool's used/idle/pending and wait p95 at `obs.at` (the loop calls this)."""
    for target, result in obs.targets.items():
        if not isinstance(result, ScrapeResult):
            continue
        for pool, row in _pool_rows(result).items():
            labels = {"target": target, "pool": pool}
            for state in ("used", "idle"):
                store.append(POOL_COUNT, {**labels, "state": state}, obs.at, row[state])
            store.append(POOL_PENDING, labels, obs.at, row["pending"])
            p95 = store.histogram_quantile(0.95, _WAIT_BUCKETS, labels, _WAIT_WINDOW_S, obs.at)
            if p95 is not None and math.isfinite(p95):
                store.append(POOL_WAIT_P95, labels, obs.at, p95)


def _pool_rows(scrape: ScrapeResult) -> dict[str, dict[str, float]]:
    """Return pool -> used, idle, pending, limit, from a guarded app's scrape."""
    return {
        pool: {
            "used": scrape.total("db_client_connection_count", pool_name=pool, state="used"),
            "idle": scrape.total("db_client_connection_count", pool_name=pool, state="idle"),
            "pending": scrape.total("db_client_connection_pending_requests", pool_name=pool),
            "limit": scrape.total("db_client_connection_max", pool_name=pool),
        }
        for pool in scrape.pools()
    }


# --- /api/state --------------------------------------------------------------------------------


def state_json(snap: StateSnapshot, watcher: Watcher) -> dict[str, Any]:
    """Return the latest tick as JSON-ready data; the shape is documented in docs/dashboard.md."""
    obs = snap.observation or Observation(at=0.0)
    p95 = watcher.read_series(
        lambda s: {k: s.latest(POOL_WAIT_P95, k) for k in s.label_sets(POOL_WAIT_P95)}
    )
    return {
        "ticks": snap.ticks,
        "interval": snap.interval,
        "at": obs.at if snap.observation else None,
        "databases": [_database(n, r) for n, r in obs.databases.items()],
        "pools": [
            {
                "target": t,
                "pool": p,
                **row,
                "wait_p95_s": p95.get(LabelSet({"target": t, "pool": p})),
            }
            for t, r in obs.targets.items()
            if isinstance(r, ScrapeResult)
            for p, row in _pool_rows(r).items()
        ],
        "pgbouncers": [_pgbouncer(n, r) for n, r in obs.pgbouncers.items()],
        "targets": [_probe(n, r) for n, r in obs.targets.items()],
        "alerts": [
            {
                "alertname": a.rule,
                "state": a.state,
                "severity": a.severity,
                "labels": a.labels,
                "value": a.value,
                "threshold": a.threshold,
                "summary": a.summary,
                "description": a.description,
                "runbook": a.runbook,
                "active_at": a.active_at,
                "fired_at": a.fired_at,
            }
            for a in snap.alerts
        ],
        "incidents": {
            "open": [incident_json(i) for i in snap.open_incidents],
            "recent": [incident_json(i) for i in snap.recent_incidents],
        },
    }


def _probe(name: str, result: object) -> dict[str, Any]:
    up = not isinstance(result, Exception)
    return {"name": name, "up": up, "error": None if up else redact_dsn(str(result))}


def _database(name: str, result: object) -> dict[str, Any]:
    row = _probe(name, result)
    if not isinstance(result, ServerSnapshot):
        return {**row, "used": None, "usable": None, "max_connections": None,
                "by_state": {}, "by_application": {}}  # fmt: skip
    by_app: dict[str, dict[str, int]] = {}
    for group in result.groups:
        states = by_app.setdefault(group.application_name or "(none)", {})
        states[group.state] = states.get(group.state, 0) + group.count
    return {
        **row,
        "used": result.client_connections,
        "usable": result.usable_connections,
        "max_connections": result.max_connections,
        "by_state": dict(result.by_state),
        "by_application": by_app,
    }


def _pgbouncer(name: str, result: object) -> dict[str, Any]:
    row = _probe(name, result)
    pools = result.pools if isinstance(result, PgBouncerSnapshot) else ()
    return {
        **row,
        "pools": [
            {
                "database": p.database,
                "user": p.user,
                "waiting": p.cl_waiting,
                "active": p.cl_active,
                "maxwait_s": p.maxwait_s,
                "mode": p.pool_mode,
            }
            for p in pools
        ],
    }


def incident_json(incident: Incident) -> dict[str, Any]:
    """Return an incident with its alerts, root cause and timeline as JSON-ready data."""
    cause = incident.root_cause
    return {
        "id": incident.id,
        "status": incident.status,
        "severity": incident.severity,
        "title": incident.title,
        "labels": dict(incident.labels),
        "opened_at": _iso(incident.opened_at),
        "resolved_at": _iso(incident.resolved_at),
        "alerts": [
            {
                "rule": a.rule,
                "status": a.status,
                "severity": a.severity,
                "summary": a.summary,
                "labels": dict(a.labels),
                "fired_at": _iso(a.fired_at),
            }
            for a in incident.alerts.values()
        ],
        "root_cause": None
        if cause is None
        else {
            "cause": cause.cause,
            "confidence": cause.confidence,
            "culprit": cause.culprit,
            "remedy": cause.remedy,
            "evidence": dict(cause.evidence),
        },
        "timeline": [{"at": _iso(e.at), "kind": e.kind, "text": e.text} for e in incident.timeline],
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
