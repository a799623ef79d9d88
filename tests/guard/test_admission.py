"""Behaviour of the admission core and its sync and async front ends."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from poolwarden.errors import ConfigError
from poolwarden.guard import (
    Admission,
    AdmissionConfig,
    AdmissionCore,
    AdmissionStats,
    Admit,
    AsyncAdmission,
    Enqueue,
    Reject,
    Wake,
)
from poolwarden.guard.limits import AIMDLimit, FixedLimit

NO_SHED = AdmissionConfig(shed=False)


class RecordingLimit(FixedLimit):
    """A fixed limit that remembers the samples it was fed."""

    __slots__ = ("samples",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.samples: list[tuple[float, int, bool]] = []

    def on_sample(self, rtt_s: float, inflight: int, dropped: bool) -> None:
        self.samples.append((rtt_s, inflight, dropped))


def admit(core: AdmissionCore, now: float, timeout: float | None = None) -> Admit:
    """Request a slot that must be granted at once."""
    decision, _ = core.request(now, timeout)
    assert isinstance(decision, Admit)
    return decision


def enqueue(core: AdmissionCore, now: float, timeout: float | None = None) -> int:
    """Request a slot that must be queued; return the waiter id."""
    decision, wakes = core.request(now, timeout)
    assert isinstance(decision, Enqueue)
    assert wakes == []
    return decision.waiter


def granted(wakes: list[Wake]) -> list[int]:
    """Return the waiters admitted by these wakes, in order."""
    return [w.waiter for w in wakes if isinstance(w.outcome, Admit)]


def rejected(wakes: list[Wake], reason: str) -> list[int]:
    """Return the waiters rejected with ``reason`` by these wakes, in order."""
    return [w.waiter for w in wakes if isinstance(w.outcome, Reject) and w.outcome.reason == reason]


def assert_accounted(s: AdmissionStats) -> None:
    """Check that every request is admitted, rejected, cancelled or still waiting."""
    assert s.requests == s.admitted + s.rejected + s.cancelled + s.waiting
    assert s.in_flight == s.admitted - s.released


# --- the pure core, on a fake clock -------------------------------------------------------


def test_admits_at_once_while_under_the_limit() -> None:
    """A request is admitted immediately while in-flight is below the limit."""
    core = AdmissionCore(FixedLimit(2))
    first, second = admit(core, 0.0), admit(core, 0.0)
    assert (first.inflight, second.inflight) == (1, 2)
    assert first.waited == 0.0
    assert core.stats().in_flight == 2


def test_queues_at_the_limit_and_release_hands_the_slot_on() -> None:
    """At the limit a request is queued; a release grants it the freed slot."""
    core = AdmissionCore(FixedLimit(1))
    holder = admit(core, 0.0)
    waiter = enqueue(core, 0.001)
    wakes = core.release(holder, 0.003)
    assert granted(wakes) == [waiter]
    outcome = wakes[0].outcome
    assert isinstance(outcome, Admit)
    assert outcome.waited == pytest.approx(0.002)
    assert outcome.ticket == waiter


def test_queue_full_rejects_with_a_retry_hint() -> None:
    """Past max_waiting a request is rejected as queue_full and counted as such."""
    core = AdmissionCore(FixedLimit(1), AdmissionConfig(max_waiting=2))
    admit(core, 0.0)
    enqueue(core, 0.0)
    enqueue(core, 0.0)
    decision, _ = core.request(0.0)
    assert isinstance(decision, Reject)
    assert decision.reason == "queue_full"
    assert decision.retry_after > 0
    assert decision.snapshot.waiting == 2
    s = core.stats()
    assert (s.rejected_queue_full, s.rejected_deadline, s.rejected_shed) == (1, 0, 0)


def test_max_waiting_zero_never_queues() -> None:
    """With max_waiting=0 a request at the limit is rejected at once (no queue)."""
    core = AdmissionCore(FixedLimit(1), AdmissionConfig(max_waiting=0))
    admit(core, 0.0)
    decision, _ = core.request(0.0)
    assert isinstance(decision, Reject)
    assert decision.reason == "queue_full"


def test_zero_timeout_rejects_as_deadline_instead_of_queueing() -> None:
    """A request that may not wait (timeout <= 0) is rejected with reason deadline."""
    core = AdmissionCore(FixedLimit(1))
    admit(core, 0.0)
    decision, _ = core.request(0.0, timeout=0.0)
    assert isinstance(decision, Reject)
    assert decision.reason == "deadline"
    assert core.stats().waiting == 0


def test_non_finite_timeout_is_refused() -> None:
    """An infinite or NaN timeout raises ValueError: every wait is bounded."""
    core = AdmissionCore(FixedLimit(1))
    admit(core, 0.0)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            core.request(0.0, timeout=bad)


def test_poll_expires_waiters_past_their_deadline() -> None:
    """poll() rejects waiters whose deadline passed, with reason deadline and the wait."""
    core = AdmissionCore(FixedLimit(1), AdmissionConfig(timeout=0.5, shed=False))
    admit(core, 0.0)
    early = enqueue(core, 0.0)
    late = enqueue(core, 0.3)
    wakes = core.poll(0.6)
    assert rejected(wakes, "deadline") == [early]
    outcome = wakes[0].outcome
    assert isinstance(outcome, Reject)
    assert outcome.waited == pytest.approx(0.6)
    assert core.stats().waiting == 1
    assert rejected(core.poll(0.8), "deadline") == [late]


def test_release_skips_overdue_waiters_and_grants_the_next() -> None:
    """A freed slot never goes to a waiter past its deadline; the next one gets it."""
    core = AdmissionCore(FixedLimit(1), NO_SHED)
    holder = admit(core, 0.0)
    overdue = enqueue(core, 0.0, timeout=0.1)
    fresh = enqueue(core, 0.0, timeout=5.0)
    wakes = core.release(holder, 0.2)
    assert rejected(wakes, "deadline") == [overdue]
    assert granted(wakes) == [fresh]


def test_expire_after_a_grant_returns_none() -> None:
    """expire() on a waiter that was already granted returns None: the grant stands."""
    core = AdmissionCore(FixedLimit(1))
    holder = admit(core, 0.0)
    waiter = enqueue(core, 0.0)
    core.release(holder, 0.001)
    assert core.expire(waiter, 5.0) is None
    assert core.stats().in_flight == 1


def test_cancel_removes_a_waiter_and_counts_it() -> None:
    """cancel() takes a waiter out of the queue; it is counted as cancelled, not rejected."""
    core = AdmissionCore(FixedLimit(1))
    admit(core, 0.0)
    waiter = enqueue(core, 0.0)
    assert core.cancel(waiter, 0.001) is True
    assert core.cancel(waiter, 0.002) is False
    s = core.stats()
    assert (s.waiting, s.cancelled, s.rejected) == (0, 1, 0)
    assert_accounted(s)


def test_release_twice_is_refused() -> None:
    """Releasing the same admission twice raises ValueError instead of freeing a slot."""
    core = AdmissionCore(FixedLimit(1))
    a = admit(core, 0.0)
    core.release(a, 0.1)
    with pytest.raises(ValueError, match="not held"):
        core.release(a, 0.2)
    assert core.stats().in_flight == 0


def test_serves_fifo_while_not_overloaded() -> None:
    """Without a standing queue, waiters are served oldest first."""
    core = AdmissionCore(FixedLimit(1), NO_SHED)
    holder = admit(core, 0.0)
    order = [enqueue(core, 0.0001 * i) for i in range(3)]
    served = []
    wakes = core.release(holder, 0.002)
    for _ in range(3):
        served += granted(wakes)
        outcome = wakes[-1].outcome
        assert isinstance(outcome, Admit)
        wakes = core.release(outcome, 0.003)
    assert served == order
    assert core.stats().overloaded is False


def test_switches_to_lifo_when_overloaded_and_back_to_fifo() -> None:
    """After an interval whose min queue delay exceeds the target, the newest goes first."""
    core = AdmissionCore(FixedLimit(1), NO_SHED)
    a = admit(core, 0.0)  # opens the first interval, which saw a 0 delay
    b, _c, d = enqueue(core, 0.0), enqueue(core, 0.01), enqueue(core, 0.02)
    wakes = core.release(a, 0.2)  # interval closed with min 0: still FIFO
    assert granted(wakes) == [b]
    assert core.stats().overloaded is False
    b_admit = wakes[0].outcome
    assert isinstance(b_admit, Admit)
    wakes = core.release(b_admit, 0.35)  # the last interval's min delay was 0.2 > 5 ms
    assert core.stats().overloaded is True
    assert granted(wakes) == [d]
    d_admit = wakes[0].outcome
    assert isinstance(d_admit, Admit)
    c_admit = core.release(d_admit, 0.36)[0].outcome
    assert isinstance(c_admit, Admit)
    core.release(c_admit, 0.37)
    e = admit(core, 0.5)  # admitted without waiting: the queue emptied
    f, _g = enqueue(core, 0.5), enqueue(core, 0.51)
    wakes = core.release(e, 0.65)
    assert core.stats().overloaded is False
    assert granted(wakes) == [f]


def test_codel_sheds_only_after_a_whole_interval_of_standing_queue() -> None:
    """Waiters over 2 x target are shed only once the queue stood for an interval."""
    core = AdmissionCore(FixedLimit(1))
    admit(core, 0.0)
    b = enqueue(core, 0.001)
    c = enqueue(core, 0.05)
    assert core.poll(0.08) == []  # waited past 2 x target, but no interval yet
    assert core.poll(0.1) == []  # this interval saw the 0-delay admission at t=0
    young = enqueue(core, 0.195)
    wakes = core.poll(0.2)  # a whole interval with nothing served and a queue
    assert core.stats().overloaded is True
    assert rejected(wakes, "shed") == [b, c]
    assert core.stats().waiting == 1
    assert rejected(core.poll(0.2049), "shed") == []
    assert rejected(core.poll(0.2051), "shed") == [young]
    s = core.stats()
    assert (s.rejected_shed, s.rejected_deadline, s.rejected_queue_full) == (3, 0, 0)


def test_shedding_makes_room_in_a_full_queue() -> None:
    """While overloaded, a request meeting a full queue of stale waiters sheds them first."""
    core = AdmissionCore(FixedLimit(1), AdmissionConfig(max_waiting=2))
    admit(core, 0.0)
    enqueue(core, 0.05)
    enqueue(core, 0.06)
    core.poll(0.1)
    decision, wakes = core.request(0.2)
    assert isinstance(decision, Enqueue)
    assert len(rejected(wakes, "shed")) == 2


def test_shedding_and_lifo_can_be_turned_off() -> None:
    """With shed=False and adaptive_lifo=False an overloaded queue stays FIFO and whole."""
    core = AdmissionCore(FixedLimit(1), AdmissionConfig(shed=False, adaptive_lifo=False))
    a = admit(core, 0.0)
    b, _c = enqueue(core, 0.001), enqueue(core, 0.002)
    core.poll(0.1)
    wakes = core.release(a, 0.3)
    assert core.stats().overloaded is True
    assert granted(wakes) == [b]
    assert rejected(wakes, "shed") == []


def test_retry_after_follows_littles_law_within_bounds() -> None:
    """retry_after = (waiting + 1) x mean hold / limit, clamped to the configured bounds."""
    core = AdmissionCore(FixedLimit(2), NO_SHED)
    assert core.retry_after() == 0.05  # prior: 1 x 0.1 s / 2, at retry_after_min
    a1, _a2 = admit(core, 0.0), admit(core, 0.0)
    core.release(a1, 0.4)  # the first hold time sets the mean: 0.4 s
    admit(core, 0.4)
    for _ in range(3):
        enqueue(core, 0.4)
    assert core.retry_after() == pytest.approx(4 * 0.4 / 2)
    capped = AdmissionCore(FixedLimit(1), AdmissionConfig(retry_after_max=0.5))
    capped.release(admit(capped, 0.0), 3.0)
    assert capped.retry_after() == 0.5


def test_mean_hold_is_a_moving_average() -> None:
    """Each hold time moves the mean hold by a tenth of its distance."""
    core = AdmissionCore(FixedLimit(1))
    core.release(admit(core, 0.0), 0.1)
    core.release(admit(core, 1.0), 1.2)
    assert core.stats().mean_hold_s == pytest.approx(0.1 + 0.1 * (0.2 - 0.1))


def test_raising_the_limit_wakes_waiters_on_poll() -> None:
    """After the limit is raised, poll() grants as many waiters as there are new slots."""
    fixed = FixedLimit(1)
    core = AdmissionCore(fixed)
    admit(core, 0.0)
    waiters = [enqueue(core, 0.0) for _ in range(3)]
    fixed.set_limit(3)
    assert granted(core.poll(0.001)) == waiters[:2]
    assert core.stats().in_flight == 3


def test_a_limit_grown_by_samples_wakes_more_than_one_waiter() -> None:
    """A release whose sample raises the limit hands out the freed and the new slots."""
    aimd = AIMDLimit(10, initial_limit=1)
    core = AdmissionCore(aimd, NO_SHED)
    holder = admit(core, 0.0)
    waiters = [enqueue(core, 0.0) for _ in range(3)]
    wakes = core.release(holder, 0.01)  # inflight 1 * 2 >= 1: limit 1 -> 2
    assert aimd.limit == 2
    assert granted(wakes) == waiters[:2]


def test_lowering_the_limit_holds_new_requests_until_below_it() -> None:
    """A lowered limit admits nobody until in-flight falls under it."""
    fixed = FixedLimit(3)
    core = AdmissionCore(fixed, NO_SHED)
    held = [admit(core, 0.0) for _ in range(3)]
    fixed.set_limit(1)
    waiter = enqueue(core, 0.0)
    assert core.release(held[0], 0.01) == []
    assert core.release(held[1], 0.01) == []
    assert granted(core.release(held[2], 0.01)) == [waiter]


def test_release_feeds_the_hold_time_to_the_limit() -> None:
    """A release gives the limit its hold time, in-flight at admission and the drop flag."""
    limit = RecordingLimit(2)
    core = AdmissionCore(limit)
    admit(core, 0.0)
    second = admit(core, 0.5)
    core.release(second, 0.75, dropped=True)
    assert limit.samples == [(0.25, 2, True)]
    core.release(admit(core, 1.0), 2.0, sample=False)
    assert len(limit.samples) == 1


def test_stats_count_every_outcome_apart() -> None:
    """The snapshot counts admitted, queued, each rejection reason and cancellations apart."""
    core = AdmissionCore(FixedLimit(1), AdmissionConfig(max_waiting=2, timeout=1.0))
    holder = admit(core, 0.0)
    w1 = enqueue(core, 0.0)
    w2 = enqueue(core, 0.0)
    core.request(0.0)  # queue_full
    core.request(0.0, timeout=0.0)  # deadline, at once
    core.cancel(w2, 0.01)
    core.release(holder, 0.02)  # grants w1
    core.request(0.03, timeout=0.1)
    core.poll(0.2)  # that one expires
    s = core.stats()
    assert s.mean_hold_s == pytest.approx(0.02)
    assert dataclasses.replace(s, mean_hold_s=0.0) == AdmissionStats(
        name="pool",
        limit=1,
        in_flight=1,
        waiting=0,
        max_waiting=2,
        overloaded=False,
        requests=6,
        admitted=2,
        queued=3,
        rejected_queue_full=1,
        rejected_deadline=2,
        rejected_shed=0,
        cancelled=1,
        released=1,
        mean_hold_s=0.0,
    )
    assert s.rejected == 3
    assert w1 != w2
    assert_accounted(s)


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("queue_full", ["'orders-api'", "queue full (max_waiting=2)", "limit 1/1", "2 waiting"]),
        ("deadline", ["'orders-api'", "deadline", "raise the timeout"]),
        ("shed", ["'orders-api'", "shed after waiting", "overloaded"]),
    ],
)
def test_reject_describes_symptom_numbers_and_remedy(reason: str, words: list[str]) -> None:
    """A rejection's message names the pool, gives the numbers and suggests a remedy."""
    core = AdmissionCore(FixedLimit(1), AdmissionConfig(max_waiting=2), name="orders-api")
    admit(core, 0.0)
    if reason == "queue_full":
        enqueue(core, 0.0)
        enqueue(core, 0.0)
        decision, _ = core.request(0.0)
    elif reason == "deadline":
        decision, _ = core.request(0.0, timeout=0.0)
    else:
        enqueue(core, 0.05)
        core.poll(0.1)
        decision = core.poll(0.2)[0].outcome
    assert isinstance(decision, Reject)
    text = decision.describe()
    assert all(word in text for word in words), text
    assert "retry in" in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_waiting": -1},
        {"timeout": 0.0},
        {"codel_target": 0.2, "codel_interval": 0.1},
        {"retry_after_min": 2.0, "retry_after_max": 1.0},
    ],
)
def test_invalid_config_raises_config_error(kwargs: dict[str, float]) -> None:
    """Out-of-range settings raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="admission: "):
        AdmissionConfig(**kwargs)  # type: ignore[arg-type]


# --- properties over random operation sequences -------------------------------------------


class CoreMachine(RuleBasedStateMachine):
    """Drive the core with random requests, releases, expiries, cancels and limit changes."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = FixedLimit(2)
        self.core = AdmissionCore(self.limit, AdmissionConfig(max_waiting=3, timeout=0.05))
        self.now = 0.0
        self.held: list[Admit] = []
        self.waiting: set[int] = set()

    def apply(self, wakes: list[Wake]) -> None:
        """Settle each woken waiter exactly once; a grant never exceeds the limit."""
        for wake in wakes:
            assert wake.waiter in self.waiting, "a waiter was settled twice or never queued"
            self.waiting.remove(wake.waiter)
            if isinstance(wake.outcome, Admit):
                assert wake.outcome.inflight <= self.limit.limit
                self.held.append(wake.outcome)

    @rule(timeout=st.sampled_from([None, 0.0, 0.01, 0.2]))
    def request(self, timeout: float | None) -> None:
        """A new request is admitted (within the limit), queued or rejected."""
        decision, wakes = self.core.request(self.now, timeout)
        self.apply(wakes)
        if isinstance(decision, Admit):
            assert decision.inflight <= self.limit.limit
            self.held.append(decision)
        elif isinstance(decision, Enqueue):
            self.waiting.add(decision.waiter)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), dropped=st.booleans(), sample=st.booleans())
    def release(self, data: st.DataObject, dropped: bool, sample: bool) -> None:
        """Any held slot may be released, with or without a sample, dropped or not."""
        a = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.apply(self.core.release(a, self.now, dropped=dropped, sample=sample))

    @precondition(lambda self: self.waiting)
    @rule(data=st.data(), cancel=st.booleans())
    def leave(self, data: st.DataObject, cancel: bool) -> None:
        """A queued caller may leave at any time: cancelled, or timed out (expired)."""
        waiter = data.draw(st.sampled_from(sorted(self.waiting)))
        if cancel:
            assert self.core.cancel(waiter, self.now) is True
        else:
            assert isinstance(self.core.expire(waiter, self.now), Reject)
        self.waiting.remove(waiter)

    @rule(dt=st.floats(0.0, 0.15))
    def advance(self, dt: float) -> None:
        """Time passes (up to 1.5 CoDel intervals per step)."""
        self.now += dt

    @rule(n=st.integers(1, 4))
    def set_limit(self, n: int) -> None:
        """The limit may rise or fall; poll() hands out any new slots."""
        self.limit.set_limit(n)
        self.apply(self.core.poll(self.now))

    @rule()
    def poll(self) -> None:
        """poll() expires, sheds and grants without any other event."""
        self.apply(self.core.poll(self.now))

    @invariant()
    def accounted(self) -> None:
        """Every request is accounted for, and no slot idles while someone waits."""
        s = self.core.stats()
        assert_accounted(s)
        assert s.in_flight == len(self.held)
        assert s.waiting == len(self.waiting) <= s.max_waiting
        assert s.waiting == 0 or s.in_flight >= s.limit, "a slot idles while someone waits"

    def teardown(self) -> None:
        """Releasing every held slot and cancelling every waiter leaves nothing behind."""
        for a in self.held:
            self.apply(self.core.release(a, self.now))
        for waiter in list(self.waiting):
            self.core.cancel(waiter, self.now)
        s = self.core.stats()
        assert (s.in_flight, s.waiting) == (0, 0)


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- the thread front end -----------------------------------------------------------------


class HookClock:
    """A fake clock that runs one action on a chosen read, then returns ``now``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0
        self.actions: dict[int, Callable[[], None]] = {}

    def __call__(self) -> float:
        self.reads += 1
        action = self.actions.pop(self.reads, None)
        if action is not None:
            action()
        return self.now


class Interrupted(Exception):
    """Stands in for KeyboardInterrupt or a cancelled worker."""


def test_sync_waiter_times_out_with_a_deadline_rejection() -> None:
    """A blocked thread gives up at its deadline and gets Reject('deadline')."""
    adm = Admission(FixedLimit(1))
    holder = adm.acquire()
    started = time.monotonic()
    outcome = adm.acquire(timeout=0.05)
    assert isinstance(outcome, Reject)
    assert outcome.reason == "deadline"
    assert 0.04 <= time.monotonic() - started < 1.0
    adm.release(holder)  # type: ignore[arg-type]
    assert_accounted(adm.stats())


def test_sync_waiter_is_woken_by_a_release_from_another_thread() -> None:
    """A release in one thread admits a thread blocked in acquire()."""
    adm = Admission(FixedLimit(1))
    holder = adm.acquire()
    assert isinstance(holder, Admit)
    timer = threading.Timer(0.02, adm.release, args=(holder,))
    timer.start()
    outcome = adm.acquire(timeout=2.0)
    timer.join()
    assert isinstance(outcome, Admit)
    assert outcome.waited > 0.0
    adm.release(outcome)
    assert adm.stats().in_flight == 0


def test_sync_grant_landing_as_the_wait_runs_out_is_kept() -> None:
    """A slot granted in the instant the wait times out is returned to the caller."""
    clock = HookClock()
    adm = Admission(FixedLimit(1), clock=clock)
    holder = adm.acquire()
    assert isinstance(holder, Admit)

    def release_then_jump() -> None:
        adm.release(holder)
        clock.now = 5.0  # past the waiter's deadline

    clock.actions[3] = release_then_jump  # read 2 enqueues, read 3 starts the wait
    outcome = adm.acquire(timeout=1.0)
    assert isinstance(outcome, Admit)
    s = adm.stats()
    assert (s.in_flight, s.rejected_deadline) == (1, 0)


def test_sync_caller_interrupted_after_its_grant_releases_the_slot() -> None:
    """A thread interrupted just after being granted gives the slot back, unleaked."""
    clock = HookClock()
    adm = Admission(FixedLimit(1), clock=clock)
    holder = adm.acquire()
    assert isinstance(holder, Admit)

    def release_then_interrupt() -> None:
        adm.release(holder)
        raise Interrupted

    clock.actions[3] = release_then_interrupt
    with pytest.raises(Interrupted):
        adm.acquire(timeout=1.0)
    s = adm.stats()
    assert (s.in_flight, s.waiting, s.admitted, s.released) == (0, 0, 2, 2)


def test_sync_caller_interrupted_while_queued_is_removed() -> None:
    """A thread interrupted while queued leaves the queue and is counted as cancelled."""
    clock = HookClock()
    adm = Admission(FixedLimit(1), clock=clock)
    adm.acquire()

    def interrupt() -> None:
        raise Interrupted

    clock.actions[3] = interrupt
    with pytest.raises(Interrupted):
        adm.acquire(timeout=1.0)
    s = adm.stats()
    assert (s.in_flight, s.waiting, s.cancelled) == (1, 0, 1)


def test_threads_timing_out_as_their_slot_is_granted_leak_nothing() -> None:
    """A release racing a waiter's timeout gives it the slot or a rejection, never a leak."""
    adm = Admission(FixedLimit(1))
    for i in range(150):
        holder = adm.acquire()
        assert isinstance(holder, Admit)
        timer = threading.Timer(0.001 + (i % 5) * 0.0002, adm.release, args=(holder,))
        timer.start()
        outcome = adm.acquire(timeout=0.0015)
        timer.join()
        if isinstance(outcome, Admit):  # the grant won the race (or came in time)
            adm.release(outcome)
    s = adm.stats()
    assert (s.in_flight, s.waiting, s.requests) == (0, 0, 300)
    assert s.admitted == s.released
    assert_accounted(s)


def test_threads_never_exceed_the_limit_and_leak_nothing() -> None:
    """Eight threads hammering a limit of 3 never hold more than 3 and leave nothing held."""
    adm = Admission(FixedLimit(3), AdmissionConfig(max_waiting=4))
    guard = threading.Lock()
    holding = [0, 0]  # now, peak

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            outcome = adm.acquire(timeout=rng.uniform(0.0, 0.01))
            if isinstance(outcome, Reject):
                continue
            with guard:
                holding[0] += 1
                holding[1] = max(holding)
            time.sleep(rng.uniform(0.0, 0.0005))
            with guard:
                holding[0] -= 1
            adm.release(outcome, dropped=rng.random() < 0.1)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    s = adm.stats()
    assert holding[1] <= 3
    assert (s.in_flight, s.waiting, s.requests) == (0, 0, 480)
    assert s.admitted > 0
    assert s.queued > 0
    assert_accounted(s)


# --- the asyncio front end ----------------------------------------------------------------


def test_async_waiter_times_out_with_a_deadline_rejection() -> None:
    """A queued task gives up at its deadline and gets Reject('deadline')."""

    async def main() -> Reject | Admit:
        adm = AsyncAdmission(FixedLimit(1))
        await adm.acquire()
        return await adm.acquire(timeout=0.03)

    outcome = asyncio.run(main())
    assert isinstance(outcome, Reject)
    assert outcome.reason == "deadline"


def test_async_task_cancelled_while_queued_is_removed() -> None:
    """A task cancelled while queued leaves the queue; it is counted as cancelled."""

    async def main() -> AdmissionStats:
        adm = AsyncAdmission(FixedLimit(1))
        await adm.acquire()
        task = asyncio.create_task(adm.acquire(timeout=5.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return adm.stats()

    s = asyncio.run(main())
    assert (s.in_flight, s.waiting, s.cancelled) == (1, 0, 1)


def test_async_task_cancelled_just_after_its_grant_releases_the_slot() -> None:
    """A task granted a slot and cancelled before it ran gives the slot back."""

    async def main() -> AdmissionStats:
        adm = AsyncAdmission(FixedLimit(1))
        holder = await adm.acquire()
        assert isinstance(holder, Admit)
        task = asyncio.create_task(adm.acquire(timeout=5.0))
        await asyncio.sleep(0)
        adm.release(holder)  # grants the queued task...
        task.cancel()  # ...which is cancelled before it can resume
        with pytest.raises(asyncio.CancelledError):
            await task
        return adm.stats()

    s = asyncio.run(main())
    assert (s.in_flight, s.waiting, s.admitted, s.released) == (0, 0, 2, 2)


def test_async_task_is_woken_by_a_release_from_another_thread() -> None:
    """A release from a worker thread wakes the queued task on its own loop."""

    async def main() -> Admit | Reject:
        adm = AsyncAdmission(FixedLimit(1))
        holder = await adm.acquire()
        assert isinstance(holder, Admit)
        timer = threading.Timer(0.02, adm.release, args=(holder,))
        timer.start()
        outcome = await adm.acquire(timeout=2.0)
        timer.join()
        return outcome

    assert isinstance(asyncio.run(main()), Admit)


async def churn(adm: AsyncAdmission, rng: random.Random, tasks: int, peak: list[int]) -> None:
    """Run tasks that acquire under random outer timeouts and cancellations, then release."""

    async def one() -> None:
        # Half may outlive the outer timeouts (so they are cancelled while queued), half
        # run into their own deadline.
        timeout = rng.choice([rng.uniform(0.0, 0.01), 0.2])
        outcome = await adm.acquire(timeout=timeout)
        if isinstance(outcome, Reject):
            return
        peak[0] += 1
        peak[1] = max(peak)
        try:
            await asyncio.sleep(rng.uniform(0.0, 0.002))
        finally:
            peak[0] -= 1
            adm.release(outcome)

    async def wrapped() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(one(), timeout=rng.uniform(0.0, 0.006))

    running = [asyncio.create_task(wrapped()) for _ in range(tasks)]
    for _ in range(tasks // 4):
        await asyncio.sleep(rng.uniform(0.0, 0.001))
        rng.choice(running).cancel()
    await asyncio.gather(*running, return_exceptions=True)


def test_async_random_timeouts_and_cancellations_leak_nothing() -> None:
    """Hundreds of tasks under wait_for and random cancel leave no slot held or queued."""
    adm = AsyncAdmission(FixedLimit(3), AdmissionConfig(max_waiting=1000))
    peak = [0, 0]
    asyncio.run(churn(adm, random.Random(7), 400, peak))
    s = adm.stats()
    assert peak[1] <= 3
    assert (s.in_flight, s.waiting, s.requests) == (0, 0, s.admitted + s.rejected + s.cancelled)
    assert s.cancelled > 0
    assert s.queued > 0
    assert s.admitted == s.released


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), limit=st.integers(1, 4), max_waiting=st.integers(0, 6))
def test_async_no_slot_leaks_under_random_cancel_sequences(
    seed: int, limit: int, max_waiting: int
) -> None:
    """For any seed, limit and queue size, random cancellation leaves nothing held."""
    adm = AsyncAdmission(FixedLimit(limit), AdmissionConfig(max_waiting=max_waiting))
    peak = [0, 0]
    asyncio.run(churn(adm, random.Random(seed), 40, peak))
    s = adm.stats()
    assert peak[1] <= limit
    assert (s.in_flight, s.waiting) == (0, 0)
    assert_accounted(s)
