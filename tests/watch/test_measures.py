"""Measures computed from real probe results and hand-written scrapes, tick by tick.

Server measures come from real snapshots of a private PostgreSQL (usable connections 10)
and from a real 53300 refusal; pool measures from a real guarded psycopg pool's registry;
HTTP, budget and edge cases from hand-written Prometheus text; PgBouncer from the probe's
dataclasses. Every tick carries an explicit `at`. Windowed values are worked by hand with
PromQL's extrapolation in the docstrings (window 60 s, left open): two samples 10 s apart
whose first lies 50 s after the window's start extrapolate back by half an interval, 5 s,
unless the counter's zero point is nearer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from psycopg_pool import ConnectionPool
from tests.fixtures.pg import PgServer

from poolwarden.errors import (
    DatabaseUnreachable,
    PoolSaturated,
    ProbeError,
    TargetBadResponse,
    TargetTimeout,
    TargetUnreachable,
    TooManyConnections,
)
from poolwarden.guard import guard
from poolwarden.probe.pgbouncer import (
    PgBouncerConfig,
    PgBouncerPool,
    PgBouncerSnapshot,
)
from poolwarden.probe.postgres import ServerSnapshot, snapshot
from poolwarden.probe.scrape import ScrapeResult, parse_metrics
from poolwarden.watch.measures import MEASURES, compute_measures, record_measures
from poolwarden.watch.observation import Observation, TargetInfo
from poolwarden.watch.rules import KNOWN_MEASURES, RuleEngine, load_rules
from poolwarden.watch.series import LabelSet, SeriesStore, seconds_to_exhaustion

USABLE = 10  # max_connections 13 less the 3 superuser_reserved_connections
MAIN = LabelSet({"database": "main"})
APP_ROLE = "mea_app"
APP_PASSWORD = "mea-secret"

Measures = dict[str, dict[LabelSet, float]]


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(pg_factory: Callable[..., PgServer]) -> PgServer:
    """A private server nobody else connects to, so connection counts are exact."""
    server = pg_factory(max_connections=13)
    with server.connect() as admin:
        admin.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}'")
    return server


@pytest.fixture(scope="module")
def base(server: PgServer) -> ServerSnapshot:
    """A real snapshot of the idle server: only the probe's own session."""
    snap = snapshot(server.dsn)
    assert (snap.client_connections, snap.usable_connections) == (1, USABLE)
    return snap


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll (bounded) until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@contextlib.contextmanager
def sessions(server: PgServer, app: str, n: int) -> Iterator[list[psycopg.Connection[Any]]]:
    """Open `n` superuser sessions named `app`; close them and wait until the server sees it."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(psycopg.connect(server.dsn, application_name=app)) for _ in range(n)
        ]
    wait_until(lambda: all(g.application_name != app for g in snapshot(server.dsn).groups))


def tick(
    store: SeriesStore,
    at: float,
    *,
    databases: dict[str, ServerSnapshot | ProbeError] | None = None,
    targets: dict[str, ScrapeResult | ProbeError] | None = None,
    target_info: dict[str, TargetInfo] | None = None,
    pgbouncers: dict[str, PgBouncerSnapshot | ProbeError] | None = None,
) -> Measures:
    """Run one tick the way the loop does: record, then compute."""
    obs = Observation(
        at=at,
        databases=databases or {},
        targets=targets or {},
        target_info=target_info or {},
        pgbouncers=pgbouncers or {},
    )
    record_measures(store, obs)
    return compute_measures(store, obs)


def pool(target: str, name: str) -> LabelSet:
    """The labels of a pool measure."""
    return LabelSet({"target": target, "pool": name})


def app(name: str) -> LabelSet:
    """The labels of a per-application server measure on database main."""
    return LabelSet({"database": "main", "application_name": name})


# --- the table ------------------------------------------------------------------------------


def test_the_table_computes_exactly_the_known_measures() -> None:
    """MEASURES has one function per name in KNOWN_MEASURES, and no other."""
    assert set(MEASURES) == KNOWN_MEASURES


def test_an_empty_tick_gives_no_data_and_failed_scrapes_only_target_up_0() -> None:
    """Nothing probed: no measure. Only failed probes: target_up 0 and nothing else, not zeros."""
    store = SeriesStore()
    assert tick(store, 100.0) == {}
    failed = TargetTimeout("http://127.0.0.1:1/metrics: no answer in 2 s", timeout=2.0)
    down = DatabaseUnreachable("pgbouncer 127.0.0.1:6432: connection refused")
    assert tick(store, 110.0, targets={"orders": failed}, pgbouncers={"pgb": down}) == {
        "target_up": {LabelSet({"target": "orders"}): 0.0}
    }


def test_target_up_is_0_for_every_failed_scrape_and_target_down_fires_on_the_third() -> None:
    """A scrape reads 1; a timeout, a refusal or a bad answer read 0, per target.

    PoolwardenTargetDown (for 2 s) goes pending on the first failed tick at 1 s intervals
    and fires on the third: one blip alone fires nothing.
    """
    url = "http://127.0.0.1:1/metrics"
    failures: list[ProbeError] = [
        TargetTimeout(f"{url}: no answer within 1 s", timeout=1.0),
        TargetUnreachable(f"{url}: connection refused"),
        TargetBadResponse(f"{url}: HTTP 500", status=500),
    ]
    engine = RuleEngine([r for r in load_rules() if r.name == "PoolwardenTargetDown"])
    ok, hung = LabelSet({"target": "ok"}), LabelSet({"target": "hung"})
    kinds: list[tuple[float, str, str]] = []
    for at, failure in zip((100.0, 101.0, 102.0), failures, strict=True):
        targets: dict[str, ScrapeResult | ProbeError] = {"ok": scraped(""), "hung": failure}
        values = tick(SeriesStore(), at, targets=targets)
        assert values == {"target_up": {ok: 1.0, hung: 0.0}}
        kinds += [(at, e.kind, e.labels["target"]) for e in engine.evaluate(at, values)]
    assert kinds == [(100.0, "pending", "hung"), (102.0, "firing", "hung")]


# --- the server, from real snapshots --------------------------------------------------------


def test_a_real_snapshot_gives_ratio_free_slots_idle_transactions_and_the_oldest_query(
    server: PgServer,
) -> None:
    """Per database: used ratio, free slots, up; per application: idle-in-tx max and query age.

    Sessions: 2 idle in transaction (mea-idle-a), 1 aborted in transaction (mea-idle-b), 1
    running pg_sleep (mea-sleeper), 1 idle (mea-plain), and the probe: 6 of 10 usable.
    """
    with (
        sessions(server, "mea-idle-a", 2) as idle_a,
        sessions(server, "mea-idle-b", 1) as (idle_b,),
        sessions(server, "mea-plain", 1),
        sessions(server, "mea-sleeper", 1) as (sleeper,),
    ):
        for conn in idle_a:
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            idle_b.execute("SELECT 1 / 0")
        sleeper.autocommit = True
        sleeper.pgconn.send_query(b"SELECT pg_sleep(30)")  # runs while we probe
        snaps: list[ServerSnapshot] = []
        wait_until(
            lambda: bool(snaps.append(snapshot(server.dsn)) or snaps[-1].oldest_active_query)
        )
        snap = snaps[-1]
        with server.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [sleeper.info.backend_pid])
        sleeper.close()  # psycopg does not know of the raw query; a commit would trip on it
    values = tick(SeriesStore(), 1000.0, databases={"main": snap})

    idle = {s.application_name: s.idle_s for s in snap.idle_in_transaction}
    a_max = max(s.idle_s for s in snap.idle_in_transaction if s.application_name == "mea-idle-a")
    assert len(snap.idle_in_transaction) == 3
    assert values == {
        "server_connections_used_ratio": {MAIN: 0.6},
        "server_free_connections": {MAIN: 4.0},
        "database_up": {MAIN: 1.0},
        "idle_in_transaction_max_seconds": {
            app("mea-idle-a"): a_max,
            app("mea-idle-b"): idle["mea-idle-b"],
        },
        "query_max_seconds": {app("mea-sleeper"): snap.oldest_active_query_s},
    }
    assert snap.oldest_active_query_s > 0


def test_a_refused_probe_is_up_and_full_and_an_unreachable_one_is_down(
    server: PgServer,
) -> None:
    """53300: database_up 1, free 0, exhaustion 0 and nothing else; unreachable: up 0 only."""
    with sessions(server, "mea-filler", USABLE), pytest.raises(TooManyConnections) as refused:
        snapshot(server.url(user=APP_ROLE, password=APP_PASSWORD))
    unreachable = DatabaseUnreachable("postgresql://127.0.0.1:1/postgres: connection refused")
    values = tick(SeriesStore(), 1000.0, databases={"main": refused.value, "reports": unreachable})
    assert values == {
        "database_up": {MAIN: 1.0, LabelSet({"database": "reports"}): 0.0},
        "server_free_connections": {MAIN: 0.0},
        "server_seconds_to_exhaustion": {MAIN: 0.0},
    }


def test_exhaustion_is_the_window_fit_zero_when_full_and_inf_when_flat_or_falling(
    base: ServerSnapshot,
) -> None:
    """Rising 2,4,6,8 every 10 s: (10 - 8) / 0.2 per s = 10 s; flat and falling: +Inf.

    One sample is no data; a server already at its usable limit reads 0 from the first tick.
    """
    series = {"rising": (2, 4, 6, 8), "flat": (5, 5, 5, 5), "falling": (8, 6, 4, 2)}
    store = SeriesStore()
    for i, at in enumerate((100.0, 110.0, 120.0, 130.0)):
        databases: dict[str, ServerSnapshot | ProbeError] = {
            name: dataclasses.replace(base, client_connections=counts[i])
            for name, counts in series.items()
        }
        databases["full"] = dataclasses.replace(base, client_connections=USABLE)
        values = tick(store, at, databases=databases)["server_seconds_to_exhaustion"]
        if i == 0:
            assert values == {LabelSet({"database": "full"}): 0.0}
    expected = seconds_to_exhaustion(
        store.window("database:client_connections", {"database": "rising"}, 60.0, 130.0), USABLE
    )
    assert values == {
        LabelSet({"database": "rising"}): pytest.approx(10.0),
        LabelSet({"database": "flat"}): math.inf,
        LabelSet({"database": "falling"}): math.inf,
        LabelSet({"database": "full"}): 0.0,
    }
    assert values[LabelSet({"database": "rising"})] == expected


def test_real_snapshots_at_90_percent_fire_server_connections_high_then_resolve(
    server: PgServer,
) -> None:
    """8 sessions and the probe hold 9 of 10 slots: the 80 % rule goes pending, fires after
    its 5 s, and resolves once 5 of them close (ratio 0.4, under the 0.75 clear level)."""
    engine = RuleEngine(load_rules())
    store = SeriesStore()
    with sessions(server, "mea-noisy", 8) as noisy:
        first = tick(store, 1000.0, databases={"main": snapshot(server.dsn)})
        second = tick(store, 1005.0, databases={"main": snapshot(server.dsn)})
        for conn in noisy[:5]:
            conn.close()
        wait_until(lambda: snapshot(server.dsn).client_connections == 4)
        third = tick(store, 1006.0, databases={"main": snapshot(server.dsn)})
    assert first["server_connections_used_ratio"] == {MAIN: 0.9}
    assert second["server_seconds_to_exhaustion"] == {MAIN: math.inf}
    assert third["server_connections_used_ratio"] == {MAIN: 0.4}

    def events(at: float, values: Measures) -> list[tuple[str, str, dict[str, str]]]:
        return [(e.kind, e.rule, dict(e.labels)) for e in engine.evaluate(at, values)]

    labels = {"alertname": "PoolwardenServerConnectionsHigh", "database": "main"}
    high = {**labels, "severity": "warning"}
    assert events(1000.0, first) == [("pending", "PoolwardenServerConnectionsHigh", high)]
    assert events(1005.0, second) == [("firing", "PoolwardenServerConnectionsHigh", high)]
    assert events(1006.0, third) == [("resolved", "PoolwardenServerConnectionsHigh", high)]


# --- a real guarded pool ------------------------------------------------------------------


def test_a_real_guarded_pool_gives_saturation_rejections_wait_p95_and_leaks(
    server: PgServer, base: ServerSnapshot
) -> None:
    """Measures of a guarded pool of 2, scraped from its registry at 1000, 1010 and 1020.

    1000: 2 quick checkouts done. 1010: both connections held, 1 request queued, 3 refused
    (queue full): saturation (2 + 1) / 2 = 1.5, rejections 0 -> 3 (zero point at the first
    sample, no extrapolation back): 3 / 60 s = 0.05/s. 1020: the queued request got its
    connection after ~0.15 s, both holders outlived leak_threshold 0.05 s: leaks 0 -> 2 = 2
    per minute. Wait p95 at 1020: 3 waits in the window (2 fast, 1 in (0.1, 0.25]), every
    bucket extrapolated by (20 + 5) / 20, so rank 0.95 * 3 falls 0.85 into that bucket:
    0.1 + 0.15 * 0.85 = 0.2275. The budget is pool max 2 / 10 usable.
    """
    registry = CollectorRegistry()
    store = SeriesStore()
    info = {"orders-api": TargetInfo("orders-api", "http://127.0.0.1:1/metrics", "main")}

    def scrape_tick(at: float) -> Measures:
        text = generate_latest(registry).decode()
        targets: dict[str, ScrapeResult | ProbeError] = {"orders-api": parse_metrics(text)}
        return tick(store, at, databases={"main": base}, targets=targets, target_info=info)

    raw: ConnectionPool[Any] = ConnectionPool(server.dsn, min_size=2, max_size=2, open=False)
    options = {"max_waiting": 1, "timeout": 2.0, "shed": False, "leak_threshold": 0.05}
    refused: list[str] = []
    with guard(raw, name="mea-orders", registry=registry, **options) as guarded:
        guarded.wait(timeout=10)
        for _ in range(2):
            with guarded.connection():
                pass
        first = scrape_tick(1000.0)
        with contextlib.ExitStack() as held:
            for _ in range(2):
                held.enter_context(guarded.connection())
            waiter = threading.Thread(target=checkout, args=(guarded,))
            waiter.start()
            wait_until(lambda: guarded.guard.snapshot().admission.waiting == 1)
            queued = time.monotonic()
            for _ in range(3):
                with pytest.raises(PoolSaturated) as exc:
                    checkout(guarded)
                refused.append(exc.value.reason)
            second = scrape_tick(1010.0)
            time.sleep(max(0.0, queued + 0.15 - time.monotonic()))
        waiter.join(timeout=10)
        wait_until(lambda: guarded.guard.metrics.leaks == 2)
        third = scrape_tick(1020.0)

    key = pool("orders-api", "mea-orders")
    assert refused == ["queue_full"] * 3
    assert first["pool_saturation"] == {key: 0.0}
    assert not {"pool_wait_p95_seconds", "pool_acquire_failures_per_second"} & first.keys()
    assert second["pool_saturation"] == {key: 1.5}
    assert second["pool_acquire_failures_per_second"] == {key: pytest.approx(0.05)}
    assert second["pool_wait_p95_seconds"][key] < 0.1  # only the two quick checkouts
    assert third["pool_saturation"] == {key: 0.0}
    assert third["pool_acquire_failures_per_second"] == {key: pytest.approx(0.05)}
    assert third["pool_leaks_per_minute"] == {key: pytest.approx(2.0)}
    assert third["pool_wait_p95_seconds"] == {key: pytest.approx(0.2275)}
    assert third["budget_oversubscription_ratio"] == {MAIN: pytest.approx(0.2)}


def checkout(guarded: Any) -> None:
    """Check a connection out of a guarded pool and return it at once."""
    with guarded.connection():
        pass


# --- hand-written scrapes -----------------------------------------------------------------

WAIT_BOUNDS = ("0.01", "0.1", "0.5", "+Inf")


def pool_text(
    name: str,
    *,
    used: int,
    pending: int,
    size: int,
    timeouts: int,
    rejections: tuple[int, int] | None = None,
    leaks: int | None = None,
    waits: tuple[int, ...] | None = None,
) -> str:
    """Prometheus text for one pool; `rejections` (queue_full, deadline) and `leaks` only
    for a guarded pool; `waits` the cumulative wait buckets of WAIT_BOUNDS."""
    p = f'pool_name="{name}"'
    lines = [
        "# TYPE db_client_connection_count gauge",
        f'db_client_connection_count{{{p},state="used"}} {used}',
        f'db_client_connection_count{{{p},state="idle"}} {size - used}',
        "# TYPE db_client_connection_max gauge",
        f"db_client_connection_max{{{p}}} {size}",
        "# TYPE db_client_connection_pending_requests gauge",
        f"db_client_connection_pending_requests{{{p}}} {pending}",
        "# TYPE db_client_connection_timeouts_total counter",
        f"db_client_connection_timeouts_total{{{p}}} {timeouts}",
    ]
    if rejections is not None:
        lines.append("# TYPE poolwarden_pool_rejections_total counter")
        for reason, count in zip(("queue_full", "deadline", "shed"), (*rejections, 0), strict=True):
            lines.append(f'poolwarden_pool_rejections_total{{{p},reason="{reason}"}} {count}')
    if leaks is not None:
        lines.append("# TYPE poolwarden_pool_leaks_total counter")
        lines.append(f"poolwarden_pool_leaks_total{{{p}}} {leaks}")
    if waits is not None:
        lines.append("# TYPE db_client_connection_wait_time_seconds histogram")
        for le, count in zip(WAIT_BOUNDS, waits, strict=True):
            lines.append(f'db_client_connection_wait_time_seconds_bucket{{{p},le="{le}"}} {count}')
        lines.append(f"db_client_connection_wait_time_seconds_count{{{p}}} {waits[-1]}")
        lines.append(f"db_client_connection_wait_time_seconds_sum{{{p}}} 1.5")
    return "\n".join(lines) + "\n"


def scraped(text: str) -> ScrapeResult:
    """Parse hand-written text as a scrape would."""
    return parse_metrics(text, taken_at=datetime(2025, 1, 1, tzinfo=UTC))


def test_pool_measures_from_text_use_timeouts_for_unguarded_pools_and_skip_failed_targets(
    base: ServerSnapshot,
) -> None:
    """Two replicas of a guarded pool, an unguarded pool, a pool of no database, at 100 and 110.

    orders-1 at 110: saturation (4 + 0) / 4 = 1; rejections 12 -> 24, extrapolated by
    (10 + 5) / 10: 18 / 60 = 0.3/s (its timeouts are ignored: the guard's rejections win);
    leaks 1 -> 2: 1.5 per minute; wait buckets 10,20,20,20 -> 10,30,40,40: increases 0,10,20,20
    (x 1.5), rank 0.95 * 30 lies 13.5 of 15 into (0.1, 0.5]: p95 0.46. billing (no guard):
    timeouts 100 -> 106: 9 / 60 = 0.15/s; no leak or wait series, so those are left out.
    orders-2 fails at 110: its pool measures are left out, but the budget keeps its max 4:
    (4 + 4 + 5) / 10 = 1.3; batch (no database) and reports (never scraped) do not count.
    """
    info = {
        "orders-1": TargetInfo("orders-1", "http://127.0.0.1:1/metrics", "main"),
        "orders-2": TargetInfo("orders-2", "http://127.0.0.1:2/metrics", "main"),
        "billing": TargetInfo("billing", "http://127.0.0.1:3/metrics", "main"),
        "batch": TargetInfo("batch", "http://127.0.0.1:4/metrics", None),
        "reports": TargetInfo("reports", "http://127.0.0.1:5/metrics", "main"),
    }
    orders_100 = pool_text(
        "orders", used=3, pending=2, size=4, timeouts=2, rejections=(10, 2), leaks=1,
        waits=(10, 20, 20, 20),
    )  # fmt: skip
    orders_110 = pool_text(
        "orders", used=4, pending=0, size=4, timeouts=4, rejections=(20, 4), leaks=2,
        waits=(10, 30, 40, 40),
    )  # fmt: skip
    timeout = TargetTimeout("http://127.0.0.1:5/metrics: no answer in 2 s", timeout=2.0)
    store = SeriesStore()
    databases: dict[str, ServerSnapshot | ProbeError] = {"main": base}
    targets: dict[str, ScrapeResult | ProbeError] = {
        "orders-1": scraped(orders_100),
        "orders-2": scraped(orders_100),
        "billing": scraped(pool_text("billing", used=5, pending=3, size=5, timeouts=100)),
        "batch": scraped(pool_text("batch", used=0, pending=0, size=50, timeouts=0)),
        "reports": timeout,
    }
    first = tick(store, 100.0, databases=databases, targets=targets, target_info=info)
    targets |= {
        "orders-1": scraped(orders_110),
        "orders-2": timeout,
        "billing": scraped(pool_text("billing", used=5, pending=3, size=5, timeouts=106)),
    }
    second = tick(store, 110.0, databases=databases, targets=targets, target_info=info)

    saturated = {pool("billing", "billing"): 1.6, pool("batch", "batch"): 0.0}
    assert first["pool_saturation"] == {
        pool("orders-1", "orders"): 1.25, pool("orders-2", "orders"): 1.25, **saturated
    }  # fmt: skip
    assert "pool_acquire_failures_per_second" not in first
    assert first["budget_oversubscription_ratio"] == {MAIN: 1.3}
    assert second["pool_saturation"] == {pool("orders-1", "orders"): 1.0, **saturated}
    assert second["pool_acquire_failures_per_second"] == {
        pool("orders-1", "orders"): pytest.approx(0.3),
        pool("billing", "billing"): pytest.approx(0.15),
        pool("batch", "batch"): 0.0,
    }
    assert second["pool_leaks_per_minute"] == {pool("orders-1", "orders"): pytest.approx(1.5)}
    assert second["pool_wait_p95_seconds"] == {pool("orders-1", "orders"): pytest.approx(0.46)}
    assert second["budget_oversubscription_ratio"] == {MAIN: 1.3}


HTTP_BOUNDS = ("0.1", "0.5", "1", "2.5", "+Inf")


def http_text(series: dict[tuple[str, str], tuple[int, ...]]) -> str:
    """Prometheus text of the OTel HTTP server histogram; `series` maps (method, status) to
    the count in each bucket of HTTP_BOUNDS (not cumulative)."""
    lines = ["# TYPE http_server_request_duration_seconds histogram"]
    for (method, status), counts in series.items():
        labels = (
            f'http_request_method="{method}",http_route="/orders",'
            f'http_response_status_code="{status}"'
        )
        running = 0
        for le, count in zip(HTTP_BOUNDS, counts, strict=True):
            running += count
            lines.append(
                f'http_server_request_duration_seconds_bucket{{{labels},le="{le}"}} {running}'
            )
        lines.append(f"http_server_request_duration_seconds_count{{{labels}}} {running}")
        lines.append(f"http_server_request_duration_seconds_sum{{{labels}}} {running * 0.4}")
    return "\n".join(lines) + "\n"


def test_api_error_ratio_and_p99_come_from_the_http_histogram_and_fire_their_rules() -> None:
    """Requests 100 -> 200, of them 5xx 10 -> 18 (500 and 503; the 404s are not errors).

    110: both extrapolated by (10 + 5) / 10: error ratio 12 / 150 = 0.08; buckets
    20,40,80,100,100 -> 40,80,160,200,200, increases x 1.5 = 30,60,120,150,150, rank 0.99 *
    150 = 148.5 lies 28.5 of 30 into (1, 2.5]: p99 2.425. 120 (no new request): the same
    over three samples. 175: the window holds only the unchanged 120 and 175: no data (but
    target_up 1 each tick, as every scrape answered). The
    rules (for 10 s) go pending at 110, fire at 120, and resolve at 175, when their data has
    been missing longer than the engine's stale_after.
    """
    at_100 = {
        ("GET", "200"): (20, 20, 35, 10, 0),
        ("GET", "404"): (0, 0, 5, 0, 0),
        ("POST", "500"): (0, 0, 0, 6, 0),
        ("POST", "503"): (0, 0, 0, 4, 0),
    }
    at_110 = {
        ("GET", "200"): (40, 40, 70, 20, 0),
        ("GET", "404"): (0, 0, 10, 2, 0),
        ("POST", "500"): (0, 0, 0, 10, 0),
        ("POST", "503"): (0, 0, 0, 8, 0),
    }
    store = SeriesStore()
    engine = RuleEngine(load_rules())
    api = LabelSet({"target": "orders-api"})
    seen: list[tuple[float, str, str]] = []
    results: dict[float, Measures] = {}
    for at, series in ((100.0, at_100), (110.0, at_110), (120.0, at_110), (175.0, at_110)):
        targets: dict[str, ScrapeResult | ProbeError] = {"orders-api": scraped(http_text(series))}
        results[at] = tick(store, at, targets=targets)
        seen += [(at, e.kind, e.rule) for e in engine.evaluate(at, results[at])]

    up: Measures = {"target_up": {api: 1.0}}  # every scrape answered
    assert results[100.0] == up
    for at in (110.0, 120.0):
        assert results[at] == {
            **up,
            "api_error_ratio": {api: pytest.approx(0.08)},
            "api_latency_p99_seconds": {api: pytest.approx(2.425)},
        }
    assert results[175.0] == up
    assert seen == [
        (110.0, "pending", "PoolwardenApiErrorRateHigh"),
        (110.0, "pending", "PoolwardenApiLatencyHigh"),
        (120.0, "firing", "PoolwardenApiErrorRateHigh"),
        (120.0, "firing", "PoolwardenApiLatencyHigh"),
        (175.0, "resolved", "PoolwardenApiErrorRateHigh"),
        (175.0, "resolved", "PoolwardenApiLatencyHigh"),
    ]


# --- PgBouncer ----------------------------------------------------------------------------


def bouncer_pool(database: str, user: str, *, waiting: int, maxwait_s: float) -> PgBouncerPool:
    """A SHOW POOLS row with `waiting` clients queued, the oldest for `maxwait_s`."""
    return PgBouncerPool(
        database=database, user=user, cl_active=2, cl_waiting=waiting, cl_active_cancel_req=0,
        cl_waiting_cancel_req=0, sv_active=2, sv_active_cancel=0, sv_being_canceled=0,
        sv_idle=0, sv_used=0, sv_tested=0, sv_login=0, maxwait_s=maxwait_s,
        pool_mode="transaction",
    )  # fmt: skip


def bouncer(*pools: PgBouncerPool) -> PgBouncerSnapshot:
    """A PgBouncer snapshot holding `pools`."""
    config = PgBouncerConfig(
        max_client_conn=100, default_pool_size=2, min_pool_size=0, reserve_pool_size=0,
        reserve_pool_timeout=5.0, max_db_connections=0, max_user_connections=0,
        pool_mode="transaction", query_wait_timeout=120.0, server_idle_timeout=600.0,
        server_lifetime=3600.0, idle_transaction_timeout=0.0, raw={},
    )  # fmt: skip
    return PgBouncerSnapshot(
        target="127.0.0.1:6432", taken_at=datetime(2025, 1, 1, tzinfo=UTC), version="1.23.1",
        version_info=(1, 23, 1), pools=pools, stats=(), databases=(), config=config,
        clients_active=sum(p.cl_active for p in pools),
        clients_waiting=sum(p.cl_waiting for p in pools), servers_active=2, servers_idle=0,
        servers_used=0, max_wait_s=max(p.maxwait_s for p in pools), missing_columns={},
    )  # fmt: skip


def test_pgbouncer_pools_give_clients_waiting_and_max_wait_per_database_and_user() -> None:
    """Each SHOW POOLS row is one label set (pgbouncer, database, user); a failed probe none."""
    snap = bouncer(
        bouncer_pool("appdb", "app", waiting=3, maxwait_s=1.25),
        bouncer_pool("pgbouncer", "pgbouncer", waiting=0, maxwait_s=0.0),
    )
    down = DatabaseUnreachable("pgbouncer 127.0.0.1:6433: connection refused")
    values = tick(SeriesStore(), 100.0, pgbouncers={"edge": snap, "edge-2": down})

    def key(database: str, user: str) -> LabelSet:
        return LabelSet({"pgbouncer": "edge", "database": database, "user": user})

    assert values == {
        "pgbouncer_clients_waiting": {key("appdb", "app"): 3.0, key("pgbouncer", "pgbouncer"): 0.0},
        "pgbouncer_max_wait_seconds": {
            key("appdb", "app"): 1.25,
            key("pgbouncer", "pgbouncer"): 0.0,
        },
    }


# --- the store ----------------------------------------------------------------------------


def test_record_forgets_samples_older_than_the_store_keeps(base: ServerSnapshot) -> None:
    """A database probed at 0 and then never again is gone from the store at 200 (max age 120)."""
    store = SeriesStore(max_age_s=120.0)
    tick(store, 0.0, databases={"old": base})
    tick(store, 200.0, databases={"new": base})
    assert store.label_sets("database:client_connections") == (LabelSet({"database": "new"}),)
