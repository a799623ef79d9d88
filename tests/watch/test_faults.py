"""Fault tests (issue 4, point 9): a real fault, the right alert within three ticks, the cause.

Each test runs a `Watcher` (0.2 s interval) on a private server, lets it tick healthy,
injects the fault for real (sessions, a guarded app that leaks, row locks, PgBouncer
clients queued, an app whose /metrics hangs) and asserts, within three intervals, that the pack's rule fires and the
incident's root cause (the finding the loop attached) has the right class and culprit.
`for:` and thresholds sized for production are shortened with `load_rules(overrides=...)`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from tests.fixtures.apps import guarded_app, wait_until
from tests.fixtures.pg import PgServer
from tests.fixtures.pgbouncer import PgBouncerFactory
from tests.fixtures.watchers import sessions

from poolwarden.watch.incidents import Incident
from poolwarden.watch.loop import Watcher, WatchEvent
from poolwarden.watch.observation import TargetInfo
from poolwarden.watch.rules import load_rules
from poolwarden.watch.store import Store

INTERVAL = 0.2
APP_ROLE = "app_user"  # not a superuser: the reserved slots are not its to take
APP_PASSWORD = "pw-app-user"


class Watch:
    """A Watcher on a SQLite store, the events it emitted, and ticks paced at INTERVAL."""

    def __init__(self, store_path: Path, overrides: list[dict[str, Any]], **kwargs: Any) -> None:
        self.events: list[WatchEvent] = []
        self.watcher = Watcher(
            store=Store(f"sqlite:///{store_path}"), rules=load_rules(overrides=overrides),
            interval=INTERVAL, probe_timeout=1.0, on_event=self.events.append, **kwargs,
        )  # fmt: skip
        self.watcher.start()

    def ticks(self, count: int) -> None:
        """Tick `count` times, one INTERVAL apart (a tick's own time counted in)."""
        stop = threading.Event()
        for _ in range(count):
            report = self.watcher.tick()
            stop.wait(max(0.0, INTERVAL - report.duration_s))

    def fired(self, rule: str | None = None) -> list[WatchEvent]:
        return [
            e
            for e in self.events
            if e.kind == "alert_fired" and (rule is None or e.data["rule"] == rule)
        ]

    def incident_of(self, rule: str) -> Incident:
        """Return the open incident the first firing of `rule` belongs to."""
        (event,) = self.fired(rule)[:1]
        incident = self.watcher.store.get_incident(event.data["incident_id"])
        assert incident is not None
        return incident


@contextlib.contextmanager
def watching(store_path: Path, overrides: list[dict[str, Any]], **kwargs: Any) -> Iterator[Watch]:
    watch = Watch(store_path, overrides, **kwargs)
    try:
        yield watch
    finally:
        watch.watcher.close()


def app_role(server: PgServer) -> str:
    """Create a non-superuser login role on `server`; return its DSN."""
    with server.connect() as conn:
        conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}'")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {APP_ROLE}")
    return server.url(user=APP_ROLE, password=APP_PASSWORD)


def test_noisy_neighbour_fires_connections_high_and_names_reporting(
    pg_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """'reporting' takes the slots orders-api's pool needs to grow: the neighbour is named.

    usable = 20 - 3 reserved = 17; reporting holds 15, orders-api 1, the probe 1: full, and
    orders-api's requests wait for a connection its pool cannot open (53300).
    """
    server = pg_factory(max_connections=20)
    dsn = app_role(server)
    rule = "PoolwardenServerConnectionsHigh"
    with (
        guarded_app(dsn, "orders-api", max_size=4, min_size=1) as app,
        watching(
            tmp_path / "s.db", [{"name": rule, "for": "200ms"}],
            databases={"main": server.dsn}, targets=[TargetInfo("orders-api", app.url)],
        ) as watch,
    ):  # fmt: skip
        app.load(1)
        watch.ticks(2)
        assert watch.fired() == []

        with sessions(dsn, 15, "reporting"):
            app.load(5)  # traffic the pool would serve by growing to its max of 4
            watch.ticks(3)

    assert watch.fired(rule)
    cause = watch.incident_of(rule).root_cause
    assert cause is not None
    assert (cause.cause, cause.culprit) == ("noisy_neighbor", "reporting")


def test_connection_leak_in_a_guarded_app_fires_leak_suspected_and_names_the_pool(
    pg_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """Checkouts never returned past leak_threshold fire the leak rule; the pool is named."""
    server = pg_factory()
    rule = "PoolwardenConnectionLeakSuspected"
    with (
        guarded_app(server.dsn, "billing", max_size=4, leak_threshold=0.1) as app,
        watching(
            tmp_path / "s.db", [], databases={"main": server.dsn},
            targets=[TargetInfo("billing", app.url)],
        ) as watch,
    ):  # fmt: skip
        app.load(1, query="SELECT 1")
        watch.ticks(2)
        assert watch.fired() == []

        app.leak(2)
        watch.ticks(3)

    assert [e.data["labels"]["pool"] for e in watch.fired(rule)] == ["billing"]
    cause = watch.incident_of(rule).root_cause
    assert cause is not None
    assert (cause.cause, cause.culprit) == ("connection_leak", "billing")


def test_sessions_idle_in_transaction_name_the_application(
    pg_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """Three sessions left idle in a transaction past the threshold: the app is named."""
    server = pg_factory()
    rule = "PoolwardenIdleInTransactionTooLong"
    overrides = [{"name": rule, "threshold": 0.3, "clear": 0.1}]
    with watching(tmp_path / "s.db", overrides, databases={"main": server.dsn}) as watch:
        watch.ticks(2)
        assert watch.fired() == []

        with sessions(server.dsn, 3, "invoice-worker", in_transaction=True):
            watch.ticks(3)

    apps = {e.data["labels"]["application_name"] for e in watch.fired(rule)}
    assert apps == {"invoice-worker"}
    cause = watch.incident_of(rule).root_cause
    assert cause is not None
    assert (cause.cause, cause.culprit) == ("idle_in_transaction", "invoice-worker")


@contextlib.contextmanager
def lock_pile_up(dsn: str, waiters: int) -> Iterator[int]:
    """'batch' holds a row lock in an open transaction; `waiters` sessions queue behind it.

    Yields the holder's pid. On exit the holder rolls back and the waiters finish.
    """
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS jobs (id int PRIMARY KEY, n int)")
        setup.execute("INSERT INTO jobs VALUES (1, 0) ON CONFLICT DO NOTHING")
    holder = psycopg.connect(dsn, application_name="batch")
    threads: list[threading.Thread] = []
    try:
        holder.execute("UPDATE jobs SET n = n + 1 WHERE id = 1")
        for _ in range(waiters):
            thread = threading.Thread(target=_wait_for_row, args=(dsn,), daemon=True)
            thread.start()
            threads.append(thread)
        yield holder.info.backend_pid
    finally:
        holder.rollback()
        holder.close()
        for thread in threads:
            thread.join(timeout=15)


def _wait_for_row(dsn: str) -> None:
    # statement_timeout bounds the wait should the holder never let go.
    with psycopg.connect(dsn, application_name="orders-api", autocommit=True) as conn:
        conn.execute("SET statement_timeout = '15s'")
        conn.execute("UPDATE jobs SET n = n + 1 WHERE id = 1")


def test_lock_pile_up_fires_long_running_query_and_names_the_holding_pid(
    pg_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """'batch' holds a row lock, 3 sessions wait: the slow-query rule fires, pid N (batch) blamed."""
    server = pg_factory()
    rule = "PoolwardenLongRunningQuery"
    overrides = [{"name": rule, "threshold": 0.2, "clear": 0.1}]
    with watching(tmp_path / "s.db", overrides, databases={"main": server.dsn}) as watch:
        watch.ticks(2)
        assert watch.fired() == []

        with lock_pile_up(server.dsn, waiters=3) as pid:
            watch.ticks(3)

    assert {e.data["labels"]["application_name"] for e in watch.fired(rule)} == {"orders-api"}
    cause = watch.incident_of(rule).root_cause
    assert cause is not None
    assert (cause.cause, cause.culprit) == ("lock_contention", f"pid {pid} (batch)")


@contextlib.contextmanager
def clients_waiting(dsn: str, count: int) -> Iterator[None]:
    """Hold PgBouncer's one server connection in a transaction; `count` clients queue."""
    holder = psycopg.connect(dsn, application_name="holder", prepare_threshold=None)
    threads: list[threading.Thread] = []

    def query() -> None:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SELECT 1")

    try:
        holder.execute("SELECT 1")  # transaction mode: the server connection is now its own
        for _ in range(count):
            thread = threading.Thread(target=query, daemon=True)
            thread.start()
            threads.append(thread)
        yield
    finally:
        holder.rollback()
        holder.close()
        for thread in threads:
            thread.join(timeout=15)


def test_pgbouncer_clients_waiting_fire_and_name_the_pgbouncer_pool(
    pg: PgServer, pgbouncer_factory: PgBouncerFactory, tmp_path: Path
) -> None:
    """Clients queued behind PgBouncer's only server connection: its pool is named undersized."""
    bouncer = pgbouncer_factory(default_pool_size=1)
    rule = "PoolwardenPgbouncerClientsWaiting"
    overrides: list[dict[str, Any]] = [
        {"name": rule, "for": "200ms"},
        # The diagnosis counts a wait from this rule's threshold on (1 s in the pack).
        {"name": "PoolwardenPgbouncerMaxWaitHigh", "threshold": 0.1, "clear": 0.05},
    ]
    with watching(
        tmp_path / "s.db", overrides, databases={"main": pg.dsn},
        pgbouncers={"edge": bouncer.stats_dsn},
    ) as watch:  # fmt: skip
        watch.ticks(2)
        assert watch.fired() == []

        with clients_waiting(bouncer.dsn("postgres"), 3):
            assert wait_until(lambda: _waiting(bouncer.console("SHOW POOLS")) >= 3)
            watch.ticks(3)

    assert watch.fired(rule)
    cause = watch.incident_of(rule).root_cause
    assert cause is not None
    assert (cause.cause, cause.culprit) == (
        "pool_undersized",
        "pgbouncer 'edge' pool postgres/postgres",
    )


def _waiting(pools: list[dict[str, Any]]) -> int:
    return sum(int(p["cl_waiting"]) for p in pools if p["database"] == "postgres")


@dataclass
class HangingTarget:
    """A loopback /metrics that answers until `hang` is set, then accepts and never answers."""

    url: str
    hang: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def hanging_metrics(pool_max: int = 4) -> Iterator[HangingTarget]:
    """Serve one pool's size in Prometheus text on 127.0.0.1; hang every request on `hang`."""
    registry = CollectorRegistry()
    Gauge("db_client_connection_max", "max", ["pool_name"], registry=registry).labels("orders").set(
        pool_max
    )
    body = generate_latest(registry)
    target = HangingTarget("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if target.hang.is_set():
                # Like a blocked event loop: the request is read, nothing is ever sent.
                target.release.wait(timeout=15)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output to what the test asserts

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    target.url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield target
    finally:
        target.release.set()  # the hung handlers return, so nothing outlives the test
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_target_whose_metrics_hang_fires_target_down_naming_it_without_stalling(
    tmp_path: Path,
) -> None:
    """orders-api's /metrics answers, then hangs: TargetDown names it within three ticks.

    A hung scrape costs a tick at most probe_timeout (1 s), never more: the loop goes on.
    """
    rule = "PoolwardenTargetDown"
    overrides = [{"name": rule, "for": f"{2 * INTERVAL * 1000:.0f}ms"}]  # two intervals
    with (
        hanging_metrics() as target,
        watching(
            tmp_path / "s.db", overrides, targets=[TargetInfo("orders-api", target.url)]
        ) as watch,
    ):
        watch.ticks(2)
        assert watch.fired() == []

        target.hang.set()
        watch.ticks(3)

    fired = watch.fired(rule)
    assert [e.data["labels"]["target"] for e in fired] == ["orders-api"]
    assert fired[0].data["summary"].startswith("orders-api cannot be scraped")
    durations = [e.data["duration_s"] for e in watch.events if e.kind == "tick"]
    assert len(durations) == 5
    assert max(durations) <= INTERVAL + 1.0 + 0.5  # interval + probe_timeout + slack
    cause = watch.incident_of(rule).root_cause
    assert cause is not None
    assert (cause.cause, cause.culprit) == ("target_down", "orders-api")
