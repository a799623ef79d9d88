"""Behaviour of the limit algorithms in poolwarden.guard.limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolwarden.errors import ConfigError
from poolwarden.guard.limits import AIMDLimit, ConcurrencyLimit, FixedLimit, Gradient2Limit


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feed_window(
    limit: Gradient2Limit, clock: FakeClock, rtt: float, inflight: int, n: int = 10
) -> None:
    """Feed one complete window of ``n`` equal samples, closing it on the last one."""
    for i in range(n):
        if i == n - 1:
            clock.now += limit.window_s
        limit.on_sample(rtt, inflight, False)


def test_every_algorithm_satisfies_the_limit_protocol() -> None:
    """Fixed, AIMD and Gradient2 all implement the ConcurrencyLimit protocol."""
    for algorithm in (FixedLimit(3), AIMDLimit(10), Gradient2Limit(10)):
        assert isinstance(algorithm, ConcurrencyLimit)


def test_fixed_limit_ignores_samples_and_can_be_set() -> None:
    """FixedLimit keeps its value through samples and changes only via set_limit."""
    fixed = FixedLimit(5)
    fixed.on_sample(100.0, 5, True)
    assert fixed.limit == 5
    fixed.set_limit(2)
    assert fixed.limit == 2


def test_fixed_limit_is_capped_by_the_budget() -> None:
    """A budget below the fixed limit caps it, and lifting the budget restores it."""
    fixed = FixedLimit(8, budget=3)
    assert fixed.limit == 3
    fixed.budget = None
    assert fixed.limit == 8


def test_aimd_grows_by_one_while_busy() -> None:
    """AIMD adds one per sample when in-flight is at least half the limit."""
    aimd = AIMDLimit(50, initial_limit=10)
    aimd.on_sample(0.01, 5, False)
    assert aimd.limit == 11


def test_aimd_holds_while_app_limited() -> None:
    """AIMD does not grow when in-flight is under half the limit."""
    aimd = AIMDLimit(50, initial_limit=10)
    aimd.on_sample(0.01, 4, False)
    assert aimd.limit == 10


def test_aimd_backs_off_on_drop_and_on_timeout() -> None:
    """AIMD multiplies by backoff_ratio on a drop or a sample slower than timeout_s."""
    aimd = AIMDLimit(100, initial_limit=50)
    aimd.on_sample(0.01, 50, True)
    assert aimd.limit == 45
    aimd.on_sample(6.0, 1, False)
    assert aimd.limit == 40


def test_aimd_backoff_always_loses_at_least_one() -> None:
    """AIMD lowers a small limit by one even where limit * ratio truncates to itself."""
    aimd = AIMDLimit(10, initial_limit=5, backoff_ratio=0.99)
    aimd.on_sample(0.01, 5, True)
    assert aimd.limit == 4


def test_aimd_stays_within_min_and_max() -> None:
    """AIMD never goes below min_limit nor above max_limit (the pool's max)."""
    aimd = AIMDLimit(6, min_limit=3, initial_limit=5)
    for _ in range(10):
        aimd.on_sample(0.01, 100, False)
    assert aimd.limit == 6
    for _ in range(10):
        aimd.on_sample(0.01, 1, True)
    assert aimd.limit == 3


def test_gradient2_ignores_incomplete_windows_and_tiny_samples() -> None:
    """Gradient2 only updates on windows with >= min_window_samples samples >= min_rtt_s."""
    clock = FakeClock()
    g = Gradient2Limit(40, initial_limit=20, clock=clock)
    feed_window(g, clock, 0.010, 20, n=9)
    assert g.short_rtt_s == 0.0
    for _ in range(50):
        g.on_sample(50e-6, 20, False)
    clock.now += 2.0
    g.on_sample(50e-6, 20, False)
    assert g.short_rtt_s == 0.0
    assert g.limit == 20


def test_gradient2_grows_by_headroom_at_steady_latency() -> None:
    """At steady latency the gradient is 1 and the limit grows by smoothing x queue_size."""
    clock = FakeClock()
    g = Gradient2Limit(100, initial_limit=20, clock=clock)
    feed_window(g, clock, 0.010, 20)
    assert g.short_rtt_s == pytest.approx(0.010)
    assert g.long_rtt_s == pytest.approx(0.010)
    assert g.limit == 20  # 20 * 0.8 + 0.2 * (20 * 1.0 + 4) = 20.8
    feed_window(g, clock, 0.010, 20)
    assert g.limit == 21  # 20.8 -> 21.6


def test_gradient2_shrinks_when_latency_rises_past_tolerance() -> None:
    """When short RTT exceeds tolerance x long RTT the gradient (floored at 0.5) shrinks it."""
    clock = FakeClock()
    g = Gradient2Limit(40, clock=clock)
    for _ in range(10):  # warm the baseline up at 10 ms; the limit stays at max_limit
        feed_window(g, clock, 0.010, 40)
    assert g.limit == 40
    feed_window(g, clock, 0.100, 40)  # 1.5 x ~0.0103 / 0.1 -> gradient clamped to 0.5
    assert g.limit == 36  # 40 * 0.8 + 0.2 * (40 * 0.5 + 4) = 36.8


def test_gradient2_tolerates_latency_within_rtt_tolerance() -> None:
    """A rise under rtt_tolerance keeps the gradient at 1: the limit still grows."""
    clock = FakeClock()
    g = Gradient2Limit(100, initial_limit=20, clock=clock)
    feed_window(g, clock, 0.010, 20)
    feed_window(g, clock, 0.014, 20)
    assert g.limit == 21


def test_gradient2_does_not_grow_while_app_limited() -> None:
    """Gradient2 keeps the limit when the window's max in-flight is under half of it."""
    clock = FakeClock()
    g = Gradient2Limit(100, initial_limit=20, clock=clock)
    for _ in range(5):
        feed_window(g, clock, 0.010, 9)
    assert g.limit == 20


def test_gradient2_decays_a_stale_baseline() -> None:
    """After an overload, a long RTT over twice the short RTT is pulled down by 5 %."""
    clock = FakeClock()
    g = Gradient2Limit(100, initial_limit=20, clock=clock)
    feed_window(g, clock, 0.100, 1)
    feed_window(g, clock, 0.010, 1)  # warm-up mean: 0.055, ratio 5.5 > 2
    assert g.long_rtt_s == pytest.approx(0.055 * 0.95)


def test_gradient2_clamps_to_min_max_and_budget() -> None:
    """Gradient2 stays within [min_limit, max_limit] and never above the budget."""
    clock = FakeClock()
    g = Gradient2Limit(24, min_limit=15, initial_limit=20, clock=clock)
    for _ in range(30):
        feed_window(g, clock, 0.010, 24)
    assert g.limit == 24
    for _ in range(30):
        feed_window(g, clock, 1.0, 24)
    assert g.limit == 15
    g.budget = 10
    assert g.limit == 10
    for _ in range(30):
        feed_window(g, clock, 0.001, 24)
    assert g.limit == 10


def test_gradient2_defaults_start_at_the_pool_max() -> None:
    """Without initial_limit the adaptive limits start at max_limit, the pool's own size."""
    assert Gradient2Limit(12).limit == 12
    assert AIMDLimit(12).limit == 12


@pytest.mark.parametrize(
    "build",
    [
        lambda: FixedLimit(0),
        lambda: AIMDLimit(5, min_limit=6),
        lambda: AIMDLimit(5, backoff_ratio=1.0),
        lambda: AIMDLimit(5, timeout_s=0.0),
        lambda: Gradient2Limit(5, smoothing=0.0),
        lambda: Gradient2Limit(5, rtt_tolerance=0.9),
        lambda: Gradient2Limit(5, queue_size=-1),
        lambda: Gradient2Limit(5, window_s=0.0),
        lambda: Gradient2Limit(5, budget=0),
    ],
)
def test_invalid_settings_raise_config_error(build: object) -> None:
    """Out-of-range settings raise ConfigError naming the algorithm and the field."""
    assert callable(build)
    with pytest.raises(ConfigError, match=r"Limit: \w+="):
        build()


samples = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=10.0),
        st.integers(min_value=0, max_value=300),
        st.booleans(),
        st.floats(min_value=0.0, max_value=3.0),
    ),
    max_size=300,
)


@given(
    samples=samples,
    bounds=st.tuples(st.integers(1, 50), st.integers(0, 50)),
    budget=st.none() | st.integers(1, 100),
)
def test_every_limit_stays_within_its_bounds(
    samples: list[tuple[float, int, bool, float]], bounds: tuple[int, int], budget: int | None
) -> None:
    """Whatever the samples, each limit stays in [min(min_limit, cap), cap], cap=min(max, budget)."""
    low, extra = bounds
    high = low + extra
    cap = high if budget is None else min(high, budget)
    clock = FakeClock()
    algorithms: list[AIMDLimit | Gradient2Limit] = [
        AIMDLimit(high, min_limit=low, budget=budget),
        Gradient2Limit(high, min_limit=low, budget=budget, clock=clock),
    ]
    for rtt, inflight, dropped, step in samples:
        clock.now += step
        for algorithm in algorithms:
            algorithm.on_sample(rtt, inflight, dropped)
            assert min(low, cap) <= algorithm.limit <= cap
