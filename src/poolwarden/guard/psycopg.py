"""Adapter for psycopg_pool: `ConnectionPool` and `AsyncConnectionPool`.

``guard(pool, name="orders")`` returns a wrapper with the pool's own idiom,
``with pool.connection() as conn:`` (``async with`` for the async pool). Every other
attribute is the wrapped pool's. The guard admits the request first (bounded queue,
deadline, shedding), then takes the connection from the pool with the time left, so the
pool's own queue stays empty and a refusal costs microseconds instead of ``timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout, TooManyRequests

from poolwarden.errors import PoolSaturated
from poolwarden.guard._runtime import GuardOptions, PoolGuard, complete
from poolwarden.guard.metrics import PoolState

__all__ = ["GuardedAsyncConnectionPool", "GuardedConnectionPool", "PsycopgPoolSaturated"]

CT = TypeVar("CT")


class PsycopgPoolSaturated(PoolSaturated, PoolTimeout, TooManyRequests):
    """The guard refused a connection; also a psycopg_pool `PoolTimeout` and `TooManyRequests`."""


def _state_reader(pool: ConnectionPool[Any] | AsyncConnectionPool[Any]) -> Callable[[], PoolState]:
    def read() -> PoolState:
        stats = pool.get_stats()
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return PoolState(
            used=max(size - available, 0), idle=available, max=pool.max_size,
            idle_max=pool.max_size, idle_min=pool.min_size,
            pending=stats.get("requests_waiting", 0),
        )  # fmt: skip

    return read


def _time_connects(pool: Any, guard: PoolGuard) -> None:
    """Feed connection creation times to the create_time histogram.

    psycopg_pool has no hook around creating a connection, so wrap the pool's own
    ``_connect`` on the instance (its workers call ``self._connect()``). Connections opened
    before the guard was applied are not counted: guard the pool before opening it.
    """
    original = pool._connect
    observe = guard.metrics.observe_create
    if isinstance(pool, AsyncConnectionPool):

        async def timed_async(timeout: float | None = None) -> Any:
            started = time.monotonic()
            conn = await original(timeout)
            observe(time.monotonic() - started)
            return conn

        pool._connect = timed_async  # type: ignore[method-assign]  # see docstring
    else:

        def timed(timeout: float | None = None) -> Any:
            started = time.monotonic()
            conn = original(timeout)
            observe(time.monotonic() - started)
            return conn

        pool._connect = timed


class _Guarded:
    """What both wrappers share: the guard, delegation and representation."""

    def __init__(self, pool: Any, name: str | None, options: GuardOptions, asynchronous: bool):
        self._pool = pool
        self.guard = PoolGuard(
            name or pool.name, pool_max=pool.max_size, state=_state_reader(pool),
            error=PsycopgPoolSaturated, options=options, asynchronous=asynchronous,
        )  # fmt: skip
        _time_connects(pool, self.guard)

    @property
    def wrapped(self) -> Any:
        """The psycopg_pool pool behind the guard."""
        return self._pool

    def __getattr__(self, name: str) -> Any:
        if name == "_pool":  # not set yet (copy, pickle, failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self._pool, name)

    def __repr__(self) -> str:
        return f"<guarded {self._pool!r} limit={self.guard.current_limit()}>"


class GuardedConnectionPool(_Guarded, Generic[CT]):
    """A `ConnectionPool` behind the guard; use ``with pool.connection() as conn``."""

    def __init__(self, pool: ConnectionPool[Any], name: str | None, options: GuardOptions):
        super().__init__(pool, name, options, asynchronous=False)

    def connection(self, timeout: float | None = None) -> _Checkout:
        """Admit, then lend a connection for the block; raise `PsycopgPoolSaturated` if refused."""
        return _Checkout(self, timeout)

    def __enter__(self) -> GuardedConnectionPool[CT]:
        self._pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.guard.close()
        self._pool.__exit__(*exc)

    def close(self, timeout: float = 5.0) -> None:
        """Close the wrapped pool and stop the leak watchdog."""
        self.guard.close()
        self._pool.close(timeout)


class GuardedAsyncConnectionPool(_Guarded, Generic[CT]):
    """An `AsyncConnectionPool` behind the guard; use ``async with pool.connection() as conn``."""

    def __init__(self, pool: AsyncConnectionPool[Any], name: str | None, options: GuardOptions):
        super().__init__(pool, name, options, asynchronous=True)

    def connection(self, timeout: float | None = None) -> _AsyncCheckout:
        """Admit, then lend a connection for the block; cancellation never leaks it."""
        return _AsyncCheckout(self, timeout)

    async def _getconn(self, admit: Any, requested: float, timeout: float | None) -> Any:
        getconn: Callable[[float], Awaitable[Any]] = self._pool.getconn
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()
        try:
            conn = await getconn(self.guard.remaining(admit, timeout))
        except PoolTimeout as exc:
            raise self.guard.pool_timeout(admit, time.monotonic() - requested) from exc
        if task is not None and task.cancelling() > cancels:
            # psycopg_pool swallows a cancellation that lands while a returned connection
            # is being handed to this waiter (its wait_for on Python 3.11; psycopg #1401):
            # the caller would run on, deaf to its timeout or task group. Give the
            # connection back and deliver the cancellation it asked for.
            await complete(self._pool.putconn(conn))
            raise asyncio.CancelledError
        return conn

    async def __aenter__(self) -> GuardedAsyncConnectionPool[CT]:
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.guard.close()
        await self._pool.__aexit__(*exc)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the wrapped pool and stop the leak watchdog."""
        self.guard.close()
        await self._pool.close(timeout)


# The checkouts are classes rather than @contextmanager generators: a generator-based
# context manager costs about a microsecond more per checkout, on the hot path.


class _Checkout:
    """``with pool.connection() as conn``: admit, getconn, lease; putconn, then release."""

    __slots__ = ("_admit", "_conn", "_lease", "_owner", "_timeout")

    def __init__(self, owner: GuardedConnectionPool[Any], timeout: float | None) -> None:
        self._owner = owner
        self._timeout = timeout

    def __enter__(self) -> Any:
        owner, guard, timeout = self._owner, self._owner.guard, self._timeout
        requested = time.monotonic()
        admit = guard.admit(timeout)
        try:
            conn = owner._pool.getconn(guard.remaining(admit, timeout))
        except PoolTimeout as exc:
            error = guard.pool_timeout(admit, time.monotonic() - requested)
            guard.release(admit, None)
            raise error from exc
        except BaseException:
            guard.release(admit, None)
            raise
        self._admit, self._conn = admit, conn
        self._lease = guard.lease(admit, requested)
        try:
            conn.__enter__()
        except BaseException:
            self._finish()
            raise
        return conn

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._conn.__exit__(*exc_info)  # commit or roll back, as `with conn:` does
        finally:
            self._finish()

    def _finish(self) -> None:
        try:
            self._owner._pool.putconn(self._conn)
        finally:
            # Only after the connection is back: the next admitted request must find it.
            self._owner.guard.release(self._admit, self._lease)


class _AsyncCheckout:
    """``async with pool.connection() as conn``, safe against cancellation at every await."""

    __slots__ = ("_admit", "_conn", "_lease", "_owner", "_timeout")

    def __init__(self, owner: GuardedAsyncConnectionPool[Any], timeout: float | None) -> None:
        self._owner = owner
        self._timeout = timeout

    async def __aenter__(self) -> Any:
        owner, guard, timeout = self._owner, self._owner.guard, self._timeout
        requested = time.monotonic()
        admit = await guard.admit_async(timeout)
        try:
            conn = await owner._getconn(admit, requested, timeout)
        except BaseException:
            guard.release(admit, None)
            raise
        self._admit, self._conn = admit, conn
        self._lease = guard.lease(admit, requested)
        try:
            await conn.__aenter__()
        except BaseException:
            await self._finish()
            raise
        return conn

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._conn.__aexit__(*exc_info)
        finally:
            await self._finish()

    async def _finish(self) -> None:
        try:
            # A second cancellation while the connection goes back must not strand it
            # outside the pool: finish returning it, then let the cancel through.
            await complete(self._owner._pool.putconn(self._conn))
        finally:
            self._owner.guard.release(self._admit, self._lease)
