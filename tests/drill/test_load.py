"""Open-loop load: fixed-rate arrivals, latency from the scheduled start, every outcome counted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from tests.fixtures.pg import PgServer

from poolwarden.drill import LoadResult, LoadSecond, open_loop
from poolwarden.errors import PoolSaturated
from poolwarden.guard import guard


def saturated(exc: BaseException) -> str:
    """Count the guard's refusals as rejections, anything else as a failure."""
    return "rejected" if isinstance(exc, PoolSaturated) else "failed"


@contextlib.asynccontextmanager
async def guarded(pg: PgServer, app: str, size: int = 2, **options: Any) -> AsyncIterator[Any]:
    """Yield an open guarded `AsyncConnectionPool` of `size` on `pg`."""
    raw: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg.dsn, min_size=size, max_size=size, open=False, kwargs={"application_name": app}
    )
    pool = guard(raw, name=app, registry=CollectorRegistry(), **options)
    async with pool:
        await raw.wait(timeout=10)
        yield pool


def query(pool: Any) -> Any:
    """Return a request that runs a 10 ms query on a connection from `pool`."""

    async def request() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(0.01)")

    return request


def accounted(result: LoadResult) -> bool:
    """Every arrival has exactly one outcome."""
    done = result.served + result.rejected + result.failed_total + result.unserved
    return done == result.offered


def test_low_rate_on_a_real_pool_serves_everything(pg: PgServer) -> None:
    """At 20 requests/s a pool of 2 serving 10 ms queries serves every arrival, none refused."""

    async def main() -> LoadResult:
        async with guarded(pg, "load-low", max_waiting=10, timeout=2.0) as pool:
            return await open_loop(
                query(pool), rate=20, duration=1.0, drain=5.0, classify=saturated
            )

    result = asyncio.run(main())
    assert result.offered == 20
    assert (result.served, result.rejected, result.failed, result.unserved) == (20, 0, {}, 0)
    assert result.served_p50_s is not None
    assert result.served_p50_s >= 0.01
    assert result.rejected_p50_s is None
    assert result.served_rps > 0


def test_overload_on_a_guarded_pool_is_rejected_not_failed(pg: PgServer) -> None:
    """At 10x what a pool of 2 can serve, the guard's PoolSaturated refusals count as rejected."""

    async def main() -> LoadResult:
        async with guarded(pg, "load-over", max_waiting=2, timeout=0.05) as pool:
            return await open_loop(
                query(pool), rate=1000, duration=0.5, drain=5.0, classify=saturated
            )

    result = asyncio.run(main())
    assert result.offered == 500
    assert result.rejected > 0
    assert result.served > 0
    assert result.failed == {}
    assert result.unserved == 0
    assert accounted(result)
    assert result.rejected_p50_s is not None
    assert result.rejected_p99_s is not None


def test_latency_counts_from_the_scheduled_start() -> None:
    """A request that takes 50 ms has a p50 of at least 50 ms from its scheduled start."""

    async def request() -> None:
        await asyncio.sleep(0.05)

    result = asyncio.run(open_loop(request, rate=50, duration=0.4, drain=2.0))
    assert result.served == 20
    assert result.served_p50_s is not None
    assert result.served_p50_s >= 0.05


def test_a_stalled_client_cannot_hide_queueing() -> None:
    """Arrivals due while the loop was blocked for 100 ms carry that delay in their latency."""
    calls = 0

    async def request() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.1)  # blocks the event loop: the next arrivals launch late

    result = asyncio.run(open_loop(request, rate=100, duration=0.3, drain=2.0))
    assert result.served == 30
    assert result.served_p99_s is not None
    # Each request is instant; only the scheduled start makes the stall visible.
    assert result.served_p99_s >= 0.05


def test_requests_still_running_after_the_drain_are_cancelled_and_unserved() -> None:
    """Requests outlasting the drain are cancelled, counted unserved, and the run stays bounded."""
    cancelled = 0

    async def request() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    started = time.monotonic()
    result = asyncio.run(open_loop(request, rate=20, duration=0.25, drain=0.2))
    assert time.monotonic() - started < 2.0
    assert result.offered == 5
    assert result.unserved == 5
    assert cancelled == 5
    assert (result.served, result.rejected, result.failed) == (0, 0, {})
    assert result.served_p50_s is None
    assert result.rejected_p99_s is None


def test_outcomes_are_bucketed_by_second_with_failures_named() -> None:
    """The timeline has one bucket per second, and failures are counted by exception class."""
    calls = 0

    async def request() -> None:
        nonlocal calls
        calls += 1
        mine = calls  # read before the await: other requests bump `calls` meanwhile
        await asyncio.sleep(0.01)
        if mine % 4 == 0:
            raise PoolSaturated("full")
        if mine % 4 == 1:
            raise ValueError("bad")

    result = asyncio.run(open_loop(request, rate=20, duration=2.0, drain=2.0, classify=saturated))
    assert result.offered == 40
    assert (result.served, result.rejected, result.failed) == (20, 10, {"ValueError": 10})
    assert [b.second for b in result.timeline] == list(range(len(result.timeline)))
    assert len(result.timeline) >= 2
    assert sum(b.served for b in result.timeline) == 20
    assert sum(b.rejected for b in result.timeline) == 10
    assert sum(b.failed for b in result.timeline) == 10
    first, second = result.timeline[0], result.timeline[1]
    assert isinstance(first, LoadSecond)
    assert first.served > 0
    assert second.served > 0
    assert accounted(result)


def test_without_a_classifier_every_exception_is_a_failure() -> None:
    """With no classifier, even a PoolSaturated counts as failed, not rejected."""

    async def request() -> None:
        raise PoolSaturated("full")

    result = asyncio.run(open_loop(request, rate=10, duration=0.3, drain=1.0))
    assert (result.rejected, result.failed) == (0, {"PoolSaturated": 3})
