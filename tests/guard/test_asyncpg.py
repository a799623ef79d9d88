"""The asyncpg adapter of the guard, against the real embedded PostgreSQL.

Every test builds its own asyncpg pool with a unique ``application_name`` (also the guard's
pool name) and a fresh ``CollectorRegistry``, so what the server, the pool and the metrics
show belongs to that test alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.fixtures.pg import PgServer

from poolwarden.errors import ConfigError, PoolSaturated
from poolwarden.guard import guard
from poolwarden.guard.asyncpg import AsyncpgPoolSaturated, GuardedPool, _name_from

BUSY_STATES = ("active", "idle in transaction", "idle in transaction (aborted)")


@dataclass
class Guarded:
    """One guarded pool under test, its metrics registry and its application_name."""

    pool: GuardedPool
    registry: CollectorRegistry
    app: str

    def metric(self, name: str, **labels: str) -> float:
        """Read one sample of this pool from a Prometheus scrape of the registry."""
        text = generate_latest(self.registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                wanted = {"pool_name": self.app, **labels}
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in wanted.items()
                ):
                    return float(sample.value)
        raise AssertionError(f"no sample {name}{labels} for pool {self.app!r}")


@contextlib.asynccontextmanager
async def guarded(
    pg: PgServer,
    *,
    max_size: int = 4,
    min_size: int = 0,
    pool_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[Guarded]:
    """Create an asyncpg pool, guard it before it opens, open it, and close it at the end."""
    app = f"pw-apg-{uuid.uuid4().hex[:10]}"
    registry = CollectorRegistry()
    # ssl=False: the loopback server has no TLS, and a cancellation landing in asyncpg's
    # TLS probe (sslmode=prefer) logs an unretrieved ConnectionError (asyncpg #1211).
    raw = asyncpg.create_pool(
        pg.dsn, min_size=min_size, max_size=max_size, ssl=False,
        max_inactive_connection_lifetime=0, server_settings={"application_name": app},
        **(pool_kwargs or {}),
    )  # fmt: skip
    pool = guard(raw, name=app, registry=registry, **options)
    await pool
    try:
        yield Guarded(pool, registry, app)
    finally:
        await asyncio.wait_for(pool.close(), 10.0)


def server_sessions(pg: PgServer, app: str) -> dict[str, int]:
    """Count the server's sessions of `app` by state."""
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT coalesce(state, 'starting'), count(*) FROM pg_stat_activity "
            "WHERE application_name = %s GROUP BY 1",
            [app],
        ).fetchall()
    return {str(state): int(n) for state, n in rows}


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `check` until it holds or `seconds` pass; return its last value."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return check()
        await asyncio.sleep(0.01)
    return True


def assert_nothing_checked_out(g: Guarded, pg: PgServer) -> None:
    """The guard, the pool and pg_stat_activity all agree that no connection is lent."""
    snap = g.pool.guard.snapshot()
    assert (snap.admission.in_flight, snap.admission.waiting, snap.leaks_outstanding) == (0, 0, 0)
    assert snap.admission.admitted == snap.admission.released
    assert g.pool.get_idle_size() == g.pool.get_size()
    sessions = server_sessions(pg, g.app)
    assert not {s: n for s, n in sessions.items() if s in BUSY_STATES}, sessions
    assert sum(sessions.values()) == g.pool.get_size(), sessions


# --- idioms ----------------------------------------------------------------------------


def test_guarded_pool_keeps_asyncpgs_acquire_and_release_idioms(pg: PgServer) -> None:
    """`async with acquire()`, `await acquire(timeout=)` + `release`, and delegation all work."""

    async def main() -> None:
        async with guarded(pg, max_size=2, min_size=1) as g:
            assert isinstance(g.pool, GuardedPool)
            async with g.pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
                assert g.pool.guard.snapshot().admission.in_flight == 1
            conn = await g.pool.acquire(timeout=2.0)
            try:
                assert await conn.fetchval("SELECT current_setting('application_name')") == g.app
            finally:
                await g.pool.release(conn)
            await g.pool.release(conn)  # a second release is a no-op, as in asyncpg
            assert (g.pool.get_max_size(), g.pool.get_min_size()) == (2, 1)
            assert g.pool.guard.snapshot().admission.released == 2
            assert_nothing_checked_out(g, pg)

    asyncio.run(main())


def test_query_shortcuts_acquire_through_the_guard(pg: PgServer) -> None:
    """`fetch`, `fetchrow`, `fetchval`, `execute` and `executemany` each pass the guard once."""

    async def main() -> None:
        async with guarded(pg) as g:
            assert [r[0] for r in await g.pool.fetch("SELECT generate_series(1, 3)")] == [1, 2, 3]
            assert (await g.pool.fetchrow("SELECT 7 AS x"))["x"] == 7
            assert await g.pool.fetchval("SELECT $1::int + 1", 41) == 42
            assert await g.pool.execute("SELECT 1") == "SELECT 1"
            await g.pool.executemany("SELECT $1::int", [(1,), (2,)])
            stats = g.pool.guard.snapshot().admission
            assert (stats.admitted, stats.released, stats.in_flight) == (5, 5, 0)
            assert g.metric("db_client_connection_use_time_seconds_count") == 5

    asyncio.run(main())


def test_acquire_context_cannot_be_entered_twice(pg: PgServer) -> None:
    """Entering one acquire context a second time raises asyncpg's InterfaceError."""

    async def main() -> None:
        async with guarded(pg) as g:
            ctx = g.pool.acquire()
            async with ctx:
                with pytest.raises(asyncpg.InterfaceError, match="already acquired"):
                    await ctx.__aenter__()
            assert g.pool.guard.snapshot().admission.in_flight == 0

    asyncio.run(main())


# --- the pool's name -------------------------------------------------------------------


def test_unnamed_pool_is_named_host_port_database(pg: PgServer) -> None:
    """Without name=, the guard names the pool `host:port/database` from its DSN (OTel)."""

    async def main() -> None:
        raw = asyncpg.create_pool(pg.dsn, min_size=0, max_size=1)
        pool = guard(raw, registry=CollectorRegistry())
        assert pool.guard.name == f"127.0.0.1:{pg.port}/postgres"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("dsn", "kwargs", "env", "expected"),
    [
        ("postgresql://u:secret@db.example:6432/orders", {}, {}, "db.example:6432/orders"),
        ("postgres://u@db.example/orders", {}, {}, "db.example:5432/orders"),
        ("postgresql://u@db.example/orders", {"database": "x", "port": 7}, {}, "db.example:7/x"),
        (None, {"host": "h", "user": "alice"}, {}, "h:5432/alice"),
        (None, {}, {"PGHOST": "h", "PGPORT": "5433", "PGDATABASE": "d"}, "h:5433/d"),
        ("postgresql:///d?host=/run/pg", {}, {}, "/run/pg:5432/d"),
        ("postgresql://u@a:1,b:2/orders", {}, {}, None),
        ("postgresql://u@h/d?service=prod", {}, {}, None),
        (None, {"host": ["a", "b"], "database": "d"}, {}, None),
        (None, {"database": "d"}, {}, None),
        ("postgresql://u@h:abc/d", {}, {}, None),
    ],
)
def test_pool_name_derivation_from_connect_arguments(
    dsn: str | None, kwargs: dict[str, Any], env: dict[str, str], expected: str | None
) -> None:
    """One server gives `host:port/database` (keywords over DSN over env); else None."""
    assert _name_from(dsn, kwargs, env) == expected


def test_pool_without_a_single_host_needs_a_name(pg: PgServer) -> None:
    """A multi-host pool without name= is refused with a ConfigError that says to pass name=."""

    async def main() -> None:
        raw = asyncpg.create_pool("postgresql://u@a:1,b:2/orders", min_size=0, max_size=1)
        with pytest.raises(ConfigError, match="pass name="):
            guard(raw, registry=CollectorRegistry())

    asyncio.run(main())


# --- overload --------------------------------------------------------------------------


async def hold(pool: GuardedPool, release: asyncio.Event, **acquire: Any) -> None:
    """Acquire a connection and keep it until `release` is set."""
    async with pool.acquire(**acquire):
        await release.wait()


def test_requests_beyond_limit_and_queue_are_rejected_fast_as_timeout_errors(
    pg: PgServer,
) -> None:
    """Past limit + max_waiting, requests fail in milliseconds with queue_full, as TimeoutError."""

    async def main() -> None:
        async with guarded(pg, max_size=2, max_waiting=3, timeout=5.0, shed=False) as g:
            release = asyncio.Event()
            holders = [asyncio.create_task(hold(g.pool, release)) for _ in range(5)]
            assert await eventually(lambda: g.pool.guard.snapshot().admission.waiting == 3)
            for _ in range(4):
                started = time.monotonic()
                with pytest.raises(TimeoutError) as caught:  # what asyncpg users catch
                    await g.pool.acquire()
                assert time.monotonic() - started < 0.05
                assert isinstance(caught.value, AsyncpgPoolSaturated)
                assert (caught.value.reason, caught.value.pool) == ("queue_full", g.app)
                assert "max_waiting=3" in str(caught.value)
            release.set()
            await asyncio.gather(*holders)
            assert g.metric("poolwarden_pool_rejections_total", reason="queue_full") == 4
            assert g.pool.guard.snapshot().admission.admitted == 5

    asyncio.run(main())


def test_request_waiting_past_its_timeout_is_rejected_with_reason_deadline(pg: PgServer) -> None:
    """A queued request whose timeout passes fails with reason deadline, counted as a timeout."""

    async def main() -> None:
        async with guarded(pg, max_size=1) as g:
            release = asyncio.Event()
            holder = asyncio.create_task(hold(g.pool, release))
            assert await eventually(lambda: g.pool.guard.snapshot().admission.in_flight == 1)
            started = time.monotonic()
            with pytest.raises(TimeoutError) as caught:
                await g.pool.acquire(timeout=0.1)
            assert 0.09 < time.monotonic() - started < 0.5
            assert isinstance(caught.value, AsyncpgPoolSaturated)
            assert caught.value.reason == "deadline"
            release.set()
            await holder
            assert g.metric("poolwarden_pool_rejections_total", reason="deadline") == 1
            assert g.metric("db_client_connection_timeouts_total") == 1

    asyncio.run(main())


def test_pool_timeout_after_admission_is_a_deadline_rejection(pg: PgServer) -> None:
    """Admitted, but the pool has nothing (held outside the guard): deadline, slot returned."""

    async def main() -> None:
        async with guarded(pg, max_size=1, timeout=0.2) as g:
            outside = await g.pool.wrapped.acquire()
            try:
                with pytest.raises(AsyncpgPoolSaturated, match="guard admitted") as caught:
                    await g.pool.acquire()
                assert caught.value.reason == "deadline"
                assert g.pool.guard.snapshot().admission.in_flight == 0
            finally:
                await g.pool.wrapped.release(outside)
            async with g.pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1

    asyncio.run(main())


# --- cancellation ----------------------------------------------------------------------


def test_cancel_while_queued_in_the_guard_leaves_no_slot_taken(pg: PgServer) -> None:
    """A task cancelled in the guard's queue leaves it; the holder's slot is the only one."""

    async def main() -> None:
        async with guarded(pg, max_size=1, timeout=5.0) as g:
            async with g.pool.acquire():
                waiter = asyncio.create_task(hold(g.pool, asyncio.Event()))
                assert await eventually(lambda: g.pool.guard.snapshot().admission.waiting == 1)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
                stats = g.pool.guard.snapshot().admission
                assert (stats.in_flight, stats.waiting, stats.cancelled) == (1, 0, 1)
            assert_nothing_checked_out(g, pg)

    asyncio.run(main())


def test_cancel_inside_pool_acquire_returns_the_slot(pg: PgServer) -> None:
    """A task cancelled while asyncpg waits for a connection gives its guard slot back."""

    async def main() -> None:
        async with guarded(pg, max_size=1, timeout=5.0) as g:
            outside = await g.pool.wrapped.acquire()
            task = asyncio.create_task(hold(g.pool, asyncio.Event()))
            assert await eventually(lambda: g.pool.guard.snapshot().admission.in_flight == 1)
            await asyncio.sleep(0.05)  # now parked inside asyncpg's own acquire
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert g.pool.guard.snapshot().admission.in_flight == 0
            await g.pool.wrapped.release(outside)
            assert_nothing_checked_out(g, pg)

    asyncio.run(main())


@pytest.mark.parametrize("hook", ["connect", "setup"])
def test_cancel_while_asyncpg_opens_or_sets_up_a_connection_leaks_nothing(
    pg: PgServer, hook: str
) -> None:
    """Cancelled while connecting or in `setup=` (connection taken), nothing stays lent."""

    async def main() -> None:
        inside = asyncio.Event()

        async def slow_connect(*args: Any, **kwargs: Any) -> Any:
            inside.set()
            await asyncio.sleep(5.0)
            return await asyncpg.connect(*args, **kwargs)

        async def slow_setup(conn: Any) -> None:
            inside.set()
            await asyncio.sleep(5.0)

        hooks = {"connect": {"connect": slow_connect}, "setup": {"setup": slow_setup}}
        async with guarded(pg, max_size=1, timeout=10.0, pool_kwargs=hooks[hook]) as g:
            task = asyncio.create_task(hold(g.pool, asyncio.Event()))
            await asyncio.wait_for(inside.wait(), 5.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert g.pool.get_size() == 0  # asyncpg closed a connection it had opened
            assert await eventually(lambda: server_sessions(pg, g.app) == {})
            assert_nothing_checked_out(g, pg)

    asyncio.run(main())


def test_cancel_while_holding_returns_the_connection_and_stops_the_query(pg: PgServer) -> None:
    """A task cancelled mid-query returns its connection; the server query stops too."""

    async def main() -> None:
        async with guarded(pg, max_size=1) as g:

            async def query() -> None:
                async with g.pool.acquire() as conn:
                    await conn.execute("SELECT pg_sleep(30)")

            task = asyncio.create_task(query())
            assert await eventually(lambda: server_sessions(pg, g.app).get("active") == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert_nothing_checked_out(g, pg)

    asyncio.run(main())


def test_cancel_while_releasing_finishes_the_return_first(pg: PgServer) -> None:
    """A task cancelled during release ends only once the connection is back in the pool."""

    async def main() -> None:
        resetting, reset_done = asyncio.Event(), asyncio.Event()

        async def slow_reset(conn: Any) -> None:
            resetting.set()
            await asyncio.sleep(0.3)
            reset_done.set()

        async with guarded(pg, max_size=1, pool_kwargs={"reset": slow_reset}) as g:
            task = asyncio.create_task(hold(g.pool, asyncio.Event()))
            assert await eventually(lambda: g.pool.guard.snapshot().admission.in_flight == 1)
            # The first cancellation ends the holder's block: it starts returning the connection.
            task.cancel()
            await asyncio.wait_for(resetting.wait(), 5.0)
            task.cancel()  # a second cancellation, now inside the release
            with pytest.raises(asyncio.CancelledError):
                await task
            assert reset_done.is_set()
            assert g.pool.get_idle_size() == g.pool.get_size() == 1
            assert_nothing_checked_out(g, pg)

    asyncio.run(main())


def test_reset_on_release_is_not_bound_by_the_guards_leftover_time(pg: PgServer) -> None:
    """asyncpg bounds the reset by the acquire timeout: the caller's, not the guard's sliver."""

    async def main() -> None:
        async def slow_reset(conn: Any) -> None:
            await asyncio.sleep(0.1)

        async with guarded(pg, max_size=1, timeout=0.05, pool_kwargs={"reset": slow_reset}) as g:
            async with g.pool.acquire() as conn:
                pid = conn.get_server_pid()
            async with g.pool.acquire() as conn:
                assert conn.get_server_pid() == pid  # not terminated by a 50 ms reset bound

    asyncio.run(main())


# --- cancellation under load -----------------------------------------------------------


@contextlib.contextmanager
def noting_cancel(seen: Counter[str], phase: str) -> Iterator[None]:
    """Count a cancellation that lands in `phase`, and let it through."""
    try:
        yield
    except asyncio.CancelledError:
        seen[phase] += 1
        raise


async def use_once(pool: GuardedPool, rng: random.Random, seen: Counter[str]) -> None:
    """Acquire one connection in one of asyncpg's idioms, use it briefly, return it."""
    kind = rng.randrange(3)
    if kind == 0:
        async with pool.acquire() as conn:
            with noting_cancel(seen, "holding"):
                await conn.fetchval("SELECT 1")
                await asyncio.sleep(rng.uniform(0.0, 0.002))
    elif kind == 1:
        conn = await pool.acquire(timeout=rng.uniform(0.01, 0.5))
        try:
            with noting_cancel(seen, "holding"):
                await conn.execute("SELECT pg_sleep(0.001)")
        finally:
            with noting_cancel(seen, "releasing"):
                await pool.release(conn)
    else:
        await pool.fetchval("SELECT 1")


class Boom(Exception):
    """Raised by one task of a task group to cancel its siblings."""


async def one_round(
    pool: GuardedPool, rng: random.Random, seen: Counter[str], unexpected: list[BaseException]
) -> None:
    """Run acquires under one random kind of cancellation; keep errors that should not be."""
    mode = rng.randrange(4)
    try:
        if mode == 0:
            await asyncio.wait_for(use_once(pool, rng, seen), rng.uniform(0.0, 0.004))
        elif mode == 1:
            task = asyncio.create_task(use_once(pool, rng, seen))
            await asyncio.sleep(rng.uniform(0.0, 0.003))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif mode == 2:
            async with asyncio.TaskGroup() as tg:
                for _ in range(3):
                    tg.create_task(use_once(pool, rng, seen))
                await asyncio.sleep(rng.uniform(0.0, 0.003))
                raise Boom
        else:
            await use_once(pool, rng, seen)
    except* (TimeoutError, PoolSaturated, Boom):
        pass  # wait_for's deadline, the guard's refusals, and the task group's trigger
    except* BaseException as group:
        unexpected.extend(group.exceptions)


@pytest.mark.slow
def test_ten_thousand_randomly_cancelled_acquires_leak_nothing(pg: PgServer) -> None:
    """10,000 acquires cancelled at random points: guard, pool and server show nothing lent."""
    total, workers, budget_s = 10_000, 16, 90.0

    async def main() -> None:
        async with guarded(pg, max_size=8, min_size=2, max_waiting=32, timeout=0.5) as g:
            seen: Counter[str] = Counter()
            unexpected: list[BaseException] = []
            deadline = time.monotonic() + budget_s

            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                while g.pool.guard.snapshot().admission.requests < total:
                    assert time.monotonic() < deadline, "the load did not finish in time"
                    await one_round(g.pool, rng, seen, unexpected)

            await asyncio.gather(*(worker(seed) for seed in range(workers)))
            assert unexpected == []
            stats, waits = g.pool.guard.snapshot().admission, g.pool.guard.metrics.wait_time
            assert stats.cancelled > 0  # cancelled while queued in the guard
            assert stats.admitted > waits.count  # ... or inside asyncpg's acquire
            assert seen["holding"] > 0
            assert seen["releasing"] > 0
            assert await eventually(lambda: not busy_or_extra(g, pg))
            assert_nothing_checked_out(g, pg)

    asyncio.run(main())


def busy_or_extra(g: Guarded, pg: PgServer) -> bool:
    """True while the server still shows busy sessions or more sessions than the pool has."""
    sessions = server_sessions(pg, g.app)
    busy = any(state in BUSY_STATES for state in sessions)
    return busy or sum(sessions.values()) != g.pool.get_size()


# --- leaks and metrics -----------------------------------------------------------------


@pytest.mark.parametrize("idiom", ["async with", "await"])
def test_connection_held_past_leak_threshold_is_reported_once_and_on_return(
    pg: PgServer, caplog: pytest.LogCaptureFixture, idiom: str
) -> None:
    """A long hold logs one warning naming this file's line, counts a leak, and logs its return."""
    caplog.set_level(logging.INFO, logger="poolwarden.guard.leaks")

    async def main() -> int:
        async with guarded(pg, max_size=1, leak_threshold=0.2) as g:
            if idiom == "async with":
                line = sys._getframe().f_lineno + 1
                async with g.pool.acquire():
                    await asyncio.sleep(0.8)
                    assert g.metric("poolwarden_pool_leaks_total") == 1
            else:
                line = sys._getframe().f_lineno + 1
                conn = await g.pool.acquire()
                await asyncio.sleep(0.8)
                assert g.metric("poolwarden_pool_leaks_total") == 1
                await g.pool.release(conn)
            return line

    line = asyncio.run(main())
    records = [r for r in caplog.records if r.name == "poolwarden.guard.leaks"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"test_asyncpg.py:{line} in main" in warnings[0].getMessage()
    returned = [r for r in records if r.levelno == logging.INFO]
    assert len(returned) == 1
    assert "previously reported as leaked" in returned[0].getMessage()
    assert f"test_asyncpg.py:{line}" in returned[0].getMessage()


def test_metrics_count_waits_uses_creations_and_rejections(pg: PgServer) -> None:
    """wait/use/create histograms and rejections by reason match exactly what was done."""

    async def hold_and_record(pool: GuardedPool, pids: set[int], gate: asyncio.Barrier) -> None:
        async with pool.acquire() as conn:
            pids.add(conn.get_server_pid())
            await gate.wait()

    async def concurrently(g: Guarded, pids: set[int]) -> None:
        gate = asyncio.Barrier(3)
        await asyncio.gather(*(hold_and_record(g.pool, pids, gate) for _ in range(3)))

    async def main() -> None:
        async with guarded(pg, max_size=3, min_size=1, max_waiting=1, shed=False) as g:
            assert g.metric("db_client_connection_create_time_seconds_count") == 1
            pids: set[int] = set()
            for _ in range(5):
                async with g.pool.acquire() as conn:
                    pids.add(conn.get_server_pid())
            await concurrently(g, pids)
            await g.pool.expire_connections()
            await concurrently(g, pids)
            assert g.metric("db_client_connection_create_time_seconds_count") == len(pids) == 6
            assert g.metric("db_client_connection_wait_time_seconds_count") == 11
            assert g.metric("db_client_connection_use_time_seconds_count") == 11
            await reject_one_of_each(g)
            assert g.metric("poolwarden_pool_rejections_total", reason="queue_full") == 1
            assert g.metric("poolwarden_pool_rejections_total", reason="deadline") == 1
            assert g.metric("poolwarden_pool_rejections_total", reason="shed") == 0
            assert g.metric("db_client_connection_timeouts_total") == 1
            assert g.metric("db_client_connection_wait_time_seconds_count") == 14

    asyncio.run(main())


async def reject_one_of_each(g: Guarded) -> None:
    """With every slot held: one waiter runs out of time, one finds the queue full."""
    release = asyncio.Event()
    holders = [asyncio.create_task(hold(g.pool, release)) for _ in range(3)]
    assert await eventually(lambda: g.pool.guard.snapshot().admission.in_flight == 3)
    waiter = asyncio.create_task(g.pool.acquire(timeout=0.2).__aenter__())
    assert await eventually(lambda: g.pool.guard.snapshot().admission.waiting == 1)
    assert g.metric("db_client_connection_pending_requests") == 1
    assert g.metric("db_client_connection_count", state="used") == 3
    with pytest.raises(AsyncpgPoolSaturated):
        await g.pool.acquire(timeout=1.0)
    with pytest.raises(AsyncpgPoolSaturated):
        await waiter
    release.set()
    await asyncio.gather(*holders)
