"""Admission control in front of a connection pool: decide fast, wait outside the lock.

``AdmissionCore`` is a pure state machine: an in-flight limit read from a
``ConcurrencyLimit``, a bounded wait queue with a deadline per request, FIFO service that
turns LIFO while overloaded, and CoDel-style shedding of requests that waited too long.
Every method takes ``now`` (monotonic seconds) and returns its decision as a value
(``Admit``, ``Enqueue``, ``Reject``, ``Wake``); it does no I/O, imports no database
library and never blocks.

``Admission`` (threads) and ``AsyncAdmission`` (asyncio), in ``_waiting.py``, are thin
front ends over the same core: each call takes a short lock, asks the core, delivers the ``Wake``s the core
chose, and a queued caller then waits outside the lock on its own ``threading.Event`` or
``asyncio.Future``. Parameters and defaults: ``docs/guard-admission.md``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, TypeAlias

from poolwarden.errors import ConfigError
from poolwarden.guard.limits import ConcurrencyLimit

__all__ = [
    "AdmissionConfig",
    "AdmissionCore",
    "AdmissionDecision",
    "AdmissionStats",
    "Admit",
    "Enqueue",
    "Reject",
    "RejectReason",
    "Wake",
]

_log = logging.getLogger("poolwarden.guard")

RejectReason: TypeAlias = Literal["queue_full", "deadline", "shed"]
_REASONS: tuple[RejectReason, ...] = ("queue_full", "deadline", "shed")

_REMEDY: dict[RejectReason, str] = {
    "queue_full": "raise max_waiting or add capacity",
    "deadline": "raise the timeout or add capacity",
    "shed": "add capacity",
}

# Weight of each new hold time in the moving average behind retry_after.
_HOLD_WEIGHT = 0.1


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Queue, deadline, CoDel and retry-hint settings; each default is argued in the docs."""

    max_waiting: int = 100
    timeout: float = 1.0
    codel_target: float = 0.005
    codel_interval: float = 0.1
    adaptive_lifo: bool = True
    shed: bool = True
    retry_after_min: float = 0.05
    retry_after_max: float = 10.0

    def __post_init__(self) -> None:
        if self.max_waiting < 0:
            raise ConfigError(f"admission: max_waiting={self.max_waiting} must be 0 or more")
        for field in ("timeout", "codel_target", "codel_interval", "retry_after_min"):
            value = getattr(self, field)
            if not 0.0 < value < math.inf:
                raise ConfigError(f"admission: {field}={value} must be a positive number")
        if self.codel_target >= self.codel_interval:
            raise ConfigError(
                f"admission: codel_target={self.codel_target} must be below "
                f"codel_interval={self.codel_interval} (folly defaults: 0.005 and 0.1)"
            )
        if not self.retry_after_min <= self.retry_after_max < math.inf:
            raise ConfigError(
                f"admission: retry_after_max={self.retry_after_max} must be a number "
                f"at least retry_after_min={self.retry_after_min}"
            )


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    """A consistent snapshot of one admission; every field is always present."""

    name: str
    limit: int
    in_flight: int
    waiting: int
    max_waiting: int
    overloaded: bool
    requests: int
    admitted: int
    queued: int
    rejected_queue_full: int
    rejected_deadline: int
    rejected_shed: int
    cancelled: int
    released: int
    mean_hold_s: float

    @property
    def rejected(self) -> int:
        """Return the rejections of every reason together."""
        return self.rejected_queue_full + self.rejected_deadline + self.rejected_shed


@dataclass(frozen=True, slots=True)
class Admit:
    """Run now: the slot is held until ``release`` is called with this value."""

    ticket: int
    granted_at: float
    waited: float
    inflight: int


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Wait until ``deadline`` (monotonic seconds); a ``Wake`` for ``waiter`` settles it."""

    waiter: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Reject:
    """Fail fast: why, when to retry (seconds) and the numbers at that moment."""

    reason: RejectReason
    retry_after: float
    waited: float
    snapshot: AdmissionStats

    def describe(self) -> str:
        """Return the message an adapter puts in its error: symptom, numbers, remedy."""
        s = self.snapshot
        if self.reason == "queue_full":
            symptom = f"wait queue full (max_waiting={s.max_waiting})"
        elif self.reason == "deadline":
            symptom = f"no connection within the deadline (waited {self.waited:.3f} s)"
        else:
            symptom = (
                f"shed after waiting {self.waited * 1000:.1f} ms while overloaded "
                "(queue delay above codel_target for a whole codel_interval)"
            )
        return (
            f"pool {s.name!r}: {symptom}, limit {s.in_flight}/{s.limit} in use, "
            f"{s.waiting} waiting; retry in {self.retry_after:.2f} s, or "
            f"{_REMEDY[self.reason]} - see 'poolwarden plan'"
        )


@dataclass(frozen=True, slots=True)
class Wake:
    """Settle the queued request ``waiter`` with ``outcome``."""

    waiter: int
    outcome: Admit | Reject


AdmissionDecision: TypeAlias = Admit | Enqueue | Reject


class AdmissionCore:
    """Decide admissions; pure, clock-free and not thread-safe (callers serialise).

    Invariant: when requests are waiting, every slot is taken (``in_flight >= limit``),
    so a new request never jumps the queue. Deliver every returned ``Wake``.
    """

    def __init__(
        self, limit: ConcurrencyLimit, config: AdmissionConfig | None = None, *, name: str = "pool"
    ) -> None:
        self.limit = limit
        self.config = AdmissionConfig() if config is None else config
        self.name = name
        # waiter id -> (enqueued_at, deadline), oldest first: FIFO pops the front,
        # LIFO the back, cancellation deletes from the middle in O(1).
        self._queue: OrderedDict[int, tuple[float, float]] = OrderedDict()
        self._held: set[int] = set()
        self._next_id = 0
        self._overloaded = False
        self._min_delay = math.inf
        self._interval_end = -math.inf
        self._mean_hold: float | None = None
        self._requests = self._admitted = self._queued = 0
        self._cancelled = self._released = 0
        self._rejected: dict[RejectReason, int] = dict.fromkeys(_REASONS, 0)

    @property
    def overloaded(self) -> bool:
        """Return True while CoDel judges the queue standing (LIFO and shedding on)."""
        return self._overloaded

    def request(
        self, now: float, timeout: float | None = None
    ) -> tuple[AdmissionDecision, list[Wake]]:
        """Decide for a new request: admit, enqueue until ``now + timeout``, or reject."""
        self._requests += 1
        wakes = self._dispatch(now) if self._queue else []
        if len(self._held) < self.limit.limit:  # the queue is empty: _dispatch filled slots
            self._tick(now)
            self._min_delay = 0.0  # admitted without queueing: the queue emptied
            return self._grant(self._new_id(), now, now), wakes
        wait = self.config.timeout if timeout is None else timeout
        if not wait < math.inf:
            raise ValueError(f"timeout={wait} must be a finite number of seconds")
        if wait <= 0.0:  # would never have queued: the deadline, not the queue, refused it
            return self._reject("deadline", 0.0), wakes
        if len(self._queue) >= self.config.max_waiting:
            wakes += self._sweep(now)  # overdue or shed waiters may make room
            if len(self._queue) >= self.config.max_waiting:
                return self._reject("queue_full", 0.0), wakes
        waiter = self._new_id()
        self._queue[waiter] = (now, now + wait)
        self._queued += 1
        return Enqueue(waiter, now + wait), wakes

    def release(
        self, admit: Admit, now: float, *, dropped: bool = False, sample: bool = True
    ) -> list[Wake]:
        """Free ``admit``'s slot, feed its hold time to the limit, and hand the slot on."""
        try:
            self._held.remove(admit.ticket)
        except KeyError:
            raise ValueError(
                f"pool {self.name!r}: ticket {admit.ticket} is not held; it was released "
                "twice or belongs to another admission"
            ) from None
        self._released += 1
        if sample:
            hold = max(0.0, now - admit.granted_at)
            mean = self._mean_hold
            self._mean_hold = hold if mean is None else mean + _HOLD_WEIGHT * (hold - mean)
            self.limit.on_sample(hold, admit.inflight, dropped)
        return self._dispatch(now) if self._queue else []

    def expire(self, waiter: int, now: float) -> Reject | None:
        """Reject a queued waiter whose own wait ran out; None if it was already settled."""
        entry = self._queue.pop(waiter, None)
        if entry is None:
            return None
        return self._reject("deadline", now - entry[0])

    def cancel(self, waiter: int, now: float) -> bool:
        """Forget a queued waiter whose caller went away; False if it was already settled."""
        if self._queue.pop(waiter, None) is None:
            return False
        self._cancelled += 1
        return True

    def poll(self, now: float) -> list[Wake]:
        """Expire overdue waiters, shed if overloaded, and fill slots (after a limit change)."""
        wakes = self._sweep(now)
        wakes += self._dispatch(now)
        return wakes

    def retry_after(self) -> float:
        """Return seconds until a retry may succeed: (waiting + 1) x mean hold / limit."""
        cfg = self.config
        hold = cfg.codel_interval if self._mean_hold is None else self._mean_hold
        estimate = (len(self._queue) + 1) * hold / max(1, self.limit.limit)
        return min(max(estimate, cfg.retry_after_min), cfg.retry_after_max)

    def stats(self) -> AdmissionStats:
        """Return a snapshot of the limit, the occupancy and the counters."""
        return AdmissionStats(
            name=self.name,
            limit=self.limit.limit,
            in_flight=len(self._held),
            waiting=len(self._queue),
            max_waiting=self.config.max_waiting,
            overloaded=self._overloaded,
            requests=self._requests,
            admitted=self._admitted,
            queued=self._queued,
            rejected_queue_full=self._rejected["queue_full"],
            rejected_deadline=self._rejected["deadline"],
            rejected_shed=self._rejected["shed"],
            cancelled=self._cancelled,
            released=self._released,
            mean_hold_s=0.0 if self._mean_hold is None else self._mean_hold,
        )

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _grant(self, ticket: int, enqueued_at: float, now: float) -> Admit:
        self._held.add(ticket)
        self._admitted += 1
        return Admit(ticket, now, now - enqueued_at, len(self._held))

    def _reject(self, reason: RejectReason, waited: float) -> Reject:
        self._rejected[reason] += 1
        return Reject(reason, self.retry_after(), waited, self.stats())

    def _tick(self, now: float) -> None:
        """Close the CoDel interval if it is over: overloaded iff its min delay > target."""
        if now < self._interval_end:
            return
        delay = self._min_delay
        if delay == math.inf:  # nothing was served: the queue's age is the standing delay
            delay = now - next(iter(self._queue.values()))[0] if self._queue else 0.0
        overloaded = delay > self.config.codel_target
        if overloaded != self._overloaded:
            _log.debug(
                "pool %r: overloaded=%s (min queue delay %.4f s)", self.name, overloaded, delay
            )
        self._overloaded = overloaded
        self._min_delay = math.inf
        self._interval_end = now + self.config.codel_interval

    def _dispatch(self, now: float) -> list[Wake]:
        """Shed stale waiters if overloaded, then give free slots to the next waiters."""
        self._tick(now)
        wakes: list[Wake] = []
        if self._overloaded and self.config.shed:
            self._shed(now, wakes)
        lifo = self._overloaded and self.config.adaptive_lifo
        limit = self.limit.limit
        while self._queue and len(self._held) < limit:
            # CoDel's sample is the age of the oldest waiter, which under FIFO is the
            # sojourn of the one served; under LIFO the newest would hide the backlog.
            oldest = next(iter(self._queue.values()))[0]
            waiter, (enqueued_at, deadline) = self._queue.popitem(last=lifo)
            if deadline <= now:
                wakes.append(Wake(waiter, self._reject("deadline", now - enqueued_at)))
                continue
            self._min_delay = min(self._min_delay, now - oldest)
            wakes.append(Wake(waiter, self._grant(waiter, enqueued_at, now)))
        return wakes

    def _shed(self, now: float, wakes: list[Wake]) -> None:
        # Shed from the oldest end: under LIFO these would be served last, if ever, and
        # their callers are better told now (folly sloughs delays over 2 x target).
        slough = 2.0 * self.config.codel_target
        while self._queue:
            waiter, (enqueued_at, _) = next(iter(self._queue.items()))
            if now - enqueued_at <= slough:
                return
            del self._queue[waiter]
            wakes.append(Wake(waiter, self._reject("shed", now - enqueued_at)))

    def _sweep(self, now: float) -> list[Wake]:
        self._tick(now)
        wakes: list[Wake] = []
        overdue = [w for w, (_, deadline) in self._queue.items() if deadline <= now]
        for waiter in overdue:
            enqueued_at, _ = self._queue.pop(waiter)
            wakes.append(Wake(waiter, self._reject("deadline", now - enqueued_at)))
        if self._overloaded and self.config.shed:
            self._shed(now, wakes)
        return wakes
