"""The sample recorder, run by a real Watcher: what a postmortem needs lands in the store.

A Watcher ticks against the session's real PostgreSQL, a guarded pool's real /metrics and
a real /metrics exposing an HTTP histogram whose requests the test observes, and the
recorder writes connections, pool and HTTP samples to a SQLite store in tmp_path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram
from tests.fixtures.apps import guarded_app
from tests.fixtures.metrics_server import serve_metrics
from tests.fixtures.pg import PgServer

from poolwarden.watch.loop import Watcher
from poolwarden.watch.observation import TargetInfo
from poolwarden.watch.rules import load_rules
from poolwarden.watch.samples import Sample, SampleName, sample_recorder
from poolwarden.watch.store import Store

BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0)


@contextlib.contextmanager
def http_app() -> Iterator[tuple[str, Histogram]]:
    """Serve an app's HTTP duration histogram on a real loopback /metrics."""
    registry = CollectorRegistry()
    histogram = Histogram(
        "http_server_request_duration_seconds", "HTTP request duration",
        ["http_route", "http_response_status_code"], buckets=BUCKETS, registry=registry,
    )  # fmt: skip
    with serve_metrics(registry) as server:
        yield server.url, histogram


def latest(samples: tuple[Sample, ...], name: str, **labels: str) -> Sample:
    """Return the newest sample `name` carrying `labels`."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert found, f"no sample {name} {labels}"
    return found[-1]


def test_a_watcher_tick_stores_connection_pool_and_http_samples(
    pg: PgServer, tmp_path: Path
) -> None:
    """Each tick stores the server's connections and usable slots, connections by app, the
    pool's used and max, and per target the request and 5xx counters and the interval p99."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    with (
        guarded_app(pg.dsn, "billing", max_size=4, min_size=1) as pool_app,
        http_app() as (http_url, histogram),
    ):
        watcher = Watcher(
            store=store, rules=load_rules(), databases={"main": pg.dsn}, interval=0.2,
            targets=[TargetInfo("orders-api", http_url, "main"),
                     TargetInfo("billing", pool_app.url, "main")],
        )  # fmt: skip
        watcher.add_recorder(sample_recorder(store))
        watcher.start()
        try:
            histogram.labels("/orders", "200")  # the route exists before its first request
            watcher.tick()
            for _ in range(8):
                histogram.labels("/orders", "200").observe(0.02)
            for _ in range(2):
                histogram.labels("/orders", "500").observe(0.3)
            report = watcher.tick()
        finally:
            watcher.close()
    samples = store.read_samples(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC))
    store.close()
    tick = datetime.fromtimestamp(report.observation.at, UTC)
    server = report.observation.server("main")
    assert server is not None
    main = {"database": "main"}
    assert latest(samples, SampleName.SERVER_CONNECTIONS, **main).value == server.client_connections
    assert latest(samples, SampleName.SERVER_USABLE, **main).value == server.usable_connections
    billing = latest(samples, SampleName.APP_CONNECTIONS, application_name="billing")
    assert (billing.at, billing.value) == (tick, 1.0)
    pool = {"target": "billing", "pool": "billing", "database": "main"}
    assert latest(samples, SampleName.POOL_MAX, **pool).value == 4.0
    assert latest(samples, SampleName.POOL_USED, **pool).value == 0.0
    api = {"target": "orders-api", "database": "main"}
    requests = [s.value for s in samples if s.name == SampleName.HTTP_REQUESTS]
    assert requests == [0.0, 10.0]
    assert latest(samples, SampleName.HTTP_ERRORS, **api).value == 2.0
    # 10 requests in the interval: 8 under 50 ms, 2 in (100 ms, 500 ms]; rank 9.9 falls in
    # the last, interpolated: 0.1 + 0.4 * (9.9 - 8) / 2.
    p99 = latest(samples, SampleName.HTTP_P99, **api)
    assert (p99.at, p99.value) == (tick, pytest.approx(0.48))


def test_a_failing_store_never_breaks_the_tick(
    pg: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the samples table gone the ticks go on, one warning is logged; when the table
    is back the samples are stored again."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    watcher = Watcher(store=store, rules=load_rules(), databases={"main": pg.dsn})
    watcher.add_recorder(sample_recorder(store))
    watcher.start()
    with store._engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE poolwarden_samples")
    try:
        with caplog.at_level(logging.WARNING, logger="poolwarden.watch.samples"):
            reports = [watcher.tick(), watcher.tick()]
            store.create_schema()
            watcher.tick()
    finally:
        watcher.close()
    assert all(r.observation.server("main") is not None for r in reports)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(f"samples not stored in {store.target} (OperationalError")
    assert messages[1] == f"samples stored again in {store.target}"
    stored = store.read_samples(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC))
    assert {s.name for s in stored} >= {SampleName.SERVER_CONNECTIONS, SampleName.SERVER_USABLE}
    store.close()
