"""The two front ends over ``AdmissionCore``: threads (``Admission``) and asyncio (``AsyncAdmission``).

Each call takes a short lock, asks the core, delivers the ``Wake``s the core chose, and a
queued caller then waits outside the lock on its own ``threading.Event`` or
``asyncio.Future``. Only the waiting step differs between the two; everything else is the
shared ``_FrontEnd``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from poolwarden.guard.admission import (
    AdmissionConfig,
    AdmissionCore,
    AdmissionStats,
    Admit,
    Enqueue,
    Reject,
    Wake,
)
from poolwarden.guard.limits import ConcurrencyLimit

__all__ = ["Admission", "AsyncAdmission"]


class _Waiter:
    """Where a front end parks one queued request until the core settles it."""

    __slots__ = ("deadline", "outcome", "waiter")

    def __init__(self, waiter: int, deadline: float) -> None:
        self.waiter = waiter
        self.deadline = deadline
        self.outcome: Admit | Reject | None = None

    def notify(self) -> None:
        raise NotImplementedError


class _ThreadWaiter(_Waiter):
    __slots__ = ("event",)

    def __init__(self, waiter: int, deadline: float) -> None:
        super().__init__(waiter, deadline)
        self.event = threading.Event()

    def notify(self) -> None:
        self.event.set()


class _TaskWaiter(_Waiter):
    __slots__ = ("future", "thread")

    def __init__(self, waiter: int, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(waiter, deadline)
        self.future: asyncio.Future[None] = loop.create_future()
        self.thread = threading.get_ident()

    def notify(self) -> None:
        # A release may come from another thread (a sync worker, a finaliser): futures
        # are not thread-safe, so hop onto the waiter's loop. The outcome itself is
        # already recorded under the lock, so a late wake-up loses nothing.
        if threading.get_ident() == self.thread:
            self._wake()
        else:
            self.future.get_loop().call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if not self.future.done():  # cancelled with its task: nothing left to wake
            self.future.set_result(None)


_W = TypeVar("_W", bound=_Waiter)


class _FrontEnd(Generic[_W]):
    """The shared, flavour-free half of a front end: the lock, the core and the handoff."""

    def __init__(
        self,
        limit: ConcurrencyLimit,
        config: AdmissionConfig | None = None,
        *,
        name: str = "pool",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = AdmissionCore(limit, config, name=name)
        self.clock = clock
        # A plain threading lock even for asyncio: it is never held across an await or
        # a wait, only around one core call, so the loop is blocked for microseconds.
        self._lock = threading.Lock()
        self._waiters: dict[int, _W] = {}

    def release(self, admit: Admit, *, dropped: bool = False) -> None:
        """Free a slot taken by ``acquire``; ``dropped`` reports a timeout or overload error."""
        with self._lock:
            self._deliver(self.core.release(admit, self.clock(), dropped=dropped))

    def refresh(self) -> None:
        """Re-read the limit and settle the queue; call after changing the limit yourself."""
        with self._lock:
            self._deliver(self.core.poll(self.clock()))

    def stats(self) -> AdmissionStats:
        """Return a consistent snapshot of the limit, occupancy and counters."""
        with self._lock:
            return self.core.stats()

    def retry_after(self) -> float:
        """Return the current retry hint in seconds."""
        with self._lock:
            return self.core.retry_after()

    def _begin(
        self, timeout: float | None, park: Callable[[int, float], _W]
    ) -> Admit | Reject | _W:
        with self._lock:
            decision, wakes = self.core.request(self.clock(), timeout)
            self._deliver(wakes)
            if not isinstance(decision, Enqueue):
                return decision
            waiter = park(decision.waiter, decision.deadline)
            self._waiters[decision.waiter] = waiter
            return waiter

    def _deliver(self, wakes: list[Wake]) -> None:
        # Called under the lock: the outcome is recorded before the lock is released, so
        # a waiter that times out or is cancelled sees it and cannot lose a granted slot.
        for wake in wakes:
            waiter = self._waiters.pop(wake.waiter)
            waiter.outcome = wake.outcome
            waiter.notify()

    def _settle(self, waiter: _W) -> Admit | Reject:
        """Return the waiter's outcome; if none came before its deadline, expire it."""
        with self._lock:
            if waiter.outcome is None:
                del self._waiters[waiter.waiter]
                waiter.outcome = self.core.expire(waiter.waiter, self.clock())
            outcome = waiter.outcome
        assert outcome is not None, "a waiter left the core's queue without an outcome"
        return outcome

    def _abandon(self, waiter: _W) -> None:
        """Clean up after a caller that leaves with an exception (cancelled, interrupted)."""
        with self._lock:
            outcome = waiter.outcome
            if outcome is None:
                del self._waiters[waiter.waiter]
                self.core.cancel(waiter.waiter, self.clock())
            elif isinstance(outcome, Admit):
                # Granted in the instant before the cancellation landed: nobody else will
                # release this slot, so give it back now, without a hold-time sample.
                self._deliver(self.core.release(outcome, self.clock(), sample=False))


class Admission(_FrontEnd[_ThreadWaiter]):
    """Thread-safe blocking front end: a queued caller waits on its own Event."""

    def acquire(self, timeout: float | None = None) -> Admit | Reject:
        """Take a slot, waiting up to ``timeout`` (default: the config's) in the queue."""
        started = self._begin(timeout, _ThreadWaiter)
        if not isinstance(started, _ThreadWaiter):
            return started
        try:
            while (remaining := started.deadline - self.clock()) > 0.0:
                if started.event.wait(remaining):
                    break
        except BaseException:
            self._abandon(started)
            raise
        return self._settle(started)


class AsyncAdmission(_FrontEnd[_TaskWaiter]):
    """Asyncio front end: a queued task awaits its own Future; cancellation never leaks."""

    async def acquire(self, timeout: float | None = None) -> Admit | Reject:
        """Take a slot, waiting up to ``timeout`` (default: the config's) in the queue."""
        loop = asyncio.get_running_loop()
        started = self._begin(timeout, lambda w, d: _TaskWaiter(w, d, loop))
        if not isinstance(started, _TaskWaiter):
            return started
        try:
            remaining = started.deadline - self.clock()
            if remaining > 0.0:
                async with asyncio.timeout(remaining):
                    await started.future
        except TimeoutError:
            pass  # _settle decides: a grant may have landed just before the timeout
        except BaseException:
            self._abandon(started)
            raise
        return self._settle(started)
