"""The SQLAlchemy adapter on a real server: idioms, overload, return paths, leaks, metrics.

Every engine talks to the session's embedded PostgreSQL through psycopg 3 (sync and
async) or asyncpg, with its own application_name, so `pg_stat_activity` shows exactly the
sessions it holds. Each guard gets a fresh `CollectorRegistry` and a unique pool name.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import random
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, QueuePool
from tests.fixtures.pg import PgServer

from poolwarden.errors import ConfigError, PoolSaturated
from poolwarden.guard import PoolGuard, guard
from poolwarden.guard.sqlalchemy import SQLAlchemyPoolSaturated, guard_of

ASYNC_DRIVERS = ["psycopg", "asyncpg"]
_ids = itertools.count()


def _app(tag: str) -> str:
    return f"pw-sqla-{tag}-{next(_ids)}"


def _url(pg: PgServer, driver: str) -> str:
    return pg.url().replace("postgresql://", f"postgresql+{driver}://", 1)


def _connect_args(driver: str, app: str) -> dict[str, Any]:
    if driver == "asyncpg":
        return {"server_settings": {"application_name": app}}
    return {"application_name": app}


def _registry(engine: Engine | AsyncEngine) -> CollectorRegistry:
    registry = guard_of(engine).options.registry
    assert registry is not None
    return registry


def _metric(engine: Engine | AsyncEngine, name: str, **labels: str) -> float:
    """Read one sample of the engine's guard from its registry, as a scrape would."""
    exposition = generate_latest(_registry(engine)).decode()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not exported")


def _server_states(pg: PgServer, app: str) -> Counter[str]:
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT coalesce(state, ''), count(*) FROM pg_stat_activity "
            "WHERE application_name = %s GROUP BY 1",
            (app,),
        ).fetchall()
    return Counter({str(state): int(n) for state, n in rows})


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _pool(engine: Engine | AsyncEngine) -> QueuePool:
    pool = (engine.sync_engine if isinstance(engine, AsyncEngine) else engine).pool
    assert isinstance(pool, QueuePool)
    return pool


def _assert_nothing_checked_out(pg: PgServer, engine: Engine | AsyncEngine, app: str) -> None:
    """The guard, the pool and the server agree that no connection is out."""
    guard_obj = guard_of(engine)
    # A release triggered from inside a garbage collection lands a moment later.
    _eventually(lambda: guard_obj.snapshot().admission.in_flight == 0, 2.0)
    snap = guard_obj.snapshot()
    assert (snap.admission.in_flight, snap.admission.waiting, snap.leaks_outstanding) == (0, 0, 0)
    assert snap.admission.admitted == snap.admission.released
    assert _pool(engine).checkedout() == 0
    busy = {"active", "idle in transaction", "idle in transaction (aborted)"}
    # Backends of connections terminated by a cancellation take a moment to exit.
    assert _eventually(lambda: not busy & set(_server_states(pg, app)))
    assert _eventually(lambda: _server_states(pg, app).total() <= _pool(engine).size())


@pytest.fixture
def sync_engine(pg: PgServer) -> Iterator[Callable[..., tuple[Engine, str]]]:
    """Build guarded psycopg engines (pool_size 2, no overflow by default); dispose them after."""
    made: list[Engine] = []

    def make(pool_size: int = 2, max_overflow: int = 0, **options: Any) -> tuple[Engine, str]:
        app = _app("sync")
        engine = create_engine(
            _url(pg, "psycopg"), pool_size=pool_size, max_overflow=max_overflow,
            connect_args=_connect_args("psycopg", app),
        )  # fmt: skip
        made.append(engine)
        guard(engine, name=app, registry=CollectorRegistry(), **options)
        return engine, app

    yield make
    for engine in made:
        guard_of(engine).close()
        engine.dispose()


@contextlib.asynccontextmanager
async def _async_engine(
    pg: PgServer, driver: str, pool_size: int = 2, max_overflow: int = 0, **options: Any
) -> AsyncIterator[tuple[AsyncEngine, str]]:
    app = _app(driver)
    engine = create_async_engine(
        _url(pg, driver), pool_size=pool_size, max_overflow=max_overflow,
        connect_args=_connect_args(driver, app),
    )  # fmt: skip
    guard(engine, name=app, registry=CollectorRegistry(), **options)
    try:
        yield engine, app
    finally:
        guard_of(engine).close()
        await engine.dispose()


# -- idioms ---------------------------------------------------------------------------------


def test_guard_returns_the_engine_and_every_sync_idiom_goes_through_it(pg: PgServer) -> None:
    """guard() returns the same Engine; connect, begin, Session, and a sessionmaker and an
    option engine made before guard() all run queries, each admitted and released once."""
    app = _app("idioms")
    engine = create_engine(_url(pg, "psycopg"), connect_args={"application_name": app})
    made_before = sessionmaker(bind=engine)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        assert guard(engine, name=app, registry=CollectorRegistry()) is engine
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        with engine.begin() as conn:
            assert conn.execute(text("SELECT 2")).scalar_one() == 2
        with Session(bind=engine) as session:
            assert session.execute(text("SELECT 3")).scalar_one() == 3
        with made_before() as session:
            assert session.execute(text("SELECT 4")).scalar_one() == 4
        with autocommit.connect() as conn:
            assert conn.execute(text("SELECT 5")).scalar_one() == 5
        stats = guard_of(engine).snapshot().admission
        assert (stats.admitted, stats.released, stats.in_flight) == (5, 5, 0)
        assert _metric(engine, "db_client_connection_wait_time_seconds_count", pool_name=app) == 5
    finally:
        guard_of(engine).close()
        engine.dispose()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_every_async_idiom_goes_through_the_guard(pg: PgServer, driver: str) -> None:
    """On an AsyncEngine, connect, begin, AsyncSession and async_sessionmaker run queries,
    each admitted and released once."""

    async def scenario() -> None:
        async with _async_engine(pg, driver) as (engine, app):
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            async with engine.begin() as conn:
                assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
            async with AsyncSession(bind=engine) as session:
                assert (await session.execute(text("SELECT 3"))).scalar_one() == 3
            async with async_sessionmaker(engine)() as session:
                assert (await session.execute(text("SELECT 4"))).scalar_one() == 4
            stats = guard_of(engine).snapshot().admission
            assert (stats.admitted, stats.released, stats.in_flight) == (4, 4, 0)
            wait_count = _metric(engine, "db_client_connection_wait_time_seconds_count")
            assert wait_count == 4
            _assert_nothing_checked_out(pg, engine, app)

    asyncio.run(scenario())


# -- overload -------------------------------------------------------------------------------


def _connect_in_thread(engine: Engine, results: list[int]) -> threading.Thread:
    def run() -> None:
        with engine.connect() as conn:
            results.append(conn.execute(text("SELECT 1")).scalar_one())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sync_overload_rejects_queue_full_at_once_as_a_sqlalchemy_timeout(
    sync_engine: Callable[..., tuple[Engine, str]],
) -> None:
    """With the limit held and max_waiting requests queued, the next request fails in
    milliseconds (timeout is 5 s) with reason queue_full, caught as sqlalchemy TimeoutError;
    the queued requests are served once the connections return."""
    engine, app = sync_engine(pool_size=2, max_waiting=2, timeout=5.0)
    held = [engine.connect(), engine.connect()]
    results: list[int] = []
    threads = [_connect_in_thread(engine, results) for _ in range(2)]
    assert _eventually(lambda: guard_of(engine).snapshot().admission.waiting == 2)
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.TimeoutError) as info:  # what SQLAlchemy users catch
        engine.connect()
    assert time.monotonic() - started < 0.1
    exc = info.value
    assert isinstance(exc, SQLAlchemyPoolSaturated)
    assert isinstance(exc, PoolSaturated)
    assert (exc.pool, exc.reason) == (app, "queue_full")
    assert exc.retry_after > 0
    assert f"pool {app!r}: wait queue full (max_waiting=2)" in str(exc)
    for conn in held:
        conn.close()
    for thread in threads:
        thread.join(timeout=5)
    assert results == [1, 1]
    assert guard_of(engine).snapshot().admission.rejected_queue_full == 1


def test_sync_request_waiting_past_the_timeout_is_rejected_with_reason_deadline(
    sync_engine: Callable[..., tuple[Engine, str]],
) -> None:
    """A request that cannot get a slot within `timeout` fails with reason deadline right
    after the timeout, not the pool's 30 s."""
    engine, _ = sync_engine(pool_size=1, timeout=0.2)
    with engine.connect():
        started = time.monotonic()
        with pytest.raises(SQLAlchemyPoolSaturated) as info:
            engine.connect()
        elapsed = time.monotonic() - started
    assert info.value.reason == "deadline"
    assert 0.2 <= elapsed < 1.0


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_overload_rejects_queue_full_at_once_and_deadline_after_the_timeout(
    pg: PgServer, driver: str
) -> None:
    """On an AsyncEngine, a request beyond max_waiting fails at once with queue_full (caught
    as sqlalchemy TimeoutError) and a queued one fails with deadline after `timeout`."""

    async def scenario() -> None:
        async with _async_engine(pg, driver, pool_size=1, max_waiting=1, timeout=0.3) as (
            engine,
            _,
        ):
            async with engine.connect():
                queued_at = time.monotonic()
                queued = asyncio.create_task(engine.connect().start())
                while guard_of(engine).snapshot().admission.waiting < 1:
                    await asyncio.sleep(0.001)
                started = time.monotonic()
                with pytest.raises(sqlalchemy.exc.TimeoutError) as full:
                    await engine.connect().start()
                assert time.monotonic() - started < 0.05
                assert isinstance(full.value, SQLAlchemyPoolSaturated)
                assert full.value.reason == "queue_full"
                with pytest.raises(SQLAlchemyPoolSaturated) as info:
                    await queued
                assert info.value.reason == "deadline"
                assert 0.3 <= time.monotonic() - queued_at < 1.0
            stats = guard_of(engine).snapshot().admission
            assert (stats.rejected_queue_full, stats.rejected_deadline) == (1, 1)

    asyncio.run(scenario())


@pytest.mark.parametrize("flavour", ["sync", *ASYNC_DRIVERS])
def test_pool_wait_after_admission_is_bounded_by_the_guard_timeout(
    pg: PgServer, flavour: str
) -> None:
    """When the pool itself has no connection (one was taken before guard()), an admitted
    request waits only the guard's time left, not pool_timeout=30, and fails with reason
    deadline; it counts as a timeout. The early connection returns without a release."""
    app = _app("pooltimeout")
    driver = "psycopg" if flavour == "sync" else flavour
    url, args = _url(pg, driver), _connect_args(driver, app)

    def check(engine: Engine | AsyncEngine, elapsed: float, exc: SQLAlchemyPoolSaturated) -> None:
        assert exc.reason == "deadline"
        assert "the guard admitted the request" in str(exc)
        assert 0.3 <= elapsed < 1.5
        assert _metric(engine, "db_client_connection_timeouts_total") == 1
        assert guard_of(engine).snapshot().admission.in_flight == 0

    if flavour == "sync":
        engine = create_engine(url, pool_size=1, max_overflow=0, connect_args=args)
        early = engine.connect()
        guard(engine, name=app, registry=CollectorRegistry(), timeout=0.3)
        started = time.monotonic()
        with pytest.raises(SQLAlchemyPoolSaturated) as info:
            engine.connect()
        check(engine, time.monotonic() - started, info.value)
        released = guard_of(engine).snapshot().admission.released
        early.close()
        assert guard_of(engine).snapshot().admission.released == released
        engine.dispose()
        return

    async def scenario() -> None:
        engine = create_async_engine(url, pool_size=1, max_overflow=0, connect_args=args)
        early = await engine.connect().start()
        guard(engine, name=app, registry=CollectorRegistry(), timeout=0.3)
        started = time.monotonic()
        with pytest.raises(SQLAlchemyPoolSaturated) as info:
            await engine.connect().start()
        check(engine, time.monotonic() - started, info.value)
        released = guard_of(engine).snapshot().admission.released
        await early.close()
        assert guard_of(engine).snapshot().admission.released == released
        await engine.dispose()

    asyncio.run(scenario())


def test_a_refusal_inside_a_session_reaches_the_caller_as_a_sqlalchemy_timeout(
    sync_engine: Callable[..., tuple[Engine, str]],
) -> None:
    """A refusal while a Session takes its connection reaches the caller unchanged, as
    SQLAlchemyPoolSaturated and sqlalchemy TimeoutError; the session works once there is room."""
    engine, _ = sync_engine(pool_size=1, max_waiting=0)
    held = engine.connect()
    with Session(bind=engine) as session:
        with pytest.raises(sqlalchemy.exc.TimeoutError) as info:
            session.execute(text("SELECT 1"))
        assert isinstance(info.value, SQLAlchemyPoolSaturated)
        assert info.value.reason == "queue_full"
        held.close()
        assert session.execute(text("SELECT 1")).scalar_one() == 1
    assert guard_of(engine).snapshot().admission.in_flight == 0


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_a_refusal_inside_an_async_session_reaches_the_caller_as_a_sqlalchemy_timeout(
    pg: PgServer, driver: str
) -> None:
    """The same for an AsyncSession from async_sessionmaker, as a FastAPI dependency uses it."""

    async def scenario() -> None:
        async with _async_engine(pg, driver, pool_size=1, max_waiting=0) as (engine, _):
            held = await engine.connect().start()
            async with async_sessionmaker(engine)() as session:
                with pytest.raises(sqlalchemy.exc.TimeoutError) as info:
                    await session.execute(text("SELECT 1"))
                assert isinstance(info.value, SQLAlchemyPoolSaturated)
                assert info.value.reason == "queue_full"
                await held.close()
                assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
            assert guard_of(engine).snapshot().admission.in_flight == 0

    asyncio.run(scenario())


# -- every way back releases exactly once ---------------------------------------------------


def _return_by(path: str, engine: Engine) -> None:
    """Check a connection out and return it by `path`."""
    if path == "close":
        engine.connect().close()
    elif path == "context_exit":
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    elif path == "exception_in_block":
        with contextlib.suppress(ZeroDivisionError), engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            _ = 1 / 0
    elif path == "invalidate":
        conn = engine.connect()
        conn.invalidate()
        conn.close()
    elif path == "detach":
        raw = engine.raw_connection()
        raw.detach()
        raw.dbapi_connection.close()  # a detached connection is the caller's to close
    elif path == "garbage_refcount":
        engine.raw_connection()  # dropped at once: its refcount frees it
    elif path == "garbage_cycle":
        # An abandoned Connection with an open transaction sits in a reference cycle:
        # only the collector frees it, from inside a collection.
        engine.connect().execute(text("SELECT 1"))
        gc.collect()
    elif path == "dispose_then_close":
        old_pool, conn = engine.pool, engine.connect()
        engine.dispose()
        conn.close()
        old_pool.dispose()  # SQLAlchemy leaves the returned connection in the old pool


@pytest.mark.parametrize(
    "path",
    [
        "close", "context_exit", "exception_in_block", "invalidate", "detach",
        "garbage_refcount", "garbage_cycle", "dispose_then_close",
    ],
)  # fmt: skip
def test_every_way_back_releases_the_slot_exactly_once(
    sync_engine: Callable[..., tuple[Engine, str]], path: str
) -> None:
    """However a connection goes back (close, context exit, error, invalidation, detach,
    garbage collection, after engine.dispose()), its slot is released once, with one
    use_time sample; two rounds prove the slot and the pool are usable again."""
    engine, _ = sync_engine()
    guard_obj = guard_of(engine)
    for round_ in (1, 2):
        _return_by(path, engine)
        assert _eventually(lambda: guard_obj.snapshot().admission.in_flight == 0, 2.0)
        stats = guard_obj.snapshot().admission
        assert (stats.admitted, stats.released) == (round_, round_)
        assert _metric(engine, "db_client_connection_use_time_seconds_count") == round_
    assert guard_of(engine).snapshot().leaks_outstanding == 0
    assert _pool(engine).checkedout() == 0


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_connection_left_to_the_garbage_collector_releases_its_slot(
    pg: PgServer, driver: str
) -> None:
    """An AsyncConnection never closed and then collected (SQLAlchemy warns and terminates
    it) gives its slot back once; the engine then serves requests again."""

    async def scenario() -> None:
        async with _async_engine(pg, driver, pool_size=1) as (engine, _):
            cycle: list[Any] = [await engine.connect().start()]
            cycle.append(cycle)
            del cycle
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                gc.collect()
            assert any(
                issubclass(w.category, SAWarning) and "garbage collector" in str(w.message)
                for w in caught
            )
            guard_obj = guard_of(engine)
            for _ in range(200):
                if guard_obj.snapshot().admission.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert guard_obj.snapshot().admission.released == 1
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1

    asyncio.run(scenario())


def test_collector_releasing_while_the_admission_lock_is_held_does_not_deadlock(
    sync_engine: Callable[..., tuple[Engine, str]],
) -> None:
    """A collection can run while the collecting thread holds the admission lock; the
    release it triggers is handed to another thread instead of deadlocking, and lands as
    soon as the lock is free."""
    engine, _ = sync_engine()
    admission_lock = guard_of(engine).admission._lock  # the hazard: held during a collection
    done = threading.Event()

    def collect_while_holding_the_lock() -> None:
        cycle: list[Any] = [engine.raw_connection()]
        cycle.append(cycle)
        del cycle
        with admission_lock:
            gc.collect()
            done.set()

    worker = threading.Thread(target=collect_while_holding_the_lock, daemon=True)
    worker.start()
    assert done.wait(timeout=5), "gc.collect() deadlocked on the admission lock"
    worker.join(timeout=5)
    assert _eventually(lambda: guard_of(engine).snapshot().admission.released == 1, 2.0)


def test_engine_dispose_keeps_the_guard(sync_engine: Callable[..., tuple[Engine, str]]) -> None:
    """engine.dispose() recreates the pool behind the same guard: new checkouts are still
    admitted and limited, and a connection from the old pool releases its slot on return."""
    engine, _ = sync_engine(pool_size=1, max_waiting=0, timeout=0.1)
    old_pool = engine.pool
    old = engine.connect()
    engine.dispose()
    assert engine.pool is not old_pool
    assert guard_of(engine).snapshot().state.used == 0  # the numbers are the new pool's
    with pytest.raises(SQLAlchemyPoolSaturated):
        engine.connect()  # the old connection still holds the only slot
    old.close()
    old_pool.dispose()  # SQLAlchemy leaves the returned connection in the old pool
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    snap = guard_of(engine).snapshot()
    assert (snap.admission.admitted, snap.admission.released, snap.admission.in_flight) == (2, 2, 0)
    assert (snap.state.used, snap.state.idle) == (0, 1)


# -- cancellation ---------------------------------------------------------------------------


class _Abort(Exception):
    """Raised by one task to make its task group cancel the others."""


async def _use(engine: AsyncEngine, rng: random.Random) -> None:
    async with engine.connect() as conn:
        if rng.random() < 0.5:
            await conn.execute(text("SELECT pg_sleep(0.001)"))
        else:
            await conn.execute(text("SELECT 1"))


async def _use_with_deadline(engine: AsyncEngine, rng: random.Random, tally: Counter[str]) -> None:
    # Tiny deadlines land while queued or connecting, small ones mid-query or while
    # returning, generous ones let the request through.
    timeout = rng.choice([rng.uniform(0.0, 0.002), rng.uniform(0.002, 0.03), 1.0])
    try:
        await asyncio.wait_for(_use(engine, rng), timeout=timeout)
    except TimeoutError:
        tally["cancelled by wait_for"] += 1
    except SQLAlchemyPoolSaturated as exc:
        tally[exc.reason] += 1
    else:
        tally["served"] += 1


async def _group_cancelled(
    engine: AsyncEngine, rng: random.Random, n: int, tally: Counter[str]
) -> None:
    async def abort_after(delay: float) -> None:
        await asyncio.sleep(delay)
        raise _Abort

    async def counted() -> None:
        try:
            await _use(engine, rng)
        except SQLAlchemyPoolSaturated as exc:
            tally[exc.reason] += 1
        else:
            tally["served"] += 1

    served_before = sum(tally.values())
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(n):
                group.create_task(counted())
            group.create_task(abort_after(rng.uniform(0.002, 0.05)))
    except* _Abort:
        pass
    tally["cancelled by task group"] += n - (sum(tally.values()) - served_before)


async def _churn(engine: AsyncEngine, total: int, seed: int, budget: float) -> Counter[str]:
    rng = random.Random(seed)
    tally: Counter[str] = Counter()
    stop_at = time.monotonic() + budget
    batch = 100
    for round_ in range(total // batch):
        if time.monotonic() > stop_at:
            raise AssertionError(f"only {round_ * batch} acquires ran within {budget} s")
        if round_ % 2:
            await _group_cancelled(engine, rng, batch, tally)
        else:
            await asyncio.gather(*(_use_with_deadline(engine, rng, tally) for _ in range(batch)))
    return tally


@pytest.mark.slow
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_ten_thousand_async_acquires_with_random_cancellation_leak_nothing(
    pg: PgServer, driver: str
) -> None:
    """10,000 acquires on an AsyncEngine, cancelled at random by wait_for deadlines and by
    task groups tearing down, in every phase (queued, connecting, querying, returning);
    afterwards the guard, the pool and pg_stat_activity agree nothing is checked out."""

    async def scenario() -> None:
        async with _async_engine(pg, driver, pool_size=10, max_waiting=100, timeout=2.0) as (
            engine,
            app,
        ):
            tally = await _churn(engine, 10_000, seed=3, budget=50.0)
            assert tally.total() == 10_000
            assert tally["served"] > 1000
            assert tally["cancelled by wait_for"] > 500
            assert tally["cancelled by task group"] > 500
            _assert_nothing_checked_out(pg, engine, app)
            wait = _metric(engine, "db_client_connection_wait_time_seconds_count")
            assert wait == _metric(engine, "db_client_connection_use_time_seconds_count")
            async with engine.connect() as conn:  # and the engine still works
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1

    asyncio.run(scenario())


def _thread_churn(engine: Engine, rng: random.Random, n: int, tally: Counter[str]) -> None:
    paths = ["select", "error", "invalidate", "abandon", "abandon_in_cycle"]
    for path in rng.choices(paths, weights=[24, 24, 24, 24, 4], k=n):
        try:
            if path == "abandon":
                engine.raw_connection()  # dropped unclosed: freed by its refcount
            elif path == "abandon_in_cycle":
                engine.connect().execute(text("SELECT 1"))  # dropped inside a transaction
                gc.collect()  # returned from inside a collection, in this thread
            elif path == "invalidate":
                with engine.connect() as conn:
                    conn.invalidate()
            else:
                with engine.begin() as conn:
                    conn.execute(text("SELECT pg_sleep(0.001)"))
                    if path == "error":
                        raise ZeroDivisionError
        except ZeroDivisionError:
            pass
        except SQLAlchemyPoolSaturated as exc:
            tally[exc.reason] += 1
            continue
        tally[path] += 1


@pytest.mark.slow
def test_threads_failing_invalidating_and_abandoning_connections_leak_nothing(
    sync_engine: Callable[..., tuple[Engine, str]], pg: PgServer
) -> None:
    """2,000 acquires from 8 threads on 4 connections, returned by errors, invalidation and
    garbage collection (by refcount and from inside collections) or rejected at a 50 ms
    deadline; afterwards the guard, the pool and the server agree nothing is out."""
    engine, app = sync_engine(pool_size=4, max_waiting=4, timeout=0.05)
    tallies = [Counter[str]() for _ in range(8)]
    threads = [
        threading.Thread(target=_thread_churn, args=(engine, random.Random(i), 250, t))
        for i, t in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    tally = sum(tallies, Counter[str]())
    assert tally.total() == 2000
    assert min(tally["select"], tally["error"], tally["invalidate"], tally["abandon"]) > 100
    assert tally["abandon_in_cycle"] > 10
    gc.collect()
    _assert_nothing_checked_out(pg, engine, app)


# -- leaks ----------------------------------------------------------------------------------


def _leak_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "poolwarden.guard.leaks" and r.levelno == level]


def test_connection_held_past_the_threshold_is_reported_once_where_it_was_taken(
    sync_engine: Callable[..., tuple[Engine, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A connection held past leak_threshold logs one warning naming the line of this file
    that took it, counts one leak, and logs again when it returns."""
    caplog.set_level(logging.INFO, logger="poolwarden.guard.leaks")
    engine, app = sync_engine(leak_threshold=0.1)
    conn = engine.connect()
    line = _line() - 1  # the line above
    assert _eventually(lambda: bool(_leak_records(caplog, logging.WARNING)), 2.0)
    time.sleep(0.3)  # several watchdog ticks: still one warning
    [warning] = _leak_records(caplog, logging.WARNING)
    assert f"{__file__}:{line} in test_connection_held_past" in warning.getMessage()
    assert f"pool {app!r}: connection held" in warning.getMessage()
    assert _metric(engine, "poolwarden_pool_leaks_total", pool_name=app) == 1
    conn.close()
    [returned] = _leak_records(caplog, logging.INFO)
    assert "previously reported as leaked" in returned.getMessage()
    assert f"{__file__}:{line}" in returned.getMessage()


def _line() -> int:
    """Return the line number of the caller."""
    return sys._getframe(1).f_lineno


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_leak_report_names_the_async_with_line(
    pg: PgServer, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On an AsyncEngine, whose pool runs in SQLAlchemy's greenlet, the leak warning still
    names the application's `async with engine.connect()` line, and one leak is counted."""
    caplog.set_level(logging.INFO, logger="poolwarden.guard.leaks")

    async def scenario() -> int:
        async with _async_engine(pg, driver, leak_threshold=0.1) as (engine, app):
            async with engine.connect() as conn:
                line = _line() - 1  # the `async with` line above
                for _ in range(200):
                    if _leak_records(caplog, logging.WARNING):
                        break
                    await asyncio.sleep(0.01)
                await conn.execute(text("SELECT 1"))
            assert _metric(engine, "poolwarden_pool_leaks_total", pool_name=app) == 1
        return line

    line = asyncio.run(scenario())
    [warning] = _leak_records(caplog, logging.WARNING)
    assert f"{__file__}:{line} in scenario" in warning.getMessage()
    assert len(_leak_records(caplog, logging.INFO)) == 1


# -- metrics --------------------------------------------------------------------------------


def test_metrics_count_each_checkout_rejection_and_new_connection(
    sync_engine: Callable[..., tuple[Engine, str]],
) -> None:
    """wait_time and use_time count the successful checkouts, rejections are counted by
    reason (deadline also as an OTel timeout), create_time counts each real connect
    (including the reconnect after an invalidation) with plausible durations, and the
    gauges describe the pool."""
    engine, app = sync_engine(pool_size=2, max_overflow=1, max_waiting=0, timeout=0.05)
    connects: list[float] = []
    event.listen(engine.pool, "connect", lambda *_: connects.append(time.monotonic()))
    started = time.monotonic()
    for _ in range(5):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    with engine.connect() as conn:
        conn.invalidate()  # the next checkout makes a new connection
    held = [engine.connect() for _ in range(3)]  # limit 3 = pool_size 2 + max_overflow 1
    for _ in range(2):
        with pytest.raises(SQLAlchemyPoolSaturated):
            engine.connect()  # max_waiting=0: queue_full
    assert _metric(engine, "db_client_connection_count", pool_name=app, state="used") == 3
    for conn in held:
        conn.close()
    elapsed = time.monotonic() - started

    def m(name: str, **labels: str) -> float:
        return _metric(engine, name, pool_name=app, **labels)

    assert m("db_client_connection_wait_time_seconds_count") == 9
    assert m("db_client_connection_use_time_seconds_count") == 9
    assert m("poolwarden_pool_rejections_total", reason="queue_full") == 2
    assert m("poolwarden_pool_rejections_total", reason="deadline") == 0
    assert m("poolwarden_pool_rejections_total", reason="shed") == 0
    assert m("db_client_connection_timeouts_total") == 0
    assert len(connects) == 4  # 1, then its replacement, then 2 more for the 3 held
    assert m("db_client_connection_create_time_seconds_count") == len(connects)
    # A loopback connect with authentication takes well over 50 µs, and less than the test.
    assert 4 * 50e-6 < m("db_client_connection_create_time_seconds_sum") < elapsed
    assert m("db_client_connection_max") == 3
    assert m("db_client_connection_idle_max") == 2
    assert m("db_client_connection_idle_min") == 0
    assert m("db_client_connection_pending_requests") == 0
    assert m("db_client_connection_count", state="used") == 0
    assert m("db_client_connection_count", state="idle") == 2  # the overflow one was closed
    assert m("poolwarden_pool_limit") == 3


def test_deadline_rejections_are_counted_as_timeouts(
    sync_engine: Callable[..., tuple[Engine, str]],
) -> None:
    """A request rejected at its deadline counts under reason deadline and as an OTel
    timeout, and adds no wait_time sample."""
    engine, app = sync_engine(pool_size=1, timeout=0.05)
    with engine.connect():
        for _ in range(3):
            with pytest.raises(SQLAlchemyPoolSaturated):
                engine.connect()
    assert _metric(engine, "poolwarden_pool_rejections_total", reason="deadline") == 3
    assert _metric(engine, "db_client_connection_timeouts_total", pool_name=app) == 3
    assert _metric(engine, "db_client_connection_wait_time_seconds_count") == 1


# -- configuration --------------------------------------------------------------------------


def test_unlimited_overflow_is_bounded_by_the_limit_or_the_pool_size(pg: PgServer) -> None:
    """With max_overflow=-1 the guard is the bound: max is limit= when given, else
    pool_size; an unbounded pool (pool_size=0) without limit= is refused."""
    url = _url(pg, "psycopg")
    by_size = guard(create_engine(url, pool_size=3, max_overflow=-1), name=_app("ovf"),
                    registry=CollectorRegistry())  # fmt: skip
    by_limit = guard(create_engine(url, pool_size=3, max_overflow=-1), name=_app("ovf"),
                     registry=CollectorRegistry(), limit=7)  # fmt: skip
    assert guard_of(by_size).snapshot().state.max == 3
    assert guard_of(by_size).current_limit() == 3
    assert guard_of(by_limit).snapshot().state.max == 7
    assert guard_of(by_limit).current_limit() == 7
    with pytest.raises(ConfigError, match="pass limit=N"):
        guard(create_engine(url, pool_size=0), name=_app("ovf"), registry=CollectorRegistry())


def test_refuses_pools_without_a_bound_and_a_second_guard(pg: PgServer) -> None:
    """A NullPool engine is refused with the remedy, so is guarding an engine twice, and
    guard_of() on an unguarded engine says how to guard it."""
    url = _url(pg, "psycopg")
    with pytest.raises(ConfigError, match=r"uses NullPool.*use the default QueuePool"):
        guard(create_engine(url, poolclass=NullPool), name=_app("cfg"))
    engine = guard(create_engine(url), name=_app("cfg"), registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="already guarded"):
        guard(engine, name=_app("cfg"), registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="not guarded"):
        guard_of(create_engine(url))


def test_unnamed_engine_is_named_after_its_server_and_database(pg: PgServer) -> None:
    """Without name=, the pool is named host:port/database, as OTel suggests; the pool
    keeps its class (a QueuePool) and SQLAlchemy's logger."""
    engine = guard(create_engine(_url(pg, "psycopg")), registry=CollectorRegistry())
    guard_obj = guard_of(engine)
    assert isinstance(guard_obj, PoolGuard)
    assert guard_obj.name == f"127.0.0.1:{pg.port}/postgres"
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.logger.name == "sqlalchemy.pool.impl.QueuePool"
