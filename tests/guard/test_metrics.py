"""The guard's metrics, read from a real /metrics endpoint, match what the test did exactly."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample
from psycopg_pool import ConnectionPool
from tests.fixtures.guard_metrics import DB_CLIENT_FAMILIES
from tests.fixtures.metrics_server import MetricsServer, scrape, serve_metrics
from tests.fixtures.pg import PgServer

from poolwarden.errors import ConfigError, PoolSaturated
from poolwarden.guard import guard
from poolwarden.guard.metrics import Histogram

NAME = "pgt-metrics"
FAMILIES = {
    *DB_CLIENT_FAMILIES,
    "poolwarden_pool_rejections_total",
    "poolwarden_pool_limit",
    "poolwarden_pool_leaks_total",
}


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test: no state shared through prometheus_client's global one."""
    return CollectorRegistry()


@pytest.fixture
def endpoint(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    """A real HTTP /metrics endpoint on 127.0.0.1 serving `registry`."""
    with serve_metrics(registry) as server:
        yield server


def values(samples: list[Sample], pool: str) -> dict[str, float]:
    """Key the samples of `pool` as ``name{label=value,...}``, the pool_name label left out."""
    out: dict[str, float] = {}
    for sample in samples:
        if sample.labels.get("pool_name") != pool:
            continue
        rest = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pool_name")
        out[f"{sample.name}{{{rest}}}" if rest else sample.name] = sample.value
    return out


def assert_includes(actual: dict[str, float], expected: dict[str, float]) -> None:
    """Every expected sample is present with exactly the expected value."""
    assert {k: actual.get(k) for k in expected} == expected


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll (bounded) until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def try_checkout(pool: Any, reasons: list[str]) -> None:
    """Check a connection out and back; record the reason if the guard refuses."""
    try:
        with pool.connection():
            pass
    except PoolSaturated as exc:
        reasons.append(exc.reason)


def state(used: int, idle: int, pending: int) -> dict[str, float]:
    """The expected pool gauges."""
    return {
        "db_client_connection_count{state=used}": used,
        "db_client_connection_count{state=idle}": idle,
        "db_client_connection_pending_requests": pending,
    }


def counts(wait: int, use: int, create: int, timeouts: int, leaks: int) -> dict[str, float]:
    """The expected histogram counts and counters."""
    return {
        "db_client_connection_wait_time_seconds_count": wait,
        "db_client_connection_use_time_seconds_count": use,
        "db_client_connection_create_time_seconds_count": create,
        "db_client_connection_timeouts_total": timeouts,
        "poolwarden_pool_leaks_total": leaks,
    }


def rejections(queue_full: int, deadline: int) -> dict[str, float]:
    """The expected rejections by reason (shedding is off in these tests)."""
    return {
        "poolwarden_pool_rejections_total{reason=queue_full}": queue_full,
        "poolwarden_pool_rejections_total{reason=deadline}": deadline,
        "poolwarden_pool_rejections_total{reason=shed}": 0,
    }


def overload(pool: Any, url: str, queue_full: int) -> dict[str, float]:
    """Hold all 3 connections, queue 2 requests to their deadline, refuse `queue_full` more.

    Return the scrape taken while the 2 requests wait.
    """
    reasons: list[str] = []
    with contextlib.ExitStack() as held:
        for _ in range(3):
            held.enter_context(pool.connection())
        waiters = [threading.Thread(target=try_checkout, args=(pool, reasons)) for _ in range(2)]
        for thread in waiters:
            thread.start()
        wait_until(lambda: pool.guard.snapshot().admission.waiting == 2)
        for _ in range(queue_full):
            try_checkout(pool, reasons)
        during = values(scrape(url), NAME)
        for thread in waiters:
            thread.join(timeout=10)
    assert sorted(reasons) == ["deadline"] * 2 + ["queue_full"] * queue_full
    return during


def test_scrape_reports_each_instrument_exactly(
    pg: PgServer, registry: CollectorRegistry, endpoint: MetricsServer
) -> None:
    """N checkouts, K queue-full, D deadlines, one leak and M connects read back exactly."""
    raw: ConnectionPool[Any] = ConnectionPool(pg.dsn, min_size=3, max_size=3, open=False)
    options = {"max_waiting": 2, "timeout": 0.5, "shed": False, "leak_threshold": 1.2}
    with guard(raw, name=NAME, registry=registry, **options) as pool:
        pool.wait(timeout=10)  # M = 3 connections created
        for _ in range(5):  # N = 5 quick checkouts
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        during = overload(pool, endpoint.url, queue_full=3)  # K = 3, D = 2
        with pool.connection():  # the leak: held past leak_threshold
            wait_until(lambda: pool.guard.metrics.leaks == 1)
            leaking = values(scrape(endpoint.url), NAME)
        final = values(scrape(endpoint.url), NAME)
    assert_includes(during, {**state(3, 0, 2), **counts(8, 5, 3, 0, 0), **rejections(3, 0)})
    assert_includes(leaking, {**state(1, 2, 0), **counts(9, 8, 3, 2, 1), **rejections(3, 2)})
    assert_includes(final, {**state(0, 3, 0), **counts(9, 9, 3, 2, 1), **rejections(3, 2)})
    assert_includes(
        final,
        {
            "db_client_connection_max": 3,
            "db_client_connection_idle_max": 3,
            "db_client_connection_idle_min": 3,
            "poolwarden_pool_limit": 3,
            # The 5 quick holds are under 0.5 s; the 3 held through the 0.5 s deadline
            # and the leak (over 1.2 s) are not.
            "db_client_connection_use_time_seconds_bucket{le=0.5}": 5,
            "db_client_connection_use_time_seconds_bucket{le=+Inf}": 9,
            "db_client_connection_wait_time_seconds_bucket{le=+Inf}": 9,
            "db_client_connection_create_time_seconds_bucket{le=+Inf}": 3,
        },
    )
    assert final["db_client_connection_use_time_seconds_sum"] > 3 * 0.5 + 1.2
    assert final["db_client_connection_create_time_seconds_sum"] > 0
    assert {key.split("{")[0] for key in final} >= FAMILIES


def test_every_sample_carries_the_pool_name(
    pg: PgServer, registry: CollectorRegistry, endpoint: MetricsServer
) -> None:
    """Each guard family has one sample set per pool, told apart by the pool_name label."""
    raw_a: ConnectionPool[Any] = ConnectionPool(pg.dsn, min_size=1, max_size=2, open=False)
    raw_b: ConnectionPool[Any] = ConnectionPool(pg.dsn, min_size=1, max_size=5, open=False)
    a = guard(raw_a, name="pgt-a", registry=registry)
    b = guard(raw_b, name="pgt-b", registry=registry, limit=4)
    samples = scrape(endpoint.url)
    assert {s.labels.get("pool_name") for s in samples} == {"pgt-a", "pgt-b"}
    assert values(samples, "pgt-a")["poolwarden_pool_limit"] == 2
    assert values(samples, "pgt-b")["poolwarden_pool_limit"] == 4
    assert a.guard.name == "pgt-a"
    assert b.guard.name == "pgt-b"


def test_two_guards_with_one_name_on_one_registry_is_a_config_error(
    pg: PgServer, registry: CollectorRegistry
) -> None:
    """Pool names label the metrics, so one registry refuses a second pool of the same name."""
    first = guard(ConnectionPool(pg.dsn, open=False), name="pgt-dup", registry=registry)
    with pytest.raises(
        ConfigError, match=r"pool name 'pgt-dup' is already registered.*unique name="
    ):
        guard(ConnectionPool(pg.dsn, open=False), name="pgt-dup", registry=registry)
    # Another registry is another namespace.
    guard(ConnectionPool(pg.dsn, open=False), name="pgt-dup", registry=CollectorRegistry())
    assert first.guard.name == "pgt-dup"


def test_a_collected_guard_disappears_from_the_scrape(
    pg: PgServer, registry: CollectorRegistry, endpoint: MetricsServer
) -> None:
    """Once a guarded pool is garbage-collected its samples go, and its name is free again."""
    kept = guard(ConnectionPool(pg.dsn, open=False), name="pgt-kept", registry=registry)
    dropped = guard(ConnectionPool(pg.dsn, open=False), name="pgt-dropped", registry=registry)
    names = {s.labels.get("pool_name") for s in scrape(endpoint.url)}
    assert names == {"pgt-kept", "pgt-dropped"}
    del dropped
    gc.collect()
    assert {s.labels.get("pool_name") for s in scrape(endpoint.url)} == {"pgt-kept"}
    guard(ConnectionPool(pg.dsn, open=False), name="pgt-dropped", registry=registry)
    assert kept.guard.name == "pgt-kept"


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    """A value equal to a bound falls in that bucket; buckets add up; +Inf holds the count."""
    hist = Histogram(buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 2.0, 7.5):
        hist.observe(value)
    assert hist.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 6.0)]
    assert hist.count == 6
    assert hist.sum == pytest.approx(11.15)
    assert Histogram().cumulative()[-1] == ("+Inf", 0.0)
