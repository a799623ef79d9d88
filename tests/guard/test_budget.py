"""The connection budget: exact arithmetic, then refuse and clamp on real servers.

The real-server tests share one private server with max_connections=20 (usable 17). Each
holds an `admin` session (application_name 'admin': one connection of another
application) and waits until the server shows exactly the sessions it opened before it
checks the budget, so every count is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from tests.fixtures.pg import PgServer, free_port

from poolwarden.errors import BudgetExceeded, ConfigError, DatabaseUnreachable
from poolwarden.guard import guard
from poolwarden.guard._runtime import GuardOptions
from poolwarden.guard.budget import (
    Budget,
    BudgetVerdict,
    ServerSlots,
    apply_budget,
    check_budget,
    decide_budget,
)

SERVICE = "orders-api"
Conn = psycopg.Connection[Any]


def _slots(**overrides: Any) -> ServerSlots:
    fields: dict[str, Any] = {
        "target": "app@db:5432/shop", "max_connections": 100,
        "superuser_reserved_connections": 3, "reserved_connections": 0,
        "role": "app", "database": "shop", "others": 12,
    }  # fmt: skip
    return ServerSlots(**{**fields, **overrides})


def _decide(slots: ServerSlots, **fleet: Any) -> BudgetVerdict:
    fleet = {"service": SERVICE, "replicas": 4, "workers": 2, "pool_max": 20, **fleet}
    return decide_budget(slots, **fleet)


# -- the arithmetic, without a server -------------------------------------------------------


def test_verdict_gives_the_arithmetic_and_the_remedy_in_one_line() -> None:
    """160 wanted against 97 usable - 12 others - 3 headroom = 82: pool 10 fits, or 178 slots."""
    verdict = _decide(_slots())
    assert (verdict.demand, verdict.usable_connections, verdict.available) == (160, 97, 82)
    assert (verdict.ok, verdict.per_process_max, verdict.binding) == (False, 10, "server")
    assert verdict.explain() == (
        "budget for 'orders-api': 4 replicas x 2 workers x pool 20 = 160 connections, but the "
        "server has 97 usable - 12 held by other applications - 3 headroom = 82 available; "
        "lower pool_max to 10 or raise max_connections to 178"
    )


def test_a_fleet_that_fits_is_ok_and_says_so() -> None:
    """Demand equal to what is available fits, and explain() shows the same arithmetic."""
    verdict = _decide(_slots(max_connections=30, others=2), replicas=1, workers=1, pool_max=22)
    assert (verdict.ok, verdict.available, verdict.per_process_max) == (True, 22, 22)
    assert verdict.explain() == (
        "budget for 'orders-api': 1 replica x 1 worker x pool 22 = 22 connections fit: the "
        "server has 27 usable - 2 held by other applications - 3 headroom = 22 available"
    )


def test_role_and_database_limits_count_only_when_they_bind() -> None:
    """A role or database limit looser than the server's room is ignored; a tighter one binds."""
    loose = _decide(_slots(role_limit=500, database_limit=90, database_others=3))
    assert (loose.binding, loose.available) == ("server", 82)
    role = _decide(_slots(role_limit=40, role_others=5, database_limit=90))
    assert (role.binding, role.available, role.per_process_max) == ("role", 32, 4)
    assert "role 'app' has CONNECTION LIMIT 40 - 5 held by other applications - 3 headroom" in (
        role.explain()
    )
    assert role.explain().endswith("raise the CONNECTION LIMIT of role 'app' to 168")
    database = _decide(_slots(role_limit=40, database_limit=20, database_others=1))
    assert (database.binding, database.available) == ("database", 16)
    assert database.explain().endswith("raise the CONNECTION LIMIT of database 'shop' to 164")


def test_superusers_are_exempt_from_role_and_database_limits() -> None:
    """As in PostgreSQL, a superuser's role and database limits are reported but never bind."""
    verdict = _decide(_slots(superuser=True, role_limit=1, database_limit=1))
    assert (verdict.binding, verdict.available, verdict.role_limit) == ("server", 82, 1)


def test_clamp_mode_names_the_cap_it_applies() -> None:
    """In clamp mode the remedy says each process is capped at its share."""
    verdict = _decide(_slots(), mode="clamp")
    assert verdict.explain().endswith(
        "capping each process at 10; lower pool_max to 10 or raise max_connections to 178"
    )


def test_when_not_even_one_connection_per_process_fits_it_says_how_many_processes_do() -> None:
    """More processes than free slots: the share is 0 and the remedy names the process count."""
    few = _decide(_slots(), replicas=100, workers=1)
    assert (few.per_process_max, few.available) == (0, 82)
    assert "not even pool 1 fits 100 processes: run at most 82 (replicas x workers)" in (
        few.explain()
    )
    none = _decide(_slots(max_connections=10, others=8))
    assert (none.available, none.per_process_max) == (-4, 0)
    assert "nothing is left for it: free connections held by other applications" in none.explain()
    empty = _decide(_slots(role_limit=2, others=0), headroom=3)
    assert "nothing is left for it: lower headroom or" in empty.explain()


def test_a_fleet_that_cannot_be_budgeted_is_a_config_error() -> None:
    """Zero replicas, a negative headroom, an unknown mode or no service name are refused."""
    with pytest.raises(ConfigError, match=r"replicas=0 must be at least 1"):
        _decide(_slots(), replicas=0)
    with pytest.raises(ConfigError, match=r"headroom=-1"):
        Budget(dsn="postgresql://x@h/db", service=SERVICE, headroom=-1)
    with pytest.raises(ConfigError, match=r"mode='soft'"):
        Budget(dsn="postgresql://x@h/db", service=SERVICE, mode="soft")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"service= is required"):
        Budget(dsn="postgresql://x@h/db", service="")


def test_budget_repr_never_shows_the_password() -> None:
    """A Budget ends up in logs and tracebacks, so its repr redacts the DSN."""
    text = repr(Budget(dsn="postgresql://app:s3cret@db/shop", service=SERVICE))
    assert "s3cret" not in text
    assert "app:***@db/shop" in text


@given(
    usable=st.integers(0, 500), others=st.integers(0, 500), headroom=st.integers(0, 10),
    role_limit=st.none() | st.integers(0, 300), role_others=st.integers(0, 300),
    database_limit=st.none() | st.integers(0, 300), superuser=st.booleans(),
    replicas=st.integers(1, 50), workers=st.integers(1, 16), pool_max=st.integers(1, 100),
)  # fmt: skip
def test_the_share_per_process_is_the_largest_that_fits(
    usable: int, others: int, headroom: int, role_limit: int | None, role_others: int,
    database_limit: int | None, superuser: bool, replicas: int, workers: int, pool_max: int,
) -> None:  # fmt: skip
    """per_process_max x processes never exceeds what is available, and one more would."""
    slots = _slots(
        max_connections=usable + 3, others=others, role_limit=role_limit,
        role_others=role_others, database_limit=database_limit, superuser=superuser,
    )  # fmt: skip
    verdict = _decide(
        slots, replicas=replicas, workers=workers, pool_max=pool_max, headroom=headroom
    )
    processes = replicas * workers
    assert verdict.per_process_max >= 0
    assert verdict.per_process_max * processes <= max(verdict.available, 0)
    assert (verdict.per_process_max + 1) * processes > verdict.available
    assert verdict.available <= usable - others - headroom
    if role_limit is not None and not superuser:
        assert verdict.available <= role_limit - role_others - headroom
    assert verdict.ok == (verdict.demand <= verdict.available)
    assert verdict.ok == (verdict.per_process_max >= pool_max)


# -- real servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(pg_factory: Callable[..., PgServer]) -> PgServer:
    """A private server with max_connections=20: 17 usable slots."""
    return pg_factory(max_connections=20)


@pytest.fixture
def admin(server: PgServer) -> Iterator[Conn]:
    """A superuser session held for the test; it counts as one other application."""
    with psycopg.connect(server.dsn, application_name="admin", autocommit=True) as conn:
        _settle(conn, 0)  # sessions of the previous test may still be exiting
        yield conn


def _settle(admin: Conn, expected: int, timeout: float = 10.0) -> None:
    """Wait until exactly `expected` client sessions besides `admin` exist.

    A closed session leaves pg_stat_activity a moment after the client hangs up; waiting
    makes the counts exact instead of timing-dependent.
    """
    deadline = time.monotonic() + timeout
    while True:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
        if row is not None and row[0] == expected:
            return
        assert time.monotonic() < deadline, f"{row} client sessions, expected {expected}"
        time.sleep(0.02)


def _occupy(stack: contextlib.ExitStack, dsn: str, app: str, n: int) -> list[Conn]:
    return [
        stack.enter_context(psycopg.connect(dsn, application_name=app, autocommit=True))
        for _ in range(n)
    ]


def _pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> ConnectionPool[Any]:
    return ConnectionPool(
        dsn, min_size=min_size, max_size=max_size, open=False,
        kwargs={"application_name": SERVICE},
    )  # fmt: skip


@contextlib.contextmanager
def _temporary(admin: Conn, *create: str, drop: tuple[str, ...]) -> Iterator[None]:
    for statement in drop:
        admin.execute(statement)
    for statement in create:
        admin.execute(statement)
    try:
        yield
    finally:
        _settle(admin, 0)
        for statement in drop:
            admin.execute(statement)


def test_verdict_counts_the_server_and_other_applications_exactly(
    server: PgServer, admin: Conn
) -> None:
    """Slots, reserves, others by application (the service's own excluded) are read exactly."""
    with contextlib.ExitStack() as stack:
        _occupy(stack, server.dsn, "batch-jobs", 5)
        _occupy(stack, server.dsn, SERVICE, 2)  # another replica already up: part of demand
        _settle(admin, 7)
        verdict = check_budget(server.url(), service=SERVICE, replicas=2, workers=2, pool_max=5)
        _settle(admin, 7)  # the probe's sessions are gone again
    assert (verdict.max_connections, verdict.superuser_reserved_connections) == (20, 3)
    assert (verdict.reserved_connections, verdict.usable_connections) == (0, 17)
    assert (verdict.others, verdict.other_applications) == (6, (("batch-jobs", 5), ("admin", 1)))
    assert (verdict.role, verdict.superuser, verdict.role_limit) == ("postgres", True, None)
    assert (verdict.role_current, verdict.role_others) == (8, 6)
    assert (verdict.database, verdict.database_limit, verdict.database_current) == (
        "postgres", None, 8,
    )  # fmt: skip
    assert (verdict.demand, verdict.available, verdict.ok) == (20, 8, False)
    assert (verdict.per_process_max, verdict.binding, verdict.headroom) == (2, "server", 3)
    assert verdict.explain() == (
        "budget for 'orders-api': 2 replicas x 2 workers x pool 5 = 20 connections, but the "
        "server has 17 usable - 6 held by other applications - 3 headroom = 8 available; "
        "lower pool_max to 2 or raise max_connections to 32"
    )


def test_guard_refuses_to_start_with_the_arithmetic(
    server: PgServer, admin: Conn, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Mode refuse: guard() raises BudgetExceeded whose message is the verdict's arithmetic."""
    caplog.set_level(logging.DEBUG, logger="poolwarden")
    budget = Budget(dsn=server.url(), service=SERVICE, replicas=4, workers=2)
    pool = _pool(server.url())
    with pytest.raises(BudgetExceeded) as info:
        guard(pool, name="orders", budget=budget, registry=CollectorRegistry())
    pool.close()
    verdict = info.value.verdict
    assert isinstance(verdict, BudgetVerdict)
    assert str(info.value) == verdict.explain()
    assert verdict.explain() == (
        "budget for 'orders-api': 4 replicas x 2 workers x pool 10 = 80 connections, but the "
        "server has 17 usable - 1 held by other applications - 3 headroom = 13 available; "
        "lower pool_max to 1 or raise max_connections to 87"
    )
    _settle(admin, 0)  # the probe's connections did not leak
    assert capsys.readouterr() == ("", "")
    assert caplog.records == []


def test_a_budget_that_fits_logs_nothing_and_changes_nothing(
    server: PgServer, admin: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """When the fleet fits, apply_budget returns the options as given and logs nothing."""
    caplog.set_level(logging.DEBUG, logger="poolwarden")
    options = GuardOptions(timeout=2.0)
    with contextlib.closing(_pool(server.url(), max_size=5)) as pool:
        budget = Budget(dsn=server.url(), service=SERVICE, replicas=2)
        assert apply_budget(budget, pool, "orders", options) is options
    assert caplog.records == []


def test_clamp_caps_the_guard_and_the_server_never_sees_more(
    server: PgServer, admin: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """Clamp: the guard's limit is the share that fits and the pool never holds more at once."""
    caplog.set_level(logging.WARNING, logger="poolwarden.guard")
    budget = Budget(dsn=server.url(), service=SERVICE, replicas=2, workers=2, mode="clamp")
    with contextlib.ExitStack() as stack:
        _occupy(stack, server.dsn, "batch-jobs", 4)
        _settle(admin, 4)
        pool = _pool(server.url(), min_size=1, max_size=10)
        # No shedding: this test counts connections, not the guard's overload policy.
        guarded = guard(
            pool, name="orders", budget=budget, timeout=10.0, shed=False,
            registry=CollectorRegistry(),
        )  # fmt: skip
        stack.callback(guarded.close)
        # 17 usable - 5 others - 3 headroom = 9 available over 4 processes: 2 each.
        assert guarded.guard.current_limit() == 2
        assert guarded.guard.options.budget_cap == 2
        (record,) = caplog.records
        assert record.levelno == logging.WARNING
        assert record.getMessage() == (
            "pool 'orders': budget for 'orders-api': 2 replicas x 2 workers x pool 10 = 40 "
            "connections, but the server has 17 usable - 5 held by other applications - 3 "
            "headroom = 9 available; capping each process at 2; lower pool_max to 2 or raise "
            "max_connections to 51"
        )
        pool.open(wait=True)
        in_app, on_server, served, errors = _hammer(guarded, admin, threads=8, each=6)
        guarded.close()
        _settle(admin, 4)
        # Control: the same load through the same kind of pool without a budget opens more.
        free = guard(_pool(server.url()), name="free", shed=False, timeout=10.0,
                     registry=CollectorRegistry())  # fmt: skip
        stack.callback(free.close)
        free.open(wait=True)
        control = _hammer(free, admin, threads=8, each=6)
    assert (served, errors) == (48, [])
    assert in_app == 2  # the cap was reached, so the check below means something
    assert on_server <= 2, "the server never saw more than the cap"
    assert on_server > 0, "the sampler saw the service's sessions"
    assert control[2:] == (48, [])
    assert control[1] > 2


def _hammer(
    guarded: Any, admin: Conn, *, threads: int, each: int
) -> tuple[int, int, int, list[BaseException]]:
    """Run threads x each short transactions; return peaks in-app and on the server, served, errors."""
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "served": 0, "server_peak": 0}
    errors: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            for _ in range(each):
                with guarded.connection() as conn:
                    with lock:
                        state["now"] += 1
                        state["peak"] = max(state["peak"], state["now"])
                    conn.execute("SELECT pg_sleep(0.02)")
                    with lock:
                        state["now"] -= 1
                        state["served"] += 1
        except Exception as exc:  # reported by the test, never lost in a thread
            errors.append(exc)

    def sample() -> None:
        # Every connection the pool holds, busy or idle, is one the server gives it.
        while not done.is_set():
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (SERVICE,)
            ).fetchone()
            state["server_peak"] = max(state["server_peak"], row[0] if row else 0)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)
    done.set()
    sampler.join(timeout=5)
    return state["peak"], state["server_peak"], state["served"], errors


def test_clamp_refuses_when_not_even_one_connection_per_process_fits(
    server: PgServer, admin: Conn
) -> None:
    """Clamp cannot help 20 processes on 13 free slots: it raises BudgetExceeded too."""
    budget = Budget(dsn=server.url(), service=SERVICE, replicas=20, mode="clamp")
    with contextlib.closing(_pool(server.url())) as pool, pytest.raises(BudgetExceeded) as info:
        apply_budget(budget, pool, "orders", GuardOptions())
    assert "13 available; not even pool 1 fits 20 processes: run at most 13" in str(info.value)


def test_clamp_warns_when_the_pools_minimum_exceeds_the_cap(
    server: PgServer, admin: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """A min_size above the cap keeps connections the guard cannot bound; the warning says so."""
    caplog.set_level(logging.WARNING, logger="poolwarden.guard")
    budget = Budget(dsn=server.url(), service=SERVICE, replicas=4, mode="clamp")
    with contextlib.closing(_pool(server.url(), min_size=4)) as pool:
        options = apply_budget(budget, pool, None, GuardOptions())
    assert options.budget_cap == 3
    (record,) = caplog.records
    assert record.getMessage().startswith("pool 'orders-api': budget for 'orders-api'")
    assert record.getMessage().endswith(
        "; the pool still opens min_size=4 connections: set min_size to 3"
    )


def test_a_role_connection_limit_binds(server: PgServer, admin: Conn) -> None:
    """A role's CONNECTION LIMIT tighter than the server's room sets the share; clamp obeys it."""
    with _temporary(
        admin,
        "CREATE ROLE budget_app LOGIN PASSWORD 'pw' CONNECTION LIMIT 5",
        "GRANT pg_monitor TO budget_app",
        drop=("DROP ROLE IF EXISTS budget_app",),
    ), contextlib.ExitStack() as stack:  # fmt: skip
        dsn = server.url(user="budget_app", password="pw")
        _occupy(stack, dsn, "batch-jobs", 1)
        _settle(admin, 1)
        verdict = check_budget(dsn, service=SERVICE, pool_max=10, headroom=1)
        pool = _pool(dsn, max_size=10)
        budget = Budget(dsn=dsn, service=SERVICE, mode="clamp", headroom=1)
        _settle(admin, 1)
        guarded = guard(pool, name="orders", budget=budget, registry=CollectorRegistry())
        guarded.close()
    assert (verdict.role, verdict.superuser, verdict.role_limit) == ("budget_app", False, 5)
    assert (verdict.role_current, verdict.role_others, verdict.others) == (1, 1, 2)
    assert (verdict.binding, verdict.available, verdict.per_process_max) == ("role", 3, 3)
    assert verdict.explain() == (
        "budget for 'orders-api': 1 replica x 1 worker x pool 10 = 10 connections, but role "
        "'budget_app' has CONNECTION LIMIT 5 - 1 held by other applications - 1 headroom = 3 "
        "available; lower pool_max to 3 or raise the CONNECTION LIMIT of role 'budget_app' to 12"
    )
    assert guarded.guard.current_limit() == 3


def test_a_superusers_role_limit_does_not_bind(server: PgServer, admin: Conn) -> None:
    """PostgreSQL exempts superusers from CONNECTION LIMIT, so the verdict ignores it."""
    with _temporary(
        admin, "ALTER ROLE postgres CONNECTION LIMIT 1",
        drop=("ALTER ROLE postgres CONNECTION LIMIT -1",),
    ):  # fmt: skip
        verdict = check_budget(server.url(), service=SERVICE, pool_max=5)
    assert (verdict.role_limit, verdict.superuser) == (1, True)
    assert (verdict.binding, verdict.available, verdict.ok) == ("server", 13, True)


def test_a_database_connection_limit_binds(server: PgServer, admin: Conn) -> None:
    """A database's CONNECTION LIMIT counts every role's sessions in it and can set the share."""
    with _temporary(
        admin,
        "CREATE ROLE budget_db_app LOGIN PASSWORD 'pw'",
        "CREATE DATABASE budget_db CONNECTION LIMIT 6",
        drop=("DROP DATABASE IF EXISTS budget_db WITH (FORCE)", "DROP ROLE IF EXISTS budget_db_app"),
    ), contextlib.ExitStack() as stack:  # fmt: skip
        _occupy(stack, server.url(dbname="budget_db"), "batch-jobs", 2)  # superuser: still counted
        _settle(admin, 2)
        dsn = server.url(user="budget_db_app", password="pw", dbname="budget_db")
        verdict = check_budget(dsn, service=SERVICE, pool_max=4)
    assert (verdict.database, verdict.database_limit) == ("budget_db", 6)
    assert (verdict.database_current, verdict.database_others) == (2, 2)
    assert (verdict.binding, verdict.available, verdict.per_process_max) == ("database", 1, 1)
    assert verdict.explain().endswith(
        "but database 'budget_db' has CONNECTION LIMIT 6 - 2 held by other applications - 3 "
        "headroom = 1 available; lower pool_max to 1 or raise the CONNECTION LIMIT of database "
        "'budget_db' to 9"
    )


def test_an_unreachable_server_raises_the_probes_error() -> None:
    """Nothing listening at the DSN: DatabaseUnreachable, from check_budget and from guard()."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(DatabaseUnreachable, match=r"cannot connect"):
        check_budget(dsn, service=SERVICE, pool_max=5)
    with contextlib.closing(_pool(dsn)) as pool, pytest.raises(DatabaseUnreachable):
        guard(pool, name="orders", budget=Budget(dsn=dsn, service=SERVICE))


def _refused_pool_max(server: PgServer, pool: Any, options: GuardOptions | None = None) -> int:
    """Return the pool_max a refused budget saw for `pool` (100 replicas never fit)."""
    # A SQLAlchemy URL is accepted as the budget's DSN: apps have that one at hand.
    budget = Budget(dsn=server.url().replace("postgresql:", "postgresql+psycopg:"),
                    service=SERVICE, replicas=100)  # fmt: skip
    with pytest.raises(BudgetExceeded) as info:
        apply_budget(budget, pool, "orders", options or GuardOptions())
    assert isinstance(info.value.verdict, BudgetVerdict)
    return info.value.verdict.pool_max


def test_pool_max_is_read_from_each_library(server: PgServer, admin: Conn) -> None:
    """psycopg_pool max_size, SQLAlchemy size + overflow (sync and async), asyncpg max size."""
    with contextlib.closing(_pool(server.url(), max_size=9)) as pool:
        assert _refused_pool_max(server, pool) == 9
        assert _refused_pool_max(server, pool, GuardOptions(limit=2)) == 2  # guard's own cap
    engine = create_engine(server.url().replace("postgresql:", "postgresql+psycopg:"),
                           pool_size=3, max_overflow=2)  # fmt: skip
    assert _refused_pool_max(server, engine) == 5
    engine.dispose()
    aurl = server.url().replace("postgresql:", "postgresql+asyncpg:")
    async_engine = create_async_engine(aurl, pool_size=2, max_overflow=1)
    assert _refused_pool_max(server, async_engine) == 3
    asyncio.run(async_engine.dispose())

    async def with_asyncpg() -> int:
        apool = await asyncpg.create_pool(server.url(), min_size=0, max_size=7)
        try:
            return _refused_pool_max(server, apool)
        finally:
            await apool.close()

    assert asyncio.run(with_asyncpg()) == 7
    unbounded = create_engine(server.url().replace("postgresql:", "postgresql+psycopg:"),
                              max_overflow=-1)  # fmt: skip
    with pytest.raises(ConfigError, match=r"max_overflow=-1"):
        apply_budget(Budget(dsn=server.url(), service=SERVICE), unbounded, "x", GuardOptions())
    unbounded.dispose()
