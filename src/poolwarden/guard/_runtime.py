"""The part of the guard every adapter shares: admit, lease, release, metrics, leaks.

An adapter wraps one library's pool. For each acquire it asks `PoolGuard.admit` (or
`admit_async`) for a slot — a refusal raises the adapter's `PoolSaturated` subclass at
once — then takes a connection from the wrapped pool with the time left
(`remaining`), calls `lease` when it has one, and `release` when it goes back, on every
path, cancellation included. Everything here is O(1) and holds locks for microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from prometheus_client import CollectorRegistry

from poolwarden.errors import ConfigError, PoolSaturated
from poolwarden.guard._waiting import Admission, AsyncAdmission
from poolwarden.guard.admission import AdmissionConfig, AdmissionStats, Admit, Reject, RejectReason
from poolwarden.guard.leaks import Checkout, LeakTracker
from poolwarden.guard.limits import AIMDLimit, ConcurrencyLimit, FixedLimit, Gradient2Limit
from poolwarden.guard.metrics import PoolMetrics, PoolState, collector_for

__all__ = ["GuardOptions", "GuardSnapshot", "Lease", "PoolGuard", "complete"]

_log = logging.getLogger("poolwarden.guard")

T = TypeVar("T")
LimitAlgorithm = Literal["fixed", "aimd", "gradient2"]


@dataclass(frozen=True, slots=True)
class GuardOptions:
    """Every guard option with its default; see docs/guard.md for the reasoning."""

    limit: int | None = None  # in-flight limit; default: the pool's max size
    algorithm: LimitAlgorithm = "fixed"
    min_limit: int = 1
    max_waiting: int = 100
    timeout: float = 1.0  # seconds a request may wait for a connection, queue included
    adaptive_lifo: bool = True
    shed: bool = True
    codel_target: float = 0.005
    codel_interval: float = 0.1
    leak_threshold: float | None = None  # default: 2 x timeout
    leak_stack: bool = False
    registry: CollectorRegistry | None = field(default=None, compare=False)
    budget_cap: int | None = None  # set by the budget check: never exceed this many

    def admission(self) -> AdmissionConfig:
        """Return the admission settings these options describe."""
        return AdmissionConfig(
            max_waiting=self.max_waiting, timeout=self.timeout,
            codel_target=self.codel_target, codel_interval=self.codel_interval,
            adaptive_lifo=self.adaptive_lifo, shed=self.shed,
        )  # fmt: skip

    def make_limit(self, pool_max: int) -> ConcurrencyLimit:
        """Build the limit algorithm, clamped to [min_limit, pool max] and the budget."""
        ceiling = pool_max if self.limit is None else min(self.limit, pool_max)
        if ceiling < 1:
            raise ConfigError(f"guard: limit={self.limit} must be at least 1")
        if self.algorithm == "fixed":
            return FixedLimit(ceiling, budget=self.budget_cap)
        floor = min(self.min_limit, ceiling)
        if self.algorithm == "aimd":
            return AIMDLimit(ceiling, min_limit=floor, budget=self.budget_cap)
        if self.algorithm == "gradient2":
            return Gradient2Limit(ceiling, min_limit=floor, budget=self.budget_cap)
        raise ConfigError(
            f"guard: algorithm={self.algorithm!r} is not one of 'fixed', 'aimd', 'gradient2'"
        )


@dataclass(frozen=True, slots=True)
class GuardSnapshot:
    """The guard and its pool at one moment: what `PoolSaturated.snapshot` carries."""

    pool: str
    admission: AdmissionStats
    state: PoolState
    leaks_outstanding: int


@dataclass(slots=True, eq=False)
class Lease:
    """A connection handed out under an admission; `release` closes it."""

    admit: Admit
    checkout: Checkout
    leased_at: float


async def complete(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` to the end even if we are cancelled meanwhile, then re-raise.

    Returning a connection to its pool must not be cut short by a cancellation (a client
    disconnect, a task group tearing down): half-returned connections are how asyncio
    code leaks them. A cancellation can only land where the work suspends, so run it
    inline first; most returns finish without suspending and cost no task at all. If it
    does suspend, hand the rest to a task, shield it, keep waiting for it, and deliver
    the cancellation once it is done.
    """
    steps = awaitable.__await__()
    try:
        first = steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    task = asyncio.ensure_future(_Resume(steps, first))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # the work itself was cancelled
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return cast(T, result)


class _Resume:
    """Go on driving a coroutine that already ran up to its first suspension.

    It re-yields what the coroutine waits on (the Task then waits for it as usual) and
    passes results and exceptions back in, as ``yield from`` would have done.
    """

    __slots__ = ("_first", "_steps")

    def __init__(self, steps: Generator[Any, Any, Any], first: Any) -> None:
        self._steps = steps
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        steps, pending = self._steps, self._first
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # thrown in by the task: pass it on
                try:
                    pending = steps.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = steps.send(sent)
                except StopIteration as done:
                    return done.value


class PoolGuard:
    """Admission, limit, metrics and leak tracking for one pool; adapters drive it."""

    def __init__(
        self,
        name: str,
        *,
        pool_max: int,
        state: Callable[[], PoolState],
        error: type[PoolSaturated],
        options: GuardOptions,
        asynchronous: bool,
    ) -> None:
        if not name:
            raise ConfigError("guard: name= is required; it labels the pool's metrics and errors")
        self._name = name
        self._state = state
        self._error = error
        self.options = options
        self._metrics = PoolMetrics()
        self.limit = options.make_limit(pool_max)
        front = AsyncAdmission if asynchronous else Admission
        self.admission: Admission | AsyncAdmission = front(
            self.limit, options.admission(), name=name
        )
        threshold = options.leak_threshold or 2 * options.timeout
        self.leaks = LeakTracker(
            name, threshold, full_stack=options.leak_stack, on_leak=self._metrics.leak
        )
        collector_for(options.registry).add(self)

    # -- MetricsSource ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name: the `pool_name` label and the subject of every message."""
        return self._name

    @property
    def metrics(self) -> PoolMetrics:
        """The pool's counters and histograms."""
        return self._metrics

    def pool_state(self) -> PoolState:
        """Read the wrapped pool's live numbers."""
        return self._state()

    def pending_requests(self) -> int:
        """Return how many requests wait in the guard's queue."""
        return self.admission.stats().waiting

    def current_limit(self) -> int:
        """Return the in-flight limit now."""
        return self.limit.limit

    # -- hot path --------------------------------------------------------------------------

    def admit(self, timeout: float | None = None) -> Admit:
        """Take a slot (threads), or raise the adapter's `PoolSaturated`."""
        assert isinstance(self.admission, Admission)
        return self._admitted(self.admission.acquire(timeout))

    async def admit_async(self, timeout: float | None = None) -> Admit:
        """Take a slot (asyncio), or raise the adapter's `PoolSaturated`; cancellation-safe."""
        assert isinstance(self.admission, AsyncAdmission)
        return self._admitted(await self.admission.acquire(timeout))

    def remaining(self, admit: Admit, timeout: float | None = None) -> float:
        """Return the seconds left for the wrapped pool's own acquire (never below 1 ms)."""
        budget = self.options.timeout if timeout is None else timeout
        return max(budget - admit.waited, 0.001)

    def lease(self, admit: Admit, requested_at: float, *, skip: int = 3) -> Lease:
        """Record that the connection was obtained; start watching it for leaks."""
        now = time.monotonic()
        self._metrics.observe_wait(now - requested_at)
        return Lease(admit, self.leaks.start(skip), now)

    def release(self, admit: Admit, lease: Lease | None) -> None:
        """Give the slot back; with a lease, record the hold time. Safe on every path.

        Without a lease the wrapped pool failed to give a connection (timeout, server
        down, cancelled): that is reported as a drop, so adaptive limits back off.
        """
        if lease is not None:
            self._metrics.observe_use(time.monotonic() - lease.leased_at)
            self.leaks.finish(lease.checkout)
        self.admission.release(admit, dropped=lease is None)

    def pool_timeout(self, admit: Admit, waited: float) -> PoolSaturated:
        """Build the error for a wrapped pool that timed out after the guard admitted.

        `release` without a lease then reports a drop, so adaptive limits back off.
        """
        self._metrics.reject("deadline")
        state = self._state()
        return self._error(
            f"pool {self._name!r}: the pool gave no connection within {waited:.2f} s although "
            f"the guard admitted the request ({state.used} used, {state.idle} idle, max "
            f"{state.max}); something holds connections outside the guard or the server is "
            "slow to accept them - check 'poolwarden status'",
            pool=self._name, reason="deadline", retry_after=self.admission.retry_after(),
            snapshot=self.snapshot(),
        )  # fmt: skip

    def snapshot(self) -> GuardSnapshot:
        """Return the guard's and the pool's numbers now."""
        return GuardSnapshot(
            self._name, self.admission.stats(), self._state(), self.leaks.outstanding()
        )

    def close(self) -> None:
        """Stop the leak watchdog (the metrics collector forgets the pool when it is freed)."""
        self.leaks.close()

    def _admitted(self, outcome: Admit | Reject) -> Admit:
        if isinstance(outcome, Admit):
            return outcome
        reason: RejectReason = outcome.reason
        self._metrics.reject(reason)
        raise self._error(
            outcome.describe(), pool=self._name, reason=reason,
            retry_after=outcome.retry_after, snapshot=self.snapshot(),
        )  # fmt: skip
