"""``/metrics`` of the dashboard: what is watched, re-exported in Prometheus text.

`WatchCollector(watcher)` builds its metric families at scrape time from the watcher's
latest `StateSnapshot` (register it on a fresh ``CollectorRegistry``): the server's client
connections by application and state (postgres_exporter's ``pg_stat_activity_count``,
under our own ``poolwarden_watch_*`` names), pool and PgBouncer gauges, and the pending and
firing alerts as ``poolwarden_watch_alert`` labelled like Prometheus' ``ALERTS``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from poolwarden._dsn import redact_dsn
from poolwarden.watch.loop import StateSnapshot, Watcher
from poolwarden.web._state import state_json

__all__ = ["WatchCollector"]


class WatchCollector:
    """Export the latest tick of a `Watcher` as ``poolwarden_watch_*`` metrics at scrape time."""

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def describe(self) -> list[Metric]:
        """Return nothing: the families depend on what is watched (no auto-describe)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of the latest `StateSnapshot`."""
        snap = self._watcher.state()
        data = state_json(snap, self._watcher)
        yield CounterMetricFamily("poolwarden_watch_ticks", "Ticks of the watch loop.", snap.ticks)
        yield from _up(data)
        yield from _servers(data)
        yield from _pools(data)
        yield from _pgbouncers(data)
        yield _alerts(snap)
        yield GaugeMetricFamily(
            "poolwarden_watch_incidents_open", "Incidents open now.", len(snap.open_incidents)
        )


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"poolwarden_watch_{name}", doc, labels=labels)


def _up(data: Mapping[str, Any]) -> Iterator[Metric]:
    up = _gauge(
        "up", "1 when the probe of a watched target answered at the latest tick.", ["kind", "name"]
    )
    for kind in ("databases", "pgbouncers", "targets"):
        for row in data[kind]:
            up.add_metric([kind.rstrip("s"), row["name"]], 1.0 if row["up"] else 0.0)
    yield up


def _servers(data: Mapping[str, Any]) -> Iterator[Metric]:
    """Yield the server's connections by application and state (as pg_stat_activity_count)."""
    conns = _gauge("server_connections", "Client connections by application and state.",
                   ["database", "application_name", "state"])  # fmt: skip
    usable = _gauge("server_usable_connections", "Connection slots open to clients.", ["database"])
    for db in data["databases"]:
        for app, states in db["by_application"].items():
            for state, count in states.items():
                conns.add_metric([db["name"], app, state], float(count))
        if db["usable"] is not None:
            usable.add_metric([db["name"]], float(db["usable"]))
    yield from (conns, usable)


def _pools(data: Mapping[str, Any]) -> Iterator[Metric]:
    conns = _gauge("pool_connections", "Pool connections by state.", ["target", "pool", "state"])
    pending = _gauge(
        "pool_pending_requests", "Requests waiting for a connection.", ["target", "pool"]
    )
    limit = _gauge("pool_max", "Most connections the pool may open.", ["target", "pool"])
    wait = _gauge(
        "pool_wait_p95_seconds", "p95 wait for a connection, last minute.", ["target", "pool"]
    )
    for row in data["pools"]:
        key = [row["target"], row["pool"]]
        conns.add_metric([*key, "used"], row["used"])
        conns.add_metric([*key, "idle"], row["idle"])
        pending.add_metric(key, row["pending"])
        limit.add_metric(key, row["limit"])
        if row["wait_p95_s"] is not None:
            wait.add_metric(key, row["wait_p95_s"])
    yield from (conns, pending, limit, wait)


def _pgbouncers(data: Mapping[str, Any]) -> Iterator[Metric]:
    names = ["pgbouncer", "database", "user"]
    waiting = _gauge("pgbouncer_clients_waiting", "Clients waiting for a server.", names)
    maxwait = _gauge("pgbouncer_maxwait_seconds", "Longest client wait.", names)
    for bouncer in data["pgbouncers"]:
        for pool in bouncer["pools"]:
            key = [bouncer["name"], pool["database"], pool["user"]]
            waiting.add_metric(key, float(pool["waiting"]))
            maxwait.add_metric(key, pool["maxwait_s"])
    yield from (waiting, maxwait)


def _alerts(snap: StateSnapshot) -> Metric:
    """Return ``poolwarden_watch_alert``: 1 per pending or firing alert, as Prometheus' ALERTS."""
    family = _gauge("alert", "Alerts pending or firing, labelled as Prometheus' ALERTS.", [])
    for alert in snap.alerts:
        labels = {k: redact_dsn(v) for k, v in alert.labels.items()}
        labels |= {"alertname": alert.rule, "alertstate": alert.state, "severity": alert.severity}
        family.add_sample("poolwarden_watch_alert", labels, 1.0)
    return family
