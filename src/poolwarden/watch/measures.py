"""Turn one tick's probe results into the measures the rules compare.

Each tick the watch loop calls, in this order::

    record_measures(store, obs)           # append what the windows need, forget what aged out
    values = compute_measures(store, obs) # measure -> LabelSet -> float, for RuleEngine.evaluate

`compute_measures` reads the window `record_measures` just extended: call that first. The
measures, their labels and units are the table "Measures" of docs/rules.md; `MEASURES` maps each name
of `KNOWN_MEASURES` to the function that computes it. A measure that cannot be computed
for a label set this tick (its probe failed, fewer than two samples, no traffic) is left
out: that is *no data*, not zero. Pure: no I/O, no clock; time is `obs.at`.

What `record_measures` keeps in the store, named like Prometheus recording rules
(``level:metric:operation``), each summed over every other label of the scrape so that a
window is one series:

| series | labels | from |
|---|---|---|
| ``target_pool:poolwarden_pool_rejections_total:sum`` | target, pool | every reason |
| ``target_pool:db_client_connection_timeouts_total:sum`` | target, pool | |
| ``target_pool:poolwarden_pool_leaks_total:sum`` | target, pool | |
| ``target_pool:db_client_connection_wait_time_seconds_bucket:sum`` | target, pool, le | |
| ``target:db_client_connection_max:sum`` | target | every pool |
| ``target:http_server_request_duration_seconds_bucket:sum`` | target, le | |
| ``target:http_server_request_duration_seconds_count:sum`` | target | |
| ``target:http_server_request_duration_seconds_count_5xx:sum`` | target | status ``5..`` |
| ``database:client_connections`` | database | `ServerSnapshot.client_connections` |

Summing before the rate (PromQL sums the rates) gives the same value as long as an app's
series reset together, as they do when it restarts; a label set that first appears inside
the window (the first 500 of a route) counts from zero here instead of from its second
sample, so errors show one tick sooner than in Prometheus.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from poolwarden.errors import TooManyConnections
from poolwarden.probe.pgbouncer import PgBouncerPool, PgBouncerSnapshot
from poolwarden.probe.postgres import ServerSnapshot
from poolwarden.probe.scrape import ScrapeResult
from poolwarden.watch.observation import Observation
from poolwarden.watch.series import LabelSet, SeriesStore, seconds_to_exhaustion

__all__ = ["MEASURES", "compute_measures", "record_measures"]

_Values = dict[LabelSet, float]
_Measure = Callable[[SeriesStore, Observation, float], _Values]

_REJECTIONS = "target_pool:poolwarden_pool_rejections_total:sum"
_TIMEOUTS = "target_pool:db_client_connection_timeouts_total:sum"
_LEAKS = "target_pool:poolwarden_pool_leaks_total:sum"
_WAIT_BUCKETS = "target_pool:db_client_connection_wait_time_seconds_bucket:sum"
_POOL_MAX = "target:db_client_connection_max:sum"
_HTTP_BUCKETS = "target:http_server_request_duration_seconds_bucket:sum"
_HTTP_REQUESTS = "target:http_server_request_duration_seconds_count:sum"
_HTTP_ERRORS = "target:http_server_request_duration_seconds_count_5xx:sum"
_CLIENTS = "database:client_connections"

# Per pool: the scrape's counter -> the store's series.
_POOL_COUNTERS = (
    ("poolwarden_pool_rejections_total", _REJECTIONS),
    ("db_client_connection_timeouts_total", _TIMEOUTS),
    ("poolwarden_pool_leaks_total", _LEAKS),
)
_HTTP = "http_server_request_duration_seconds"
_SERVER_ERROR = re.compile(r"5..")  # PromQL's =~"5..", anchored as PromQL anchors it


# --- the two entry points ---------------------------------------------------------------


def record_measures(store: SeriesStore, obs: Observation) -> None:
    """Append at `obs.at` what the measures' windows need; drop what aged out of the store."""
    for target, result in obs.targets.items():
        if isinstance(result, ScrapeResult):
            _record_pools(store, obs.at, target, result)
            _record_http(store, obs.at, target, result)
    for database, server in obs.databases.items():
        if isinstance(server, ServerSnapshot):
            store.append(_CLIENTS, {"database": database}, obs.at, server.client_connections)
    store.forget_older_than(obs.at)


def compute_measures(
    store: SeriesStore, obs: Observation, *, window_s: float = 60.0
) -> dict[str, dict[LabelSet, float]]:
    """Return every measure that has data this tick: measure -> label set -> value.

    Call `record_measures(store, obs)` first. `window_s` is "the last minute" of docs/rules.md (rates,
    quantiles, the exhaustion trend); it must not exceed the store's ``max_age_s``.
    """
    values: dict[str, dict[LabelSet, float]] = {}
    for name, measure in MEASURES.items():
        found = measure(store, obs, window_s)
        if found:
            values[name] = found
    return values


# --- recording ----------------------------------------------------------------------------


def _record_pools(store: SeriesStore, at: float, target: str, scrape: ScrapeResult) -> None:
    for pool in scrape.pools():
        labels = {"target": target, "pool": pool}
        for metric, series in _POOL_COUNTERS:
            value = _total(scrape, metric, pool_name=pool)
            if value is not None:
                store.append(series, labels, at, value)
        buckets = _buckets(scrape, "db_client_connection_wait_time_seconds_bucket", pool)
        for le, count in buckets.items():
            store.append(_WAIT_BUCKETS, {**labels, "le": le}, at, count)
    size = _total(scrape, "db_client_connection_max")
    if size is not None:
        store.append(_POOL_MAX, {"target": target}, at, size)


def _record_http(store: SeriesStore, at: float, target: str, scrape: ScrapeResult) -> None:
    requests = _total(scrape, f"{_HTTP}_count")
    if requests is None:
        return
    labels = {"target": target}
    errors = sum(
        s.value
        for s in scrape.samples(f"{_HTTP}_count")
        if _SERVER_ERROR.fullmatch(s.labels.get("http_response_status_code", ""))
    )
    # Recorded even at 0, so "requests but no 5xx" reads as ratio 0 rather than no data.
    store.append(_HTTP_REQUESTS, labels, at, requests)
    store.append(_HTTP_ERRORS, labels, at, errors)
    for le, count in _buckets(scrape, f"{_HTTP}_bucket").items():
        store.append(_HTTP_BUCKETS, {**labels, "le": le}, at, count)


def _total(scrape: ScrapeResult, name: str, **labels: str) -> float | None:
    """Return the sum of the samples `name` carrying `labels`, or None when there is none."""
    found = [
        s.value
        for s in scrape.samples(name)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return math.fsum(found) if found else None


def _buckets(scrape: ScrapeResult, name: str, pool: str | None = None) -> dict[str, float]:
    """Return a histogram's cumulative counts summed by bound (of one pool, when given)."""
    counts: dict[float, float] = {}
    for sample in scrape.samples(name):
        if sample.name != name or (pool is not None and sample.labels.get("pool_name") != pool):
            continue
        try:
            bound = float(sample.labels.get("le", "nan"))
        except ValueError:
            continue
        if not math.isnan(bound):
            counts[bound] = counts.get(bound, 0.0) + sample.value
    # One spelling per bound: an app may write le="1" where another writes le="1.0".
    return {("+Inf" if math.isinf(b) else repr(b)): c for b, c in sorted(counts.items())}


# --- what this tick saw -------------------------------------------------------------------


def _pools(obs: Observation) -> Iterator[tuple[ScrapeResult, str, LabelSet]]:
    """Yield (scrape, pool, labels) for every pool of every target scraped this tick."""
    for target, result in obs.targets.items():
        if isinstance(result, ScrapeResult):
            for pool in result.pools():
                yield result, pool, LabelSet({"target": target, "pool": pool})


def _scraped(obs: Observation) -> Iterator[tuple[ScrapeResult, LabelSet]]:
    """Yield (scrape, labels) for every target scraped this tick."""
    for target, result in obs.targets.items():
        if isinstance(result, ScrapeResult):
            yield result, LabelSet({"target": target})


def _servers(obs: Observation) -> Iterator[tuple[str, ServerSnapshot]]:
    """Yield (database, snapshot) for every database whose probe answered with one."""
    for database, result in obs.databases.items():
        if isinstance(result, ServerSnapshot):
            yield database, result


def _pgbouncer_pools(obs: Observation) -> Iterator[tuple[PgBouncerPool, LabelSet]]:
    """Yield (pool, labels) for every pool of every PgBouncer probed this tick."""
    for name, result in obs.pgbouncers.items():
        if isinstance(result, PgBouncerSnapshot):
            for pool in result.pools:
                labels = {"pgbouncer": name, "database": pool.database, "user": pool.user}
                yield pool, LabelSet(labels)


def _db(database: str) -> LabelSet:
    return LabelSet({"database": database})


# --- pools (scrape) -----------------------------------------------------------------------


def _pool_saturation(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """(in use + waiting) / max size; left out when any of the three is not exposed."""
    values: _Values = {}
    for scrape, pool, labels in _pools(obs):
        used = _total(scrape, "db_client_connection_count", pool_name=pool, state="used")
        pending = _total(scrape, "db_client_connection_pending_requests", pool_name=pool)
        size = _total(scrape, "db_client_connection_max", pool_name=pool)
        if used is not None and pending is not None and size:
            values[labels] = (used + pending) / size
    return values


def _pool_wait_p95_seconds(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """p95 of the waits for a connection over the window; left out with no wait in it."""
    values: _Values = {}
    for _, _, labels in _pools(obs):
        p95 = store.histogram_quantile(0.95, _WAIT_BUCKETS, labels, window_s, obs.at)
        if p95 is not None:
            values[labels] = p95
    return values


def _pool_acquire_failures_per_second(
    store: SeriesStore, obs: Observation, window_s: float
) -> _Values:
    """Rate of the guard's rejections, or PromQL's ``or``: of timeouts for an unguarded pool."""
    values: _Values = {}
    for _, _, labels in _pools(obs):
        rate = store.rate(_REJECTIONS, labels, window_s, obs.at)
        if rate is None:
            rate = store.rate(_TIMEOUTS, labels, window_s, obs.at)
        if rate is not None:
            values[labels] = rate
    return values


def _pool_leaks_per_minute(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """Leaks per minute: the increase over the window, scaled to 60 s."""
    values: _Values = {}
    for _, _, labels in _pools(obs):
        rate = store.rate(_LEAKS, labels, window_s, obs.at)
        if rate is not None:
            values[labels] = rate * 60.0
    return values


# --- the server (postgres probe) ----------------------------------------------------------


def _server_connections_used_ratio(
    store: SeriesStore, obs: Observation, window_s: float
) -> _Values:
    """Client connections / usable connections."""
    return {_db(database): server.used_ratio for database, server in _servers(obs)}


def _server_free_connections(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """Usable minus client connections; 0 when the probe itself was refused with 53300."""
    values: _Values = {}
    for database, result in obs.databases.items():
        if isinstance(result, ServerSnapshot):
            values[_db(database)] = float(result.usable_connections - result.client_connections)
        elif isinstance(result, TooManyConnections):
            values[_db(database)] = 0.0
    return values


def _server_seconds_to_exhaustion(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """Seconds until the window's trend fills the usable slots: 0 when full, +Inf when not rising.

    A probe refused with 53300 proves the server full, so that reads 0 as well.
    """
    values: _Values = {}
    for database, result in obs.databases.items():
        if isinstance(result, TooManyConnections):
            values[_db(database)] = 0.0
        elif isinstance(result, ServerSnapshot):
            seconds = _until_full(store, database, result, window_s, obs.at)
            if seconds is not None:
                values[_db(database)] = seconds
    return values


def _until_full(
    store: SeriesStore, database: str, server: ServerSnapshot, window_s: float, now: float
) -> float | None:
    """Return the seconds to exhaustion of one server, or None under two samples."""
    if server.client_connections >= server.usable_connections:
        return 0.0
    points = store.window(_CLIENTS, _db(database), window_s, now)
    if len(points) < 2:
        return None
    seconds = seconds_to_exhaustion(points, server.usable_connections)
    return math.inf if seconds is None else seconds


def _idle_in_transaction_max_seconds(
    store: SeriesStore, obs: Observation, window_s: float
) -> _Values:
    """Per application, the longest idle time of its sessions idle in transaction."""
    values: _Values = {}
    for database, server in _servers(obs):
        for session in server.idle_in_transaction:
            labels = LabelSet({"database": database, "application_name": session.application_name})
            values[labels] = max(values.get(labels, 0.0), session.idle_s)
    return values


def _query_max_seconds(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """The oldest running query's age, labelled with its application."""
    values: _Values = {}
    for database, server in _servers(obs):
        query = server.oldest_active_query
        if query is not None:
            labels = LabelSet({"database": database, "application_name": query.application_name})
            values[labels] = server.oldest_active_query_s
    return values


def _database_up(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """1 when the server answered (a snapshot, or a refusal with 53300), else 0."""
    return {
        _db(database): float(isinstance(result, ServerSnapshot | TooManyConnections))
        for database, result in obs.databases.items()
    }


def _budget_oversubscription_ratio(
    store: SeriesStore, obs: Observation, window_s: float
) -> _Values:
    """Sum of the max sizes of every pool of the database's targets / usable connections.

    A target whose scrape failed this tick counts with its last max sizes still in the
    store: pool sizes are configuration, and one flaky replica must not hide the sum.
    """
    values: _Values = {}
    for database, server in _servers(obs):
        sizes = [
            store.latest(_POOL_MAX, {"target": target})
            for target, info in obs.target_info.items()
            if info.database == database
        ]
        known = [size for size in sizes if size is not None]
        if not known:
            continue
        usable = server.usable_connections
        values[_db(database)] = math.fsum(known) / usable if usable > 0 else math.inf
    return values


# --- the application's HTTP server (scrape) -----------------------------------------------


def _target_up(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """1 when the target's /metrics answered with a scrape, 0 when it failed or hung."""
    return {
        LabelSet({"target": target}): float(isinstance(result, ScrapeResult))
        for target, result in obs.targets.items()
    }


def _api_error_ratio(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """5xx responses / all responses over the window; left out when no request came."""
    values: _Values = {}
    for _, labels in _scraped(obs):
        requests = store.increase(_HTTP_REQUESTS, labels, window_s, obs.at)
        errors = store.increase(_HTTP_ERRORS, labels, window_s, obs.at)
        if requests and errors is not None:
            values[labels] = errors / requests
    return values


def _api_latency_p99_seconds(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """p99 of the request durations over the window; left out when no request came."""
    values: _Values = {}
    for _, labels in _scraped(obs):
        p99 = store.histogram_quantile(0.99, _HTTP_BUCKETS, labels, window_s, obs.at)
        if p99 is not None:
            values[labels] = p99
    return values


# --- PgBouncer ----------------------------------------------------------------------------


def _pgbouncer_clients_waiting(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """``cl_waiting`` of each (database, user) pool."""
    return {labels: float(pool.cl_waiting) for pool, labels in _pgbouncer_pools(obs)}


def _pgbouncer_max_wait_seconds(store: SeriesStore, obs: Observation, window_s: float) -> _Values:
    """``maxwait`` of each (database, user) pool, in seconds."""
    return {labels: pool.maxwait_s for pool, labels in _pgbouncer_pools(obs)}


# Measure name -> the function computing it; the keys are exactly KNOWN_MEASURES.
MEASURES: Mapping[str, _Measure] = MappingProxyType(
    {
        "pool_saturation": _pool_saturation,
        "pool_wait_p95_seconds": _pool_wait_p95_seconds,
        "pool_acquire_failures_per_second": _pool_acquire_failures_per_second,
        "pool_leaks_per_minute": _pool_leaks_per_minute,
        "server_connections_used_ratio": _server_connections_used_ratio,
        "server_free_connections": _server_free_connections,
        "server_seconds_to_exhaustion": _server_seconds_to_exhaustion,
        "idle_in_transaction_max_seconds": _idle_in_transaction_max_seconds,
        "query_max_seconds": _query_max_seconds,
        "database_up": _database_up,
        "budget_oversubscription_ratio": _budget_oversubscription_ratio,
        "target_up": _target_up,
        "api_error_ratio": _api_error_ratio,
        "api_latency_p99_seconds": _api_latency_p99_seconds,
        "pgbouncer_clients_waiting": _pgbouncer_clients_waiting,
        "pgbouncer_max_wait_seconds": _pgbouncer_max_wait_seconds,
    }
)
