"""The snapshot counts real sessions on a real server exactly."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from tests.fixtures.pg import PgServer

from poolwarden.errors import (
    AuthenticationFailed,
    DatabaseNotFound,
    DatabaseUnreachable,
    TooManyConnections,
)
from poolwarden.probe.postgres import PROBE_APPLICATION_NAME, ServerSnapshot, snapshot


def _count(snap: ServerSnapshot, app: str, state: str | None = None) -> int:
    return sum(
        g.count
        for g in snap.groups
        if g.application_name == app and (state is None or g.state == state)
    )


def _open(dsn: str, app: str, n: int, stack: contextlib.ExitStack) -> list[psycopg.Connection]:
    conns = []
    for _ in range(n):
        conn = stack.enter_context(psycopg.connect(dsn, application_name=app, autocommit=False))
        conns.append(conn)
    return conns


@contextlib.contextmanager
def _blocked_on_row_lock(dsn: str, holder_app: str, waiter_app: str) -> Iterator[int]:
    """Hold a row lock in `holder_app` and block `waiter_app` on it; yield the holder's pid."""
    with psycopg.connect(dsn, application_name=holder_app) as holder:
        holder.execute("SELECT id FROM lock_target WHERE id = 1 FOR UPDATE")
        waiter = psycopg.connect(dsn, application_name=waiter_app, autocommit=True)
        # The bounded statement_timeout makes the waiter give up by itself if a test fails.
        waiter.execute("SET statement_timeout = '20s'")
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                waiter.execute("UPDATE lock_target SET n = n + 1 WHERE id = 1")
            except psycopg.Error as exc:
                errors.append(exc)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        _wait_for(lambda: _waiting(dsn, waiter_app))
        try:
            yield holder.info.backend_pid
        finally:
            holder.rollback()
            thread.join(timeout=20)
            waiter.close()
        assert not errors


def _waiting(dsn: str, app: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock'",
            (app,),
        ).fetchone()
    return bool(row and row[0])


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lock_table(pg: PgServer) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS lock_target (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO lock_target VALUES (1, 0) ON CONFLICT DO NOTHING")
        conn.execute("GRANT ALL ON lock_target TO PUBLIC")


def test_snapshot_counts_sessions_by_application_and_state(pg: PgServer, lock_table: None) -> None:
    """Idle, idle-in-transaction, aborted and lock-blocked sessions are each counted exactly."""
    with contextlib.ExitStack() as stack:
        for conn in _open(pg.dsn, "snap-orders", 3, stack):
            conn.commit()  # idle
        for conn in _open(pg.dsn, "snap-billing", 2, stack):
            conn.execute("SELECT 1")  # idle in transaction
        aborted = _open(pg.dsn, "snap-batch", 1, stack)[0]
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            aborted.execute("SELECT 1/0")
        holder_pid = stack.enter_context(_blocked_on_row_lock(pg.dsn, "snap-holder", "snap-waiter"))
        time.sleep(0.2)

        snap = snapshot(pg.dsn)

    assert _count(snap, "snap-orders", "idle") == 3
    assert _count(snap, "snap-orders") == 3
    assert _count(snap, "snap-billing", "idle in transaction") == 2
    assert _count(snap, "snap-batch", "idle in transaction (aborted)") == 1
    assert _count(snap, "snap-holder", "idle in transaction") == 1
    assert _count(snap, "snap-waiter", "active") == 1
    assert _count(snap, PROBE_APPLICATION_NAME) == 1
    assert snap.client_connections == sum(g.count for g in snap.groups)
    assert sum(snap.by_state.values()) == snap.client_connections

    idle_apps = sorted(s.application_name for s in snap.idle_in_transaction)
    assert idle_apps == ["snap-batch", "snap-billing", "snap-billing", "snap-holder"]
    assert [s.aborted for s in snap.idle_in_transaction if s.application_name == "snap-batch"] == [
        True
    ]
    assert all(s.idle_s >= 0.2 for s in snap.idle_in_transaction)

    (wait,) = [w for w in snap.lock_waits if w.application_name == "snap-waiter"]
    assert wait.blocked_by == (holder_pid,)
    assert wait.blocked_by_applications == ("snap-holder",)
    assert wait.lock_type == "transactionid"
    assert wait.waiting_s >= 0.2
    assert snap.oldest_active_query is not None
    assert snap.oldest_active_query.application_name == "snap-waiter"
    assert snap.oldest_active_query_s == snap.oldest_active_query.age_s >= 0.2


def test_snapshot_reads_limits_and_usable_slots(pg_factory: Callable[..., PgServer]) -> None:
    """usable = max_connections - superuser_reserved - reserved, read from the live server."""
    server = pg_factory(
        max_connections=20, superuser_reserved_connections=2, reserved_connections=3
    )
    snap = snapshot(server.dsn)
    assert snap.max_connections == 20
    assert snap.superuser_reserved_connections == 2
    assert snap.reserved_connections == 3
    assert snap.usable_connections == 15
    assert snap.server_version_num >= 180000
    assert snap.client_connections == 1  # only the probe itself
    assert (snap.session_user, snap.superuser) == ("postgres", True)
    assert snap.used_ratio == pytest.approx(1 / 15)


def test_snapshot_reports_role_and_database_limits_with_current_use(pg: PgServer) -> None:
    """Roles and databases with CONNECTION LIMIT are listed with how many connections use them."""
    with pg.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS limited_db")
        admin.execute("DROP ROLE IF EXISTS limited_app")
        admin.execute("CREATE ROLE limited_app LOGIN PASSWORD 'pw' CONNECTION LIMIT 5")
        admin.execute("CREATE DATABASE limited_db CONNECTION LIMIT 7")
        admin.execute("GRANT CONNECT ON DATABASE limited_db TO limited_app")
    dsn = pg.url(user="limited_app", password="pw", dbname="limited_db")
    with contextlib.ExitStack() as stack:
        _open(dsn, "limited", 2, stack)
        snap = snapshot(pg.dsn)
    role = {lim.name: lim for lim in snap.role_limits}["limited_app"]
    database = {lim.name: lim for lim in snap.database_limits}["limited_db"]
    assert (role.kind, role.limit, role.current) == ("role", 5, 2)
    assert (database.kind, database.limit, database.current) == ("database", 7, 2)
    assert "postgres" not in {lim.name for lim in snap.role_limits}  # unlimited: not listed


def test_snapshot_counts_background_processes_apart_from_clients(pg: PgServer) -> None:
    """Checkpointer, walwriter and friends are counted as background, never as clients."""
    snap = snapshot(pg.dsn)
    kinds = {b.backend_type for b in snap.background}
    assert {"checkpointer", "walwriter", "autovacuum launcher"} <= kinds
    assert snap.background_processes == sum(b.count for b in snap.background) >= 3
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchone()
    assert row is not None
    # The probe and this connection were both clients at their own moments.
    assert snap.client_connections <= row[0] + 1
    assert not any(g.application_name == "checkpointer" for g in snap.groups)


def test_snapshot_works_for_a_role_with_only_pg_monitor(pg: PgServer) -> None:
    """A role granted only pg_monitor sees every session's state, limits and lock waits."""
    with pg.connect() as admin:
        admin.execute("DROP ROLE IF EXISTS monitor_only")
        admin.execute("CREATE ROLE monitor_only LOGIN PASSWORD 'mon' NOSUPERUSER")
        admin.execute("GRANT pg_monitor TO monitor_only")
    with contextlib.ExitStack() as stack:
        for conn in _open(pg.dsn, "mon-target", 2, stack):
            conn.execute("SELECT 1")  # idle in transaction, owned by postgres
        snap = snapshot(pg.url(user="monitor_only", password="mon"))
    assert snap.full_visibility is True
    assert (snap.session_user, snap.database, snap.superuser) == ("monitor_only", "postgres", False)
    assert _count(snap, "mon-target", "idle in transaction") == 2
    assert snap.by_state["unknown"] == 0
    assert snap.max_connections == 100


def test_snapshot_without_pg_monitor_flags_limited_visibility(pg: PgServer) -> None:
    """A plain role cannot see other users' states: they count as 'unknown' and the flag says so."""
    with pg.connect() as admin:
        admin.execute("DROP ROLE IF EXISTS plain_role")
        admin.execute("CREATE ROLE plain_role LOGIN PASSWORD 'plain'")
    with contextlib.ExitStack() as stack:
        _open(pg.dsn, "hidden-target", 2, stack)
        snap = snapshot(pg.url(user="plain_role", password="plain"))
    assert snap.full_visibility is False
    assert _count(snap, "hidden-target") == 2
    assert snap.by_state["unknown"] >= 2


def test_snapshot_errors_name_the_problem_without_the_password(pg: PgServer) -> None:
    """Wrong password, missing database and a closed port raise distinct one-line ProbeErrors."""
    with pg.connect() as admin:
        admin.execute("DROP ROLE IF EXISTS pw_role")
        admin.execute("CREATE ROLE pw_role LOGIN PASSWORD 'right'")
    with pytest.raises(AuthenticationFailed) as auth:
        snapshot(pg.url(user="pw_role", password="s3cr3t-wrong"))
    with pytest.raises(DatabaseNotFound) as missing:
        snapshot(pg.url(dbname="no_such_db"))
    with pytest.raises(DatabaseUnreachable) as closed:
        snapshot("postgresql://postgres:s3cr3t-wrong@127.0.0.1:1/postgres")
    for exc in (auth.value, missing.value, closed.value):
        assert "\n" not in str(exc)
        assert "s3cr3t-wrong" not in str(exc)
    assert "no_such_db" in str(missing.value)
    assert "127.0.0.1:1" in str(closed.value)


def test_a_full_server_refusing_the_probe_raises_too_many_connections(
    pg_factory: Callable[..., PgServer],
) -> None:
    """When every usable slot is taken, the probe's refusal (53300) is TooManyConnections."""
    server = pg_factory(max_connections=6)  # 3 usable by ordinary roles
    with server.connect() as admin:
        admin.execute("CREATE ROLE full_app LOGIN PASSWORD 'full-secret'")
    dsn = server.url(user="full_app", password="full-secret")
    with contextlib.ExitStack() as stack:
        _open(dsn, "full-holder", 3, stack)
        with pytest.raises(TooManyConnections) as err:
            snapshot(dsn)
    assert "slots are full" in str(err.value)
    assert "full-secret" not in str(err.value)
