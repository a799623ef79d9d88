"""Adapter for asyncpg: `asyncpg.Pool`.

``guard(pool, name="orders")`` returns a wrapper with asyncpg's own idioms:
``async with pool.acquire() as conn:``, ``conn = await pool.acquire(timeout=...)`` with
``await pool.release(conn)``, and the pool's query shortcuts (``pool.fetch(...)``,
``pool.execute(...)`` ...), which acquire through the guard too. Every other attribute is
the wrapped pool's. The guard admits the request first (bounded queue, deadline,
shedding), then takes the connection from the pool with the time left: asyncpg's own
``acquire()`` would otherwise wait forever.

Cancellation never leaks a connection or a guard slot: the guard's queue forgets a
cancelled waiter, asyncpg puts its holder back when cancelled inside ``acquire()``, the
connection is recorded without an ``await`` in between once the pool hands it over, and
returning it is finished even if the task is cancelled meanwhile (``complete``); the slot
is given back once, after the connection is back in the pool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from poolwarden.errors import ConfigError, PoolSaturated
from poolwarden.guard._runtime import GuardOptions, Lease, PoolGuard, complete
from poolwarden.guard.admission import Admit
from poolwarden.guard.metrics import PoolState

__all__ = ["AsyncpgPoolSaturated", "GuardedAcquireContext", "GuardedPool", "default_pool_name"]


class AsyncpgPoolSaturated(PoolSaturated, TimeoutError):
    """The guard refused a connection; also the `TimeoutError` asyncpg's acquire raises."""


def default_pool_name(pool: asyncpg.Pool) -> str:
    """Name an unnamed pool ``host:port/database``, as OTel suggests; raise if unclear.

    Read from the pool's connect arguments (``host=``/``port=``/``database=`` keywords,
    then the DSN, then ``PGHOST``/``PGPORT``/``PGDATABASE``); never the password. A
    multi-host DSN, a service name or no host at all cannot be named this way: pass
    ``name=``.
    """
    args, kwargs = pool._connect_args, pool._connect_kwargs
    name = _name_from(args[0] if args else None, kwargs, os.environ)
    if name is None:
        raise ConfigError(
            "guard(): cannot tell which single server this asyncpg pool connects to (no "
            "host, several hosts or a service in its DSN and keywords); pass name=, e.g. "
            "guard(pool, name='orders-db')"
        )
    return name


def _name_from(dsn: str | None, kwargs: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """Return ``host:port/database`` from connect arguments, or None when ambiguous.

    Precedence as in asyncpg: keywords, then the DSN (its query last), then the
    environment; the database defaults to the user, the port to 5432.
    """
    url = urlsplit(dsn or "")
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    hostspec = url.netloc.rpartition("@")[2]
    if "," in hostspec or "service" in query:
        return None
    try:
        dsn_port = url.port
    except ValueError:  # not a number: asyncpg will refuse the DSN itself
        return None
    host = kwargs.get("host") or url.hostname or query.get("host") or env.get("PGHOST")
    port = kwargs.get("port") or dsn_port or query.get("port") or env.get("PGPORT") or 5432
    user = kwargs.get("user") or unquote(url.username or "") or query.get("user")
    database = (
        kwargs.get("database") or unquote(url.path.lstrip("/")) or query.get("dbname")
        or query.get("database") or env.get("PGDATABASE") or user or env.get("PGUSER")
    )  # fmt: skip
    if not isinstance(host, str) or "," in host or not isinstance(port, int | str):
        return None
    return f"{host}:{port}/{database}" if host and database else None


# asyncpg internals the adapter relies on (see docs/guard-asyncpg.md, "Caveats").
_INTERNALS = (
    ("Pool", "_connect"), ("Pool", "_connect_args"), ("Pool", "_connect_kwargs"),
    ("PoolConnectionProxy", "_holder"), ("PoolConnectionHolder", "_timeout"),
)  # fmt: skip


def _require_internals() -> None:
    """Fail when the guard is applied, not in the middle of an acquire, if asyncpg changed."""
    missing = [f"{cls}.{attr}" for cls, attr in _INTERNALS
               if not hasattr(getattr(asyncpg.pool, cls, None), attr)]  # fmt: skip
    if missing:
        raise ConfigError(
            f"guard(): asyncpg {asyncpg.__version__} has no {', '.join(missing)}, which the "
            "guard relies on (tested with asyncpg 0.32); pin asyncpg to a tested version"
        )


def _state_reader(pool: asyncpg.Pool) -> Callable[[], PoolState]:
    def read() -> PoolState:
        size, idle, most = pool.get_size(), pool.get_idle_size(), pool.get_max_size()
        # asyncpg does not expose its own waiters; behind the guard they are only the
        # admitted requests that find every connection held outside the guard.
        return PoolState(
            used=max(size - idle, 0), idle=idle, max=most, idle_max=most,
            idle_min=pool.get_min_size(), pending=0,
        )  # fmt: skip

    return read


def _time_connects(pool: asyncpg.Pool, guard: PoolGuard) -> None:
    """Feed connection creation times to the create_time histogram.

    asyncpg takes a ``connect=`` hook only in ``create_pool``; every new connection goes
    through the pool's ``_connect`` slot (``connection.connect`` or that hook), so wrap it
    on the instance. The ``init=`` hook runs after it and is not timed. Connections opened
    before the guard was applied are not counted: guard the pool before awaiting it.
    """
    original = pool._connect
    observe = guard.metrics.observe_create

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        conn = await original(*args, **kwargs)
        observe(time.monotonic() - started)
        return conn

    pool._connect = timed


def _through_guard(method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """Build a pool shortcut (``fetch``, ``execute`` ...) that acquires through the guard."""

    async def shortcut(self: GuardedPool, *args: Any, **kwargs: Any) -> Any:
        async with self.acquire() as conn:
            return await getattr(conn, method)(*args, **kwargs)

    shortcut.__name__, shortcut.__qualname__ = method, f"GuardedPool.{method}"
    shortcut.__doc__ = f"Run ``Connection.{method}`` on a connection acquired through the guard."
    return shortcut


class GuardedPool:
    """An asyncpg `Pool` behind the guard; use ``async with pool.acquire() as conn``."""

    def __init__(self, pool: asyncpg.Pool, name: str | None, options: GuardOptions) -> None:
        _require_internals()
        self._pool = pool
        self.guard = PoolGuard(
            name or default_pool_name(pool), pool_max=pool.get_max_size(),
            state=_state_reader(pool), error=AsyncpgPoolSaturated, options=options,
            asynchronous=True,
        )  # fmt: skip
        # Connections lent through the guard, keyed by asyncpg's per-checkout proxy:
        # `release` finds the admission to give back here, and pops it exactly once.
        self._leases: dict[Any, Lease] = {}
        _time_connects(pool, self.guard)

    @property
    def wrapped(self) -> asyncpg.Pool:
        """The asyncpg pool behind the guard."""
        return self._pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def __repr__(self) -> str:
        return f"<guarded {self._pool!r} limit={self.guard.current_limit()}>"

    def acquire(self, *, timeout: float | None = None) -> GuardedAcquireContext:
        """Admit, then lend a connection; await it or use it with ``async with``.

        ``timeout`` bounds the whole wait, the guard's queue included (default: the
        guard's ``timeout``). A refusal raises `AsyncpgPoolSaturated`.
        """
        return GuardedAcquireContext(self, timeout)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        """Return a connection to the pool, then its slot to the guard; cancellation-safe."""
        lease = self._leases.pop(connection, None)
        if lease is None:
            # Not lent by the guard, or already returned: asyncpg ignores or refuses it.
            await self._pool.release(connection, timeout=timeout)
            return
        try:
            # A cancellation while the connection goes back (reset, waiting for a
            # cancelled query) must not strand it: finish, then let the cancel through.
            await complete(self._pool.release(connection, timeout=timeout))
        finally:
            # Only after the connection is back: the next admitted request must find it.
            self.guard.release(lease.admit, lease)

    async def _acquire(self, timeout: float | None) -> Any:
        requested = time.monotonic()
        admit = await self.guard.admit_async(timeout)
        try:
            conn = await self._take(admit, requested, timeout)
        except BaseException:
            self.guard.release(admit, None)
            raise
        # No await between the pool handing the connection over and recording it, so no
        # cancellation can land in between and orphan it.
        self._leases[conn] = self.guard.lease(admit, requested)
        return conn

    async def _take(self, admit: Admit, requested: float, timeout: float | None) -> Any:
        try:
            conn = await self._pool.acquire(timeout=self.guard.remaining(admit, timeout))
        except TimeoutError as exc:  # asyncpg's own deadline, not a caller's cancellation
            raise self.guard.pool_timeout(admit, time.monotonic() - requested) from exc
        # asyncpg reuses the acquire timeout to bound the reset on release: give it the
        # caller's timeout, as without the guard, not the sliver the guard left over.
        conn._holder._timeout = timeout
        return conn

    execute = _through_guard("execute")
    executemany = _through_guard("executemany")
    fetch = _through_guard("fetch")
    fetchrow = _through_guard("fetchrow")
    fetchval = _through_guard("fetchval")
    fetchmany = _through_guard("fetchmany")
    copy_from_table = _through_guard("copy_from_table")
    copy_from_query = _through_guard("copy_from_query")
    copy_to_table = _through_guard("copy_to_table")
    copy_records_to_table = _through_guard("copy_records_to_table")

    def __await__(self) -> Generator[Any, None, GuardedPool]:
        return self._open().__await__()

    async def _open(self) -> GuardedPool:
        await self._pool
        return self

    async def __aenter__(self) -> GuardedPool:
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.guard.close()
        await self._pool.__aexit__(*exc)

    async def close(self) -> None:
        """Close the wrapped pool (it waits for lent connections) and stop the leak watchdog."""
        self.guard.close()
        await self._pool.close()

    def terminate(self) -> None:
        """Terminate the wrapped pool's connections and stop the leak watchdog."""
        self.guard.close()
        self._pool.terminate()


class GuardedAcquireContext:
    """What `GuardedPool.acquire` returns: awaitable, and an async context manager.

    Mirrors asyncpg's ``PoolAcquireContext``: ``await`` it for a connection you release
    yourself, or ``async with`` it to have the connection returned at the end of the block.
    """

    __slots__ = ("_conn", "_done", "_pool", "_timeout")

    def __init__(self, pool: GuardedPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        self._done = False

    async def __aenter__(self) -> Any:
        if self._conn is not None or self._done:
            raise asyncpg.InterfaceError("a connection is already acquired")
        self._conn = await self._pool._acquire(self._timeout)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        await self._pool.release(conn)

    def __await__(self) -> Generator[Any, None, Any]:
        self._done = True
        return self._pool._acquire(self._timeout).__await__()
