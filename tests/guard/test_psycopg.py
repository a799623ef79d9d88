"""The psycopg_pool adapter on a real server: the idiom, refusals and cancellation safety."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from tests.fixtures.pg import PgServer

from poolwarden.errors import PoolSaturated
from poolwarden.guard import GuardSnapshot, PsycopgPoolSaturated, guard


@contextlib.contextmanager
def sync_guarded(pg: PgServer, app: str, size: int = 2, **options: Any) -> Iterator[Any]:
    """Yield an open `ConnectionPool` of `size` behind a guard named `app`."""
    raw: ConnectionPool[Any] = ConnectionPool(
        pg.dsn, min_size=size, max_size=size, open=False, kwargs={"application_name": app}
    )
    pool = guard(raw, name=app, registry=CollectorRegistry(), **options)
    with pool:
        raw.wait(timeout=10)
        yield pool


@contextlib.asynccontextmanager
async def async_guarded(
    pg: PgServer, app: str, size: int = 2, **options: Any
) -> AsyncIterator[Any]:
    """Yield an open `AsyncConnectionPool` of `size` behind a guard named `app`."""
    raw: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg.dsn, min_size=size, max_size=size, open=False, kwargs={"application_name": app}
    )
    pool = guard(raw, name=app, registry=CollectorRegistry(), **options)
    async with pool:
        await raw.wait(timeout=10)
        yield pool


def sessions(pg: PgServer, app: str) -> dict[str, int]:
    """Count the server's sessions of `app` by state."""
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM pg_stat_activity WHERE application_name = %s GROUP BY 1",
            [app],
        ).fetchall()
    return {str(state): int(str(n)) for state, n in rows}


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) until `predicate` holds: replaced connections take a moment."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


async def async_eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """`eventually` that lets the event loop (and the pool's workers) run meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def guard_is_idle(pool: Any) -> None:
    """The guard holds no slot, queues nobody and watches no checkout."""
    snap = pool.guard.snapshot()
    assert (snap.admission.in_flight, snap.admission.waiting, snap.leaks_outstanding) == (0, 0, 0)
    assert snap.admission.admitted == snap.admission.released


def pool_is_full(pool: Any, size: int) -> bool:
    """Every connection of the pool is in it (closed ones replaced), nobody waits."""
    stats = pool.get_stats()
    return stats["pool_size"] == stats["pool_available"] == size and not stats["requests_waiting"]


def assert_nothing_checked_out(pg: PgServer, pool: Any, app: str, size: int) -> None:
    """The guard, the pool and pg_stat_activity agree: every connection is back and idle."""
    guard_is_idle(pool)
    # Connections closed mid-query are replaced in the background: wait for the refill.
    eventually(lambda: pool_is_full(pool, size))
    eventually(lambda: sessions(pg, app) == {"idle": size})


async def assert_async_nothing_checked_out(pg: PgServer, pool: Any, app: str, size: int) -> None:
    """`assert_nothing_checked_out` for an async pool, whose workers need the loop."""
    guard_is_idle(pool)
    await async_eventually(lambda: pool_is_full(pool, size))
    await async_eventually(lambda: sessions(pg, app) == {"idle": size})


def refusal(
    pool: Any, catch: type[BaseException], timeout: float | None = None
) -> tuple[Any, float]:
    """Try one checkout that must be refused; return the error caught by `catch` and the time."""
    started = time.monotonic()
    try:
        with pool.connection(timeout):
            pass
    except catch as exc:
        return exc, time.monotonic() - started
    raise AssertionError("the checkout was not refused")


async def async_refusal(pool: Any, catch: type[BaseException]) -> tuple[Any, float]:
    """Async `refusal`."""
    started = time.monotonic()
    try:
        async with pool.connection():
            pass
    except catch as exc:
        return exc, time.monotonic() - started
    raise AssertionError("the checkout was not refused")


def assert_queue_full(exc: Any, name: str) -> None:
    """A queue-full refusal carries its context and says what to do."""
    assert isinstance(exc, PsycopgPoolSaturated)
    assert (exc.pool, exc.reason) == (name, "queue_full")
    assert exc.retry_after > 0
    assert isinstance(exc.snapshot, GuardSnapshot)
    assert (exc.snapshot.admission.in_flight, exc.snapshot.admission.waiting) == (2, 2)
    message = str(exc)
    for part in (repr(name), "max_waiting=2", "2/2 in use", "2 waiting", "raise max_waiting"):
        assert part in message


def test_sync_idiom_works_and_other_attributes_delegate(pg: PgServer) -> None:
    """`with pool.connection() as conn` lends a live connection; the rest is the pool's."""
    with sync_guarded(pg, "pgt-sync-idiom") as pool:
        with pool.connection() as conn:
            row = conn.execute("SELECT current_setting('application_name')").fetchone()
        assert row == ("pgt-sync-idiom",)
        assert pool.guard.name == "pgt-sync-idiom"
        assert (pool.min_size, pool.max_size, pool.name) == (2, 2, pool.wrapped.name)
        assert pool.get_stats()["pool_available"] == 2
        assert isinstance(pool.wrapped, ConnectionPool)
    assert pool.closed


def test_async_idiom_works_and_other_attributes_delegate(pg: PgServer) -> None:
    """`async with pool.connection() as conn` lends a live connection; the rest is the pool's."""

    async def main() -> None:
        async with async_guarded(pg, "pgt-async-idiom") as pool:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT current_setting('application_name')")
                assert await cur.fetchone() == ("pgt-async-idiom",)
            assert (pool.min_size, pool.max_size) == (2, 2)
            assert pool.get_stats()["pool_available"] == 2
        assert pool.closed

    asyncio.run(main())


def test_sync_queue_full_fails_fast_as_pool_timeout_and_too_many_requests(pg: PgServer) -> None:
    """Beyond limit + max_waiting a checkout fails in milliseconds with reason queue_full."""
    name = "pgt-sync-full"
    with (
        sync_guarded(pg, name, max_waiting=2, timeout=5.0, shed=False) as pool,
        contextlib.ExitStack() as held,
    ):
        for _ in range(2):
            held.enter_context(pool.connection())
        queued = [threading.Thread(target=_checkout_once, args=(pool,)) for _ in range(2)]
        for thread in queued:
            thread.start()
        eventually(lambda: pool.guard.snapshot().admission.waiting == 2)
        for catch in (psycopg_pool.PoolTimeout, psycopg_pool.TooManyRequests):
            exc, elapsed = refusal(pool, catch)
            assert elapsed < 0.1  # the timeout is 5 s: refused without waiting
            assert_queue_full(exc, name)
        held.close()  # the queued requests now get the connections
        for thread in queued:
            thread.join(timeout=10)
        assert pool.guard.snapshot().admission.admitted == 4
    eventually(lambda: sessions(pg, name) == {})  # closing the pool closed every session


def _checkout_once(pool: Any) -> None:
    with pool.connection() as conn:
        conn.execute("SELECT 1")


def test_async_queue_full_fails_fast_as_pool_timeout_and_too_many_requests(pg: PgServer) -> None:
    """The async pool refuses beyond limit + max_waiting at once, with reason queue_full."""
    name = "pgt-async-full"

    async def use(pool: Any, hold: asyncio.Event) -> None:
        async with pool.connection():
            await hold.wait()

    async def main() -> None:
        async with async_guarded(pg, name, max_waiting=2, timeout=5.0, shed=False) as pool:
            hold = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for _ in range(4):  # two hold the connections, two queue behind them
                    tg.create_task(use(pool, hold))
                while pool.guard.snapshot().admission.waiting < 2:
                    await asyncio.sleep(0.005)
                for catch in (psycopg_pool.PoolTimeout, psycopg_pool.TooManyRequests):
                    exc, elapsed = await async_refusal(pool, catch)
                    assert elapsed < 0.1
                    assert_queue_full(exc, name)
                hold.set()
            await assert_async_nothing_checked_out(pg, pool, name, 2)

    asyncio.run(main())


def test_sync_deadline_when_the_wait_passes_the_timeout(pg: PgServer) -> None:
    """A checkout that waits past `timeout` is refused with reason deadline, not earlier."""
    name = "pgt-sync-deadline"
    with sync_guarded(pg, name, timeout=0.3) as pool, pool.connection(), pool.connection():
        exc, elapsed = refusal(pool, psycopg_pool.PoolTimeout)
        assert 0.3 <= elapsed < 1.0
        assert isinstance(exc, PoolSaturated)
        assert (exc.pool, exc.reason) == (name, "deadline")
        assert exc.retry_after > 0
        assert isinstance(exc.snapshot, GuardSnapshot)
        assert exc.snapshot.admission.rejected_deadline == 1
        for part in (
            repr(name),
            "no connection within the deadline",
            "2/2 in use",
            "raise the timeout",
        ):
            assert part in str(exc)
        exc, elapsed = refusal(pool, psycopg_pool.PoolTimeout, timeout=0.05)
        assert exc.reason == "deadline"
        assert 0.05 <= elapsed < 0.3


def test_async_deadline_when_the_wait_passes_the_timeout(pg: PgServer) -> None:
    """The async pool refuses a checkout that waited past `timeout` with reason deadline."""
    name = "pgt-async-deadline"

    async def main() -> None:
        async with async_guarded(pg, name, timeout=0.3) as pool:
            async with pool.connection(), pool.connection():
                exc, elapsed = await async_refusal(pool, psycopg_pool.PoolTimeout)
            assert 0.3 <= elapsed < 1.0
            assert (exc.pool, exc.reason) == (name, "deadline")
            assert exc.retry_after > 0
            assert isinstance(exc.snapshot, GuardSnapshot)
            assert repr(name) in str(exc)
            assert "raise the timeout" in str(exc)

    asyncio.run(main())


def test_connections_held_outside_the_guard_give_a_deadline_that_says_so(pg: PgServer) -> None:
    """When the pool itself times out after admission, the error names the pool and the cause."""
    name = "pgt-outside"
    with sync_guarded(pg, name, timeout=0.3) as pool:
        outside = [pool.wrapped.getconn() for _ in range(2)]  # bypasses the guard
        try:
            exc, elapsed = refusal(pool, psycopg_pool.PoolTimeout)
        finally:
            for conn in outside:
                pool.wrapped.putconn(conn)
        assert (exc.reason, exc.pool) == ("deadline", name)
        assert elapsed < 1.0
        assert "holds connections outside the guard" in str(exc)
        assert "2 used, 0 idle" in str(exc)
        assert pool.guard.snapshot().admission.in_flight == 0


def test_async_cancellation_psycopg_pool_would_swallow_is_delivered(pg: PgServer) -> None:
    """A task cancelled as the pool hands it a connection ends cancelled; the connection goes back.

    psycopg_pool loses a cancellation that lands in that instant (psycopg #1401, its
    `wait_for` on Python 3.11): unguarded, the task would run its block anyway.
    """
    name = "pgt-swallow"

    async def main() -> None:
        async with async_guarded(pg, name, size=1) as pool:
            outside = await pool.wrapped.getconn()  # the guard admits; the pool must queue
            ran: list[bool] = []

            async def user() -> None:
                async with pool.connection():
                    ran.append(True)

            task = asyncio.create_task(user())
            await async_eventually(lambda: pool.get_stats()["requests_waiting"] == 1)
            await pool.wrapped.putconn(outside)  # hands the connection to the waiting task...
            task.cancel()  # ...and cancels it before it runs again
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ran == []
            await assert_async_nothing_checked_out(pg, pool, name, 1)

    asyncio.run(main())


def test_async_cancelled_at_every_step_of_the_return_still_returns(pg: PgServer) -> None:
    """Cancelling a task again and again while its connection goes back never strands it."""
    name = "pgt-cancel-return"

    async def main() -> None:
        async with async_guarded(pg, name, size=1) as pool:
            leaving = asyncio.Event()

            async def user() -> None:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")  # opens a transaction: leaving commits it
                    leaving.set()

            task = asyncio.create_task(user())
            await leaving.wait()
            cancels = 0
            while not task.done():
                cancels += task.cancel()
                await asyncio.sleep(0)
            assert task.cancelled()
            assert cancels >= 2
            await assert_async_nothing_checked_out(pg, pool, name, 1)

    asyncio.run(main())


class Storm:
    """Guarded checkouts cancelled at random points; counts where each cancellation landed."""

    def __init__(self, pool: Any, rng: random.Random) -> None:
        self.pool = pool
        self.rng = rng
        self.started = 0
        self.landed: collections.Counter[str] = collections.Counter()

    async def use(self) -> None:
        """One checkout; record the stage a cancellation or refusal interrupted."""
        self.started += 1
        stage = "acquiring"
        try:
            async with self.pool.connection() as conn:
                stage = "holding"
                await conn.execute("SELECT 1")  # opens a transaction: leaving commits it
                stage = "returning"
        except asyncio.CancelledError:
            self.landed[stage] += 1
            raise
        except PoolSaturated:
            self.landed["refused"] += 1
            raise
        self.landed["completed"] += 1

    async def ticks(self) -> None:
        """Let the loop run a random number of steps: a random point in a checkout."""
        for _ in range(self.rng.randrange(40)):
            await asyncio.sleep(0)

    async def cancel_task(self) -> None:
        """Cancel a checkout task at a random point; a swallowed cancellation is counted."""
        task = asyncio.create_task(self.use())
        await self.ticks()
        if task.cancel():
            with contextlib.suppress(asyncio.CancelledError, PoolSaturated):
                await task
                self.landed["swallowed"] += 1
        else:
            await task

    async def group(self) -> None:
        """Two checkouts in a task group that a failing sibling tears down."""

        async def fail() -> None:
            await self.ticks()
            raise LookupError

        with contextlib.suppress(BaseExceptionGroup):  # LookupError and refusals only
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.use())
                tg.create_task(self.use())
                tg.create_task(fail())

    async def one(self) -> None:
        """Run one random scenario."""
        mode = self.rng.randrange(4)
        with contextlib.suppress(TimeoutError, PoolSaturated):
            if mode == 0:
                await self.use()
            elif mode == 1:
                await asyncio.wait_for(self.use(), self.rng.uniform(0, 0.003))
            elif mode == 2:
                await self.cancel_task()
            else:
                await self.group()


@pytest.mark.slow
def test_async_random_cancellation_of_10000_checkouts_leaks_nothing(pg: PgServer) -> None:
    """10,000 checkouts cancelled at random points leave nothing checked out anywhere."""
    name, size = "pgt-async-storm", 8

    async def main() -> Storm:
        async with async_guarded(pg, name, size=size, max_waiting=64, timeout=2.0) as pool:
            storm = Storm(pool, random.Random(1401))

            async def worker() -> None:
                while storm.started < 10_000:
                    await storm.one()

            async with asyncio.timeout(120):  # bounded even if something hangs
                await asyncio.gather(*(worker() for _ in range(12)))
            await assert_async_nothing_checked_out(pg, pool, name, size)
            return storm

    storm = asyncio.run(main())
    assert storm.started >= 10_000
    assert storm.landed["swallowed"] == 0
    for stage in ("acquiring", "holding", "returning", "completed"):
        assert storm.landed[stage] >= 500, storm.landed  # cancellations hit every stage


class Interrupt(BaseException):
    """Stands in for KeyboardInterrupt or SystemExit raised inside a worker's block."""


def thread_storm(pool: Any, rng: random.Random, count: int, seen: collections.Counter[str]) -> None:
    """Run `count` checkouts that fail, time out, get cancelled by the server or are interrupted."""
    for _ in range(count):
        mode = rng.randrange(5)
        timeout = rng.uniform(0.0005, 0.003) if mode == 1 else None
        try:
            with pool.connection(timeout) as conn:
                if mode == 2:  # the server cancels the statement mid-transaction
                    conn.execute("SET LOCAL statement_timeout = '1ms'")
                    conn.execute("SELECT pg_sleep(0.05)")
                conn.execute("SELECT 1")
                if mode == 3:
                    raise LookupError  # an application error inside the transaction
                if mode == 4:
                    raise Interrupt
            outcome = "completed"
        except (
            psycopg_pool.PoolTimeout,
            LookupError,
            Interrupt,
            psycopg.errors.QueryCanceled,
        ) as exc:
            outcome = type(exc).__name__
        seen[outcome] += 1


def test_threaded_random_failures_of_2000_checkouts_leak_nothing(pg: PgServer) -> None:
    """2,000 threaded checkouts that fail in every way leave nothing checked out anywhere."""
    name, size = "pgt-thread-storm", 4
    with sync_guarded(pg, name, size=size, max_waiting=16, timeout=1.0) as pool:
        counters = [collections.Counter[str]() for _ in range(8)]
        threads = [
            threading.Thread(target=thread_storm, args=(pool, random.Random(i), 250, counters[i]))
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        seen = sum(counters, collections.Counter[str]())
        assert seen.total() == 2000
        for outcome in ("completed", "LookupError", "Interrupt", "QueryCanceled"):
            assert seen[outcome] >= 100, seen
        assert seen["PsycopgPoolSaturated"] >= 5, seen  # deadlines from the tiny timeouts
        assert_nothing_checked_out(pg, pool, name, size)
