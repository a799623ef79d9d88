"""Adapter for SQLAlchemy: `Engine` and `AsyncEngine` over a `QueuePool`.

``engine = guard(create_engine(url), name="orders")`` guards the engine *in place* and
returns it: ``with engine.connect()``, ``with engine.begin()``, ``Session(bind=engine)``
and, for an `AsyncEngine`, ``async with engine.connect()`` and ``AsyncSession(engine)``
all keep working, and so does every session or option engine bound to it before.

Every path to a connection in SQLAlchemy ends in ``Pool.connect()`` (``Engine.connect``,
``Engine.raw_connection``, reconnecting after an invalidation, ORM sessions, and the async
engine from inside its greenlet), and every way back ends in ``Pool._do_return_conn()``
(close, context exit, invalidation, detach, garbage collection). So the engine's pool
becomes a guarded subclass of its own class: ``connect`` admits first, and the record's
return releases the slot, exactly once. Design notes: docs/guard-sqlalchemy.md.
"""

from __future__ import annotations

import contextvars
import functools
import gc
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from poolwarden.errors import ConfigError, PoolSaturated
from poolwarden.guard._runtime import GuardOptions, Lease, PoolGuard
from poolwarden.guard.admission import Admit
from poolwarden.guard.metrics import PoolState

__all__ = ["SQLAlchemyPoolSaturated", "guard_engine", "guard_of"]

_log = logging.getLogger("poolwarden.guard")

E = TypeVar("E", Engine, AsyncEngine)

# ``await_`` since SQLAlchemy 2.1, ``await_only`` before (deprecated from 2.2).
_await: Callable[[Awaitable[Any]], Any] = getattr(sa_util, "await_", None) or sa_util.await_only


class SQLAlchemyPoolSaturated(PoolSaturated, sa_exc.TimeoutError):
    """The guard refused a connection; also a `sqlalchemy.exc.TimeoutError` (code 3o7r)."""


# The seconds left for the pool's own wait, for the one checkout running in this context
# (a thread, or an asyncio task: SQLAlchemy's greenlets run in their task's context).
_pool_wait: contextvars.ContextVar[tuple[QueuePool, float] | None] = contextvars.ContextVar(
    "poolwarden_sqlalchemy_pool_wait", default=None
)


class _GcWatch:
    """Know whether the garbage collector is running, and in which thread.

    SQLAlchemy returns a connection whose owner was garbage-collected from a weakref
    callback, i.e. in the middle of whatever the collecting thread was doing - possibly
    holding the admission lock (a plain, non-reentrant Lock). Releasing inline there
    would deadlock; SQLAlchemy's own queue uses an RLock for the same reason. Releases
    that arrive during a collection go to ``queue.SimpleQueue`` (whose ``put`` is safe to
    call from a finaliser) and a worker thread performs them.
    """

    def __init__(self) -> None:
        self.thread: int | None = None
        self._releases: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def install(self) -> None:
        """Start watching collections and the worker; call outside any finaliser."""
        with self._lock:
            if self._worker is None:
                gc.callbacks.append(self._on_gc)
                self._worker = threading.Thread(
                    target=self._work, name="poolwarden-sqlalchemy-gc", daemon=True
                )
                self._worker.start()

    def collecting(self) -> bool:
        """Return True if this thread is inside a garbage collection now."""
        return self.thread == threading.get_ident()

    def defer(self, release: Callable[[], None]) -> None:
        """Run ``release`` on the worker thread."""
        self._releases.put(release)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        self.thread = threading.get_ident() if phase == "start" else None

    def _work(self) -> None:
        while True:
            release = self._releases.get()
            try:
                release()
            except Exception:
                _log.exception("poolwarden: releasing a garbage-collected connection failed")


_gc_watch = _GcWatch()


@dataclass(slots=True, eq=False)
class _StateReader:
    """Read the engine's pool as it is now (``engine.dispose()`` swaps in a recreated one)."""

    engine: Engine
    pool_max: int

    def read(self) -> PoolState:
        """Return the pool's numbers; SQLAlchemy keeps no count of its waiters."""
        pool = cast(QueuePool, self.engine.pool)
        return PoolState(
            used=pool.checkedout(), idle=pool.checkedin(), max=self.pool_max,
            idle_max=pool.size(), idle_min=0, pending=0,
        )  # fmt: skip


@dataclass(slots=True, eq=False)
class _Shared:
    """What a guarded pool and the pools ``engine.dispose()`` recreates from it share."""

    guard: PoolGuard
    asynchronous: bool
    leases: dict[ConnectionPoolEntry, Lease] = field(default_factory=dict)

    def admit(self) -> Admit:
        """Take a slot; for an async engine, await it on the event loop from the greenlet."""
        if self.asynchronous:
            return cast(Admit, _await(self.guard.admit_async()))
        return self.guard.admit()

    def lease(self, admit: Admit, requested: float) -> Lease:
        """Record the checkout, with the caller's code as its call site."""
        if self.asynchronous:
            # Inside SQLAlchemy's greenlet the stack ends at the greenlet: record the
            # checkout from a coroutine the task itself runs, whose stack reaches the
            # application's code. It never suspends, so no cancellation can land here.
            return cast(Lease, _await(_lease_in_task(self.guard, admit, requested)))
        return self.guard.lease(admit, requested)

    def release(self, lease: Lease) -> None:
        """Give a returned connection's slot back (later, if the collector is running)."""
        if _gc_watch.collecting():
            _gc_watch.defer(functools.partial(self.guard.release, lease.admit, lease))
        else:
            self.guard.release(lease.admit, lease)


async def _lease_in_task(guard: PoolGuard, admit: Admit, requested: float) -> Lease:
    """Record a checkout from the task's own stack (see `_Shared.lease`)."""
    return guard.lease(admit, requested)


class _GuardedPool(QueuePool):
    """The guarded variant of a QueuePool class; `_guarded_class` mixes it into the real one."""

    _poolwarden: _Shared

    @property  # QueuePool sets a plain attribute, which this setter stores; see _checkout
    def _timeout(self) -> float:
        wait = _pool_wait.get()
        if wait is not None and wait[0] is self:
            return wait[1]
        return cast(float, self.__dict__["_timeout"])

    @_timeout.setter
    def _timeout(self, value: float) -> None:
        self.__dict__["_timeout"] = value

    def connect(self) -> PoolProxiedConnection:
        """Admit, then check a connection out; raise `SQLAlchemyPoolSaturated` if refused."""
        shared = self._poolwarden
        requested = time.monotonic()
        admit = shared.admit()
        conn: PoolProxiedConnection | None = None
        try:
            conn = self._checkout(admit, requested)
            record = cast(ConnectionPoolEntry, conn._connection_record)
            shared.leases[record] = shared.lease(admit, requested)
        except BaseException:
            try:
                if conn is not None:  # not registered yet: goes back without a release
                    conn.close()
            finally:
                shared.guard.release(admit, None)
            raise
        return conn

    def _checkout(self, admit: Admit, requested: float) -> PoolProxiedConnection:
        # QueuePool._do_get reads self._timeout; the property above hands it the time the
        # guard has left for this request, without touching state other threads share.
        token = _pool_wait.set((self, self._poolwarden.guard.remaining(admit)))
        try:
            return super().connect()
        except sa_exc.TimeoutError as exc:
            guard = self._poolwarden.guard
            raise guard.pool_timeout(admit, time.monotonic() - requested) from exc
        finally:
            _pool_wait.reset(token)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        # Forget the lease before the record is back in the queue: from then on another
        # checkout may take this very record and register a lease of its own.
        lease = self._poolwarden.leases.pop(record, None)
        try:
            super()._do_return_conn(record)
        finally:
            # After the put, so the request admitted next finds the connection idle.
            if lease is not None:
                self._poolwarden.release(lease)

    def recreate(self) -> QueuePool:
        """Recreate the pool (``engine.dispose()``) with the same guard."""
        pool = super().recreate()
        _adopt(pool, self._poolwarden)
        return pool


_guarded_classes: dict[type[QueuePool], type[_GuardedPool]] = {}


def _guarded_class(cls: type[QueuePool]) -> type[_GuardedPool]:
    """Return the guarded variant of ``cls`` (QueuePool, AsyncAdaptedQueuePool, a subclass)."""
    guarded = _guarded_classes.get(cls)
    if guarded is None:
        # Keep SQLAlchemy's logger name (echo_pool, "sqlalchemy.pool" logging config).
        namespace = {
            "__module__": cls.__module__,
            "_sqla_logger_namespace": f"{cls.__module__}.{cls.__name__}",
        }
        made = type(f"Guarded{cls.__name__}", (_GuardedPool, cls), namespace)
        guarded = _guarded_classes.setdefault(cls, made)
    return guarded


def _adopt(pool: QueuePool, shared: _Shared) -> None:
    """Turn ``pool`` into its guarded variant, in place, and time its connection creation."""
    if not isinstance(pool, _GuardedPool):
        # In place rather than a new pool: listeners, references held by the app and the
        # connections checked out already all keep pointing at the same object.
        pool.__class__ = _guarded_class(type(pool))
    cast(_GuardedPool, pool)._poolwarden = shared
    _time_creation(pool, shared.guard)


def _time_creation(pool: QueuePool, guard: PoolGuard) -> None:
    """Feed the driver's connect time (every new or re-made connection) to create_time.

    SQLAlchemy has no event before a connection is made (``connect`` fires after, and
    after the dialect's first-connect setup), so wrap the pool's creator call.
    """
    create = pool._invoke_creator
    observe = guard.metrics.observe_create

    def timed(rec: ConnectionPoolEntry) -> DBAPIConnection:
        started = time.monotonic()
        connection = create(rec)
        observe(time.monotonic() - started)
        return connection

    pool._invoke_creator = timed


def _pool_max(pool: QueuePool, options: GuardOptions) -> int:
    """Return the most connections the pool may hold: size + max_overflow, or the limit."""
    size, overflow = pool.size(), pool._max_overflow  # no public accessor for the latter
    if overflow != -1:
        return size + overflow
    # Unlimited overflow: the guard becomes the bound - the explicit limit, else pool_size.
    if options.limit is not None:
        return options.limit
    if size < 1:
        raise ConfigError(
            "guard(): the engine's pool is unbounded (pool_size=0), so the guard cannot pick a "
            "limit; pass limit=N (at most the connections the server can give this process)"
        )
    return size


def _default_name(engine: Engine) -> str:
    """Name an unnamed pool as OTel suggests: server.address:server.port/db.namespace."""
    url = engine.url
    port = url.port or (5432 if url.get_backend_name() == "postgresql" else None)
    server = url.host or "localhost"
    return f"{server}:{port}/{url.database or ''}" if port else f"{server}/{url.database or ''}"


def guard_engine(engine: E, name: str | None, options: GuardOptions) -> E:
    """Put ``engine``'s pool behind the guard, in place, and return the same engine.

    ``engine`` is an `Engine` or an `AsyncEngine` whose pool is a `QueuePool` (the default
    of ``create_engine``) or `AsyncAdaptedQueuePool` (of ``create_async_engine``).
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    pool = sync_engine.pool
    if isinstance(pool, _GuardedPool):
        raise ConfigError(
            f"guard(): this engine is already guarded as pool {pool._poolwarden.guard.name!r}; "
            "guard each engine once"
        )
    if not isinstance(pool, QueuePool):
        raise ConfigError(
            f"guard(): the engine uses {type(pool).__name__}, which keeps no bounded set of "
            "connections to guard; use the default QueuePool (AsyncAdaptedQueuePool for "
            "create_async_engine) with pool_size and max_overflow"
        )
    reader = _StateReader(sync_engine, _pool_max(pool, options))
    asynchronous = sync_engine.dialect.is_async
    guard = PoolGuard(
        name or _default_name(sync_engine), pool_max=reader.pool_max, state=reader.read,
        error=SQLAlchemyPoolSaturated, options=options, asynchronous=asynchronous,
    )  # fmt: skip
    shared = _Shared(guard, asynchronous)
    _gc_watch.install()
    _adopt(pool, shared)
    return engine


def guard_of(engine: Engine | AsyncEngine) -> PoolGuard:
    """Return the `PoolGuard` of a guarded engine (its snapshot, limit and metrics)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    pool = sync_engine.pool
    if not isinstance(pool, _GuardedPool):
        raise ConfigError("guard_of(): this engine is not guarded; call guard(engine, name=...)")
    return pool._poolwarden.guard
