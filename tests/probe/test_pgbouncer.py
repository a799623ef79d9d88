"""The PgBouncer snapshot reports what a real PgBouncer 1.18 in front of a real server does."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from tests.fixtures.pg import PgServer
from tests.fixtures.pgbouncer import APP_USER, PASSWORDS, PgBouncer, PgBouncerFactory

from poolwarden.errors import (
    AuthenticationFailed,
    DatabaseNotFound,
    DatabaseUnreachable,
    ProbeError,
)
from poolwarden.probe.pgbouncer import (
    COMMANDS,
    PgBouncerPool,
    PgBouncerSnapshot,
    _build,
    _Table,
    pgbouncer_snapshot,
)


def _pool(
    snap: PgBouncerSnapshot, database: str = "postgres", user: str = "postgres"
) -> PgBouncerPool:
    (pool,) = [p for p in snap.pools if (p.database, p.user) == (database, user)]
    return pool


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@contextlib.contextmanager
def _queries_in_threads(dsn: str, sql: str, n: int) -> Iterator[list[BaseException]]:
    """Run `sql` on `n` connections, each in a thread; join them (bounded) at the end."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql)
        except psycopg.Error as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    try:
        yield errors
    finally:
        for thread in threads:
            thread.join(timeout=15)
        assert not any(thread.is_alive() for thread in threads)


def test_clients_beyond_the_pool_wait_and_maxwait_grows(
    pgbouncer_factory: PgBouncerFactory,
) -> None:
    """Two open transactions fill a pool of 2; three more clients wait, and maxwait grows."""
    bouncer = pgbouncer_factory(default_pool_size=2, query_wait_timeout=10)
    with contextlib.ExitStack() as stack:
        holders = [
            stack.enter_context(psycopg.connect(bouncer.dsn(), connect_timeout=5)) for _ in range(2)
        ]
        for holder in holders:
            holder.execute("SELECT 1")  # transaction mode: the open transaction keeps its server
        waiting = stack.enter_context(_queries_in_threads(bouncer.dsn(), "SELECT 1", 3))
        _wait_for(lambda: pgbouncer_snapshot(bouncer.admin_dsn).clients_waiting == 3)
        first = pgbouncer_snapshot(bouncer.admin_dsn)
        time.sleep(0.3)
        second = pgbouncer_snapshot(bouncer.admin_dsn)
        for holder in holders:
            holder.rollback()

    assert not waiting
    pool = _pool(second)
    assert (pool.cl_active, pool.cl_waiting) == (2, 3)
    assert (pool.sv_active, pool.sv_idle, pool.sv_login) == (2, 0, 0)
    assert pool.pool_mode == "transaction"
    assert second.max_wait_s == pool.maxwait_s
    assert pool.maxwait_s - _pool(first).maxwait_s >= 0.25
    assert second.clients_waiting == 3
    assert second.servers_active == 2
    assert second.clients_active == 3  # the two holders and the probe's console connection
    after = pgbouncer_snapshot(bouncer.admin_dsn)
    assert (after.clients_waiting, after.max_wait_s, after.servers_active) == (0, 0.0, 0)
    assert after.servers_idle + after.servers_used == 2
    (stats,) = [s for s in after.stats if s.database == "postgres"]
    assert stats.total_wait_time_s >= 3 * 0.3  # each waiter waited through both snapshots


def test_databases_and_config_read_back_as_written(pgbouncer_factory: PgBouncerFactory) -> None:
    """SHOW DATABASES and SHOW CONFIG give back the ini's pool sizes, limits and timeouts."""
    bouncer = pgbouncer_factory(
        pool_mode="session",
        default_pool_size=7,
        max_client_conn=33,
        max_db_connections=9,
        reserve_pool_size=3,
        query_wait_timeout=12.5,
        databases={
            "postgres": "",
            "appdb": "dbname=postgres pool_size=4 pool_mode=transaction"
            " max_db_connections=6 reserve_pool=2",
        },
        settings={
            "reserve_pool_timeout": 1.5,
            "server_idle_timeout": 42,
            "server_lifetime": 99,
            "idle_transaction_timeout": 7,
            "max_user_connections": 11,
        },
    )
    snap = pgbouncer_snapshot(bouncer.admin_dsn)

    config = snap.config
    assert (config.max_client_conn, config.default_pool_size, config.min_pool_size) == (33, 7, 0)
    assert (config.reserve_pool_size, config.reserve_pool_timeout) == (3, 1.5)
    assert (config.max_db_connections, config.max_user_connections) == (9, 11)
    assert config.pool_mode == "session"
    assert config.query_wait_timeout == 12.5
    assert (config.server_idle_timeout, config.server_lifetime) == (42.0, 99.0)
    assert config.idle_transaction_timeout == 7.0
    assert config.raw["listen_port"] == str(bouncer.port)
    assert snap.version_info[:2] >= (1, 18)
    assert snap.version == ".".join(map(str, snap.version_info))

    databases = {d.name: d for d in snap.databases}
    plain, app = databases["postgres"], databases["appdb"]
    assert (plain.pool_size, plain.reserve_pool, plain.max_connections) == (7, 3, 9)
    assert plain.pool_mode == "session"  # inherited from the global setting
    assert (app.pool_size, app.reserve_pool, app.max_connections) == (4, 2, 6)
    assert (app.pool_mode, app.database, app.host) == ("transaction", "postgres", "127.0.0.1")
    assert app.port == plain.port != bouncer.port
    assert (app.paused, app.disabled) == (False, False)
    # 1.18 has every column but the server assignment counts (PgBouncer 1.23).
    assert snap.missing_columns["SHOW POOLS"] == snap.missing_columns["SHOW CONFIG"] == ()
    assert snap.missing_columns["SHOW DATABASES"] == ()
    assert set(snap.missing_columns["SHOW STATS"]) <= {
        "avg_server_assignment_count",
        "total_server_assignment_count",
    }


def test_stats_counters_grow_with_the_queries_run(pgbouncer_factory: PgBouncerFactory) -> None:
    """Five one-query transactions raise the database's xact and query counts by five each."""
    bouncer = pgbouncer_factory(default_pool_size=2)

    def stats_of(snap: PgBouncerSnapshot) -> dict[str, float]:
        rows = [s for s in snap.stats if s.database == "postgres"]
        if not rows:  # a database has no stats row until its pool first exists
            return dict.fromkeys(("xact", "query", "query_s", "received"), 0)
        (stats,) = rows
        return {
            "xact": stats.total_xact_count,
            "query": stats.total_query_count,
            "query_s": stats.total_query_time_s,
            "received": stats.total_received,
        }

    before = stats_of(pgbouncer_snapshot(bouncer.admin_dsn))
    with psycopg.connect(bouncer.dsn(), autocommit=True, connect_timeout=5) as conn:
        for _ in range(5):
            conn.execute("SELECT pg_sleep(0.02)")
    after = stats_of(pgbouncer_snapshot(bouncer.admin_dsn))

    assert after["xact"] - before["xact"] == 5
    assert after["query"] - before["query"] == 5
    assert after["query_s"] - before["query_s"] >= 5 * 0.02
    assert after["received"] > before["received"]


def test_a_stats_user_may_probe_and_an_app_user_may_not(bouncer: PgBouncer) -> None:
    """stats_users members read the whole snapshot; others are refused with the setting to fix."""
    snap = pgbouncer_snapshot(bouncer.stats_dsn)
    assert snap.config.raw["stats_users"] == "pgb_stats"
    assert snap.target == f"pgb_stats@127.0.0.1:{bouncer.port}/pgbouncer"

    with pytest.raises(AuthenticationFailed) as refused:
        pgbouncer_snapshot(bouncer.dsn("pgbouncer", user=APP_USER))
    assert "admin_users or stats_users" in str(refused.value)
    assert str(refused.value).startswith(f"{APP_USER}@127.0.0.1:{bouncer.port}/pgbouncer: ")


@pytest.fixture
def bouncer(pgbouncer_factory: PgBouncerFactory) -> PgBouncer:
    """A PgBouncer with only the `postgres` database (no `*` fallback)."""
    return pgbouncer_factory(databases={"postgres": ""})


def test_bad_targets_raise_one_line_errors_without_the_password(
    bouncer: PgBouncer, pg: PgServer
) -> None:
    """Wrong password, unknown database, closed port and a plain PostgreSQL each say what is wrong."""
    secret = "s3cr3t-wrong"
    with pytest.raises(AuthenticationFailed) as auth:
        pgbouncer_snapshot(f"postgresql://pgb_admin:{secret}@127.0.0.1:{bouncer.port}/pgbouncer")
    with pytest.raises(DatabaseNotFound) as missing:
        pgbouncer_snapshot(bouncer.dsn("nodb", user="pgb_admin"))
    with pytest.raises(DatabaseUnreachable) as closed:
        pgbouncer_snapshot(f"postgresql://pgb_admin:{secret}@127.0.0.1:1/pgbouncer")
    with pytest.raises(ProbeError) as not_bouncer:
        pgbouncer_snapshot(pg.url(password=secret))
    for exc in (auth.value, missing.value, closed.value, not_bouncer.value):
        assert "\n" not in str(exc)
        assert secret not in str(exc)
        assert PASSWORDS["pgb_admin"] not in str(exc)
    assert "auth_file" in str(auth.value)
    assert "no such database: nodb" in str(missing.value)
    assert "dbname=pgbouncer" in str(missing.value)
    assert "127.0.0.1:1" in str(closed.value)
    assert "not a PgBouncer admin console" in str(not_bouncer.value)
    assert type(not_bouncer.value) is ProbeError


class _StallingProxy:
    """A loopback TCP relay that stops forwarding once the client sends its first query.

    Logins pass, the first simple-protocol Query ('Q') message is held: PgBouncer looks
    alive to the handshake and then never answers, as when it is wedged.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            self.sockets += [client, upstream]
            back = threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True)
            back.start()
            self._pump(client, upstream, True)
            back.join(timeout=5)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, stall_on_query: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if stall_on_query and data[:1] == b"Q":
                    return  # hold the query: nothing more reaches PgBouncer
                sink.sendall(data)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv; close does not
            sock.close()
        self.thread.join(timeout=5)


def test_a_pgbouncer_that_stops_answering_cannot_hang_the_probe(bouncer: PgBouncer) -> None:
    """After a good login, SHOW commands that get no answer fail within query_timeout."""
    proxy = _StallingProxy(bouncer.port)
    dsn = f"postgresql://pgb_admin:{PASSWORDS['pgb_admin']}@127.0.0.1:{proxy.port}/pgbouncer"
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable) as stalled:
            pgbouncer_snapshot(dsn, query_timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert 0.5 <= elapsed < 3
    assert "did not answer SHOW VERSION within 0.5 s" in str(stalled.value)


def test_a_frozen_pgbouncer_fails_the_login_within_connect_timeout(bouncer: PgBouncer) -> None:
    """A stopped process still accepts TCP; the login times out as unreachable, not for ever."""
    bouncer.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable) as frozen:
            pgbouncer_snapshot(bouncer.admin_dsn, connect_timeout=1)
        elapsed = time.monotonic() - started
    finally:
        bouncer.thaw()
    assert elapsed < 5  # libpq waits at least 2 s
    assert "timeout expired" in str(frozen.value)
    assert pgbouncer_snapshot(bouncer.admin_dsn).version  # and it recovers once thawed


def test_columns_an_older_or_newer_version_lacks_read_as_zero_and_are_listed() -> None:
    """Columns are read by name: absent ones are 0 (or the default) and named in one place."""
    # Before 1.8: no maxwait_us or pool_mode, "requests" for queries; before 1.18 one
    # cl_cancel_req column; 1.24 renamed reserve_pool to reserve_pool_size.
    pools = _Table(
        "SHOW POOLS",
        ("database", "user", "cl_active", "cl_waiting", "cl_cancel_req", "sv_active", "sv_idle",
         "sv_used", "sv_tested", "sv_login", "maxwait"),
        [{"database": "app", "user": "u", "cl_active": 4, "cl_waiting": 6, "cl_cancel_req": 1,
          "sv_active": 4, "sv_idle": 0, "sv_used": 1, "sv_tested": 0, "sv_login": 0,
          "maxwait": 3}],
    )  # fmt: skip
    stats = _Table(
        "SHOW STATS",
        ("database", "total_requests", "total_received", "total_sent", "total_query_time",
         "avg_req", "avg_recv", "avg_sent", "avg_query"),
        [{"database": "app", "total_requests": 90, "total_received": 900, "total_sent": 1800,
          "total_query_time": 4_500_000, "avg_req": 2, "avg_recv": 20, "avg_sent": 40,
          "avg_query": 50_000}],
    )  # fmt: skip
    databases = _Table(
        "SHOW DATABASES",
        ("name", "host", "port", "database", "pool_size", "reserve_pool_size", "pool_mode"),
        [{"name": "app", "host": "db", "port": 5432, "database": "app", "pool_size": 4,
          "reserve_pool_size": 2, "pool_mode": None}],
    )  # fmt: skip
    config = _Table(
        "SHOW CONFIG",
        ("key", "value", "changeable"),
        [{"key": "pool_mode", "value": "transaction", "changeable": "yes"},
         {"key": "default_pool_size", "value": "4", "changeable": "yes"}],
    )  # fmt: skip
    tables = {
        "SHOW VERSION": _Table("SHOW VERSION", ("version",), [{"version": "PgBouncer 1.7.2"}]),
        "SHOW STATS": stats,
        "SHOW POOLS": pools,
        "SHOW DATABASES": databases,
        "SHOW CONFIG": config,
    }
    snap = _build("u@db:6432/pgbouncer", datetime(2026, 1, 1, tzinfo=UTC), tables)

    (pool,) = snap.pools
    assert (pool.cl_active, pool.cl_waiting, pool.sv_used, pool.maxwait_s) == (4, 6, 1, 3.0)
    assert (pool.cl_waiting_cancel_req, pool.cl_active_cancel_req, pool.pool_mode) == (1, 0, "")
    (stats_row,) = snap.stats
    assert (stats_row.total_query_count, stats_row.total_query_time_s) == (90, 4.5)
    assert (stats_row.avg_query_count, stats_row.avg_query_time_s) == (2.0, 0.05)
    assert (stats_row.total_xact_count, stats_row.total_wait_time_s) == (0, 0.0)
    (database,) = snap.databases
    assert (database.reserve_pool, database.pool_mode, database.max_connections) == (
        2, "transaction", 0,
    )  # fmt: skip
    assert (snap.config.default_pool_size, snap.config.max_client_conn) == (4, 100)
    assert (snap.version, snap.version_info) == ("1.7.2", (1, 7, 2))
    assert (snap.clients_waiting, snap.max_wait_s) == (6, 3.0)
    assert set(snap.missing_columns) == set(COMMANDS)
    assert snap.missing_columns["SHOW POOLS"] == (
        "cl_active_cancel_req", "maxwait_us", "pool_mode", "sv_active_cancel",
        "sv_being_canceled",
    )  # fmt: skip
    assert snap.missing_columns["SHOW DATABASES"] == (
        "current_connections", "disabled", "force_user", "max_connections", "min_pool_size",
        "paused",
    )  # fmt: skip
    assert "max_client_conn" in snap.missing_columns["SHOW CONFIG"]
    assert "pool_mode" not in snap.missing_columns["SHOW CONFIG"]
    assert snap.missing_columns["SHOW STATS"] == (
        "avg_server_assignment_count", "avg_wait_time", "avg_xact_count", "avg_xact_time",
        "total_server_assignment_count", "total_wait_time", "total_xact_count",
        "total_xact_time",
    )  # fmt: skip
