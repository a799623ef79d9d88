"""Name the root cause of a connection problem, whom to blame and the setting to change.

`diagnose(obs, store)` reads one tick's `Observation` and, when given, the trends in a
`SeriesStore` that `record_diagnosis` fills, and returns `Finding`s, most certain first: the
cause (one of `CAUSES`), how sure, the culprit (application_name, pool, blocking pid or
database), the numbers that say so, one line in the product's voice and the remedy. Pure:
no I/O, no clock (the time is `obs.at`). Decision rules, evidence and confidence of each
cause: docs/diagnose.md.
"""

from __future__ import annotations

from poolwarden.errors import ProbeError, TooManyConnections
from poolwarden.probe.postgres import ServerSnapshot
from poolwarden.probe.scrape import ScrapeResult
from poolwarden.watch._diagnose_causes import SERVER_CHECKS, database_down, target_down
from poolwarden.watch._diagnose_model import (
    APP_CONNECTIONS,
    CAUSES,
    POOL_SERIES,
    USABLE,
    WAIT_BUCKETS,
    Cause,
    Context,
    DiagnosisThresholds,
    Finding,
    apps_of,
    sample_sum,
    wait_buckets,
)
from poolwarden.watch._diagnose_pools import pgbouncer_waits, pool_leaks
from poolwarden.watch.observation import Observation
from poolwarden.watch.series import SeriesStore

__all__ = ["CAUSES", "Cause", "DiagnosisThresholds", "Finding", "diagnose", "record_diagnosis"]

_DEFAULT_THRESHOLDS = DiagnosisThresholds()


def diagnose(
    obs: Observation,
    store: SeriesStore | None = None,
    *,
    thresholds: DiagnosisThresholds = _DEFAULT_THRESHOLDS,
) -> list[Finding]:
    """Return the root causes `obs` (and the trends in `store`) point to, most certain first.

    A healthy server yields an empty list. `store` adds trends (leak growth, recent
    failures and waits); without it the counters since start stand in.
    """
    ctx = Context(obs, store, thresholds)
    pools = ctx.pools()
    found: list[Finding] = []
    for db, result in obs.databases.items():
        if isinstance(result, ProbeError) and not isinstance(result, TooManyConnections):
            found.append(database_down(db, result))
            continue
        server = ctx.server(db, result, [p for p in pools if p.database == db])
        for check in SERVER_CHECKS:
            found.extend(check(server, ctx))
    found.extend(pool_leaks(pools, ctx))
    found.extend(pgbouncer_waits(ctx))
    found.extend(target_down(ctx))
    return sorted(found, key=lambda f: (-f.confidence, CAUSES.index(f.cause), f.culprit))


def record_diagnosis(store: SeriesStore, obs: Observation) -> None:
    """Append at `obs.at` the series `diagnose` reads its trends from (before `diagnose`)."""
    for db, result in obs.databases.items():
        if isinstance(result, ServerSnapshot):
            store.append(USABLE, {"database": db}, obs.at, result.usable_connections)
            for app in apps_of(result):
                for state, value in app.states().items():
                    labels = {"database": db, "application_name": app.name, "state": state}
                    store.append(APP_CONNECTIONS, labels, obs.at, value)
    for target, scrape in obs.targets.items():
        if isinstance(scrape, ScrapeResult):
            for pool in scrape.pools():
                _record_pool(store, obs.at, target, pool, scrape)


def _record_pool(store: SeriesStore, at: float, target: str, pool: str, s: ScrapeResult) -> None:
    labels = {"target": target, "pool": pool}
    for metric, more, series in POOL_SERIES:
        value = sample_sum(s, metric, pool_name=pool, **more)
        if value is not None:  # absent is no data, not zero (as record_measures does)
            store.append(series, labels, at, value)
    for le, count in wait_buckets(s, pool).items():
        store.append(WAIT_BUCKETS, {**labels, "le": le}, at, count)
