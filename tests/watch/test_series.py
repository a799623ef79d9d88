"""Behaviour of poolwarden.watch.series: bounded windows and PromQL functions over them.

Every sample carries an explicit timestamp; no clock is read. Expected values are worked by
hand in the docstrings, and each was also checked with `promtool test rules` (Prometheus
2.42) on the same series, so the in-process functions and the exported PromQL agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolwarden.errors import ConfigError
from poolwarden.watch.series import LabelSet, SeriesStore, seconds_to_exhaustion

DB1 = {"instance": "db1:9187"}
SUM = "instance:pg_stat_activity_count:sum"


def feed(
    store: SeriesStore,
    name: str,
    values: Sequence[float | None],
    labels: Mapping[str, str] | None = None,
    step: float = 60.0,
) -> None:
    """Append ``values[k]`` at ``k * step`` seconds; None leaves a gap, like promtool's ``_``."""
    for k, value in enumerate(values):
        if value is not None:
            store.append(name, labels or {}, k * step, value)


def ramp(start: float, step: float, n: int) -> list[float]:
    """Return promtool's ``start+stepxn``: n + 1 values."""
    return [start + step * k for k in range(n + 1)]


def reference_store(minutes: int) -> SeriesStore:
    """REFERENCE.md §5.6 up to ``minutes``, as the loop would have it then: idle 20+1/min and
    active 5, summed per instance (the recording rule), one sample a minute."""
    store = SeriesStore()
    feed(store, SUM, [idle + 5 for idle in ramp(20, 1, minutes)], DB1)
    return store


def histogram(store: SeriesStore, name: str, per_minute: Mapping[str, float]) -> None:
    """Feed cumulative buckets growing by ``per_minute[le]`` each minute for 20 minutes."""
    for le, growth in per_minute.items():
        feed(store, name, ramp(0, growth, 20), {"job": "api", "le": le})


# -- storage ---------------------------------------------------------------------------------


def test_window_is_left_open_and_right_closed() -> None:
    """window(seconds=3, now=5) holds the samples with 2 < t <= 5, oldest first."""
    store = SeriesStore()
    for t in range(1, 8):
        store.append("m", {}, float(t), t * 10.0)
    assert store.window("m", {}, 3, 5.0) == ((3.0, 30.0), (4.0, 40.0), (5.0, 50.0))


def test_latest_is_the_newest_value_or_none() -> None:
    """latest() gives the newest value of the series, None for a series never seen."""
    store = SeriesStore()
    store.append("m", {"pool": "a"}, 1.0, 3.0)
    store.append("m", {"pool": "a"}, 2.0, 4.0)
    assert store.latest("m", {"pool": "a"}) == 4.0
    assert store.latest("m", {"pool": "b"}) is None
    assert store.latest("other", {}) is None


def test_out_of_order_sample_is_dropped_and_counted() -> None:
    """A sample older than the series' newest is dropped: append returns False, stats count it."""
    store = SeriesStore()
    assert store.append("m", {}, 5.0, 1.0)
    assert not store.append("m", {}, 4.0, 2.0)
    assert store.window("m", {}, 10, 10.0) == ((5.0, 1.0),)
    assert store.stats().rejected_out_of_order == 1


def test_sample_at_the_newest_timestamp_replaces_it() -> None:
    """A second sample at the newest timestamp replaces the value (last write wins)."""
    store = SeriesStore()
    store.append("m", {}, 5.0, 1.0)
    assert store.append("m", {}, 5.0, 2.0)
    assert store.window("m", {}, 10, 10.0) == ((5.0, 2.0),)


def test_nan_value_is_dropped_and_bad_time_refused() -> None:
    """A NaN value is dropped and counted; a non-finite timestamp is a ValueError."""
    store = SeriesStore()
    assert not store.append("m", {}, 1.0, math.nan)
    assert store.stats().rejected_not_a_number == 1
    assert store.latest("m", {}) is None
    with pytest.raises(ValueError, match="not a finite time"):
        store.append("m", {}, math.inf, 1.0)


def test_label_order_does_not_matter_and_label_sets_are_sorted() -> None:
    """Label sets are keyed by their pairs whatever the dict order; label_sets() sorts them."""
    store = SeriesStore()
    store.append("m", {"pool": "b", "db": "x"}, 1.0, 1.0)
    store.append("m", {"db": "x", "pool": "b"}, 2.0, 2.0)
    store.append("m", {"db": "x", "pool": "a"}, 1.0, 5.0)
    assert store.label_sets("m") == ({"db": "x", "pool": "a"}, {"db": "x", "pool": "b"})
    assert store.latest("m", {"pool": "b", "db": "x"}) == 2.0
    assert store.label_sets("absent") == ()
    assert store.names() == ("m",)


def test_label_set_is_hashable_immutable_and_equal_to_a_dict() -> None:
    """LabelSet hashes by its pairs, equals a dict with the same pairs, and has no setter."""
    labels = LabelSet({"pool": "a", "le": "0.5"})
    assert labels == {"le": "0.5", "pool": "a"}
    assert hash(labels) == hash(LabelSet({"le": "0.5", "pool": "a"}))
    assert labels.without("le") == {"pool": "a"}
    assert list(labels) == ["le", "pool"]
    assert not hasattr(labels, "__setitem__")


def test_max_points_keeps_the_newest_samples() -> None:
    """A series holds at most max_points samples; the oldest go first."""
    store = SeriesStore(max_age_s=100, max_points=4)
    for t in range(10):
        store.append("m", {}, float(t), float(t))
    assert [t for t, _ in store.window("m", {}, 100, 10.0)] == [6.0, 7.0, 8.0, 9.0]


def test_append_drops_samples_that_aged_out_of_the_series() -> None:
    """Appending at t drops that series' samples at or before t - max_age_s."""
    store = SeriesStore(max_age_s=10)
    for t in (0.0, 5.0, 10.0, 14.0):
        store.append("m", {}, t, t)
    assert store.stats().points == 3
    assert store.window("m", {}, 10, 14.0) == ((5.0, 5.0), (10.0, 10.0), (14.0, 14.0))


def test_forget_older_than_removes_series_left_empty() -> None:
    """forget_older_than(now) drops aged samples everywhere; a series with none left is gone."""
    store = SeriesStore(max_age_s=10)
    store.append("stale", {"pool": "a"}, 0.0, 1.0)
    store.append("fresh", {}, 0.0, 1.0)
    store.append("fresh", {}, 15.0, 2.0)
    assert store.forget_older_than(20.0) == 1
    assert store.names() == ("fresh",)
    assert store.label_sets("stale") == ()
    assert store.stats().series == 1
    assert store.stats().points == 1


def test_new_series_beyond_max_series_is_refused() -> None:
    """With max_series series held, a new one is dropped and counted; existing ones still take samples."""
    store = SeriesStore(max_series=2)
    assert store.append("m", {"i": "1"}, 1.0, 1.0)
    assert store.append("m", {"i": "2"}, 1.0, 1.0)
    assert not store.append("m", {"i": "3"}, 1.0, 1.0)
    assert store.append("m", {"i": "1"}, 2.0, 1.0)
    assert store.stats().rejected_over_series_limit == 1
    assert store.stats().series == 2


def test_window_longer_than_max_age_is_a_config_error() -> None:
    """A window the store cannot hold, or an empty one, says what to change."""
    store = SeriesStore(max_age_s=900)
    with pytest.raises(ConfigError, match=r"max_age_s=900\); raise max_age_s"):
        store.rate("m", {}, 1800, 2000.0)
    with pytest.raises(ConfigError, match="positive length"):
        store.window("m", {}, 0, 2000.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_age_s": 0}, "max_age_s=0 must be a positive"),
        ({"max_points": 1}, "max_points=1 must be at least 2"),
        ({"max_series": 0}, "max_series=0 must be at least 1"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float], message: str) -> None:
    """Settings that cannot bound a store are refused with the field and its value."""
    with pytest.raises(ConfigError, match=message):
        SeriesStore(**kwargs)


# -- counters and gauges ---------------------------------------------------------------------


def test_rate_of_a_counter_that_covers_the_window() -> None:
    """Samples every 10 s, +5 each, across a 60 s window: rate 0.5/s, increase 30."""
    store = SeriesStore()
    feed(store, "c_total", ramp(100, 5, 20), step=10)
    assert store.rate("c_total", {}, 60, 200.0) == pytest.approx(0.5)
    assert store.increase("c_total", {}, 60, 200.0) == pytest.approx(30.0)


def test_increase_counts_through_a_reset() -> None:
    """100 110 120 5 15 25 35, [300s] at 390 s: 120 5 15 25 35 -> 35 - 120 + 120 = 35,
    extrapolated 30 s at each end over 240 s sampled: 35 * 300 / 240 = 43.75."""
    store = SeriesStore()
    feed(store, "reset_total", [100, 110, 120, 5, 15, 25, 35])
    assert store.increase("reset_total", {}, 300, 390.0) == pytest.approx(43.75)


def test_series_starting_inside_the_window_extrapolates_half_an_interval() -> None:
    """500+7x6 from 3 m, [600s] at 600 s: 42 over 360 s; start 180 s away (> 1.1 intervals)
    gets 30 s, end 60 s away gets 60 s: 42 * 450 / 360 = 52.5, rate 0.0875."""
    store = SeriesStore()
    feed(store, "late_total", [None, None, None, *ramp(500, 7, 6)])
    assert store.increase("late_total", {}, 600, 600.0) == pytest.approx(52.5)
    assert store.rate("late_total", {}, 600, 600.0) == pytest.approx(0.0875)


def test_counter_is_not_extrapolated_below_zero() -> None:
    """0+10x10, [600s] at 330 s: the counter starts at 0, so no time is added before it:
    50 over 300 s sampled, + 30 s at the end: 50 * 330 / 300 = 55."""
    store = SeriesStore()
    feed(store, "fresh_total", ramp(0, 10, 10))
    assert store.increase("fresh_total", {}, 600, 330.0) == pytest.approx(55.0)


def test_rate_and_delta_need_two_samples() -> None:
    """One sample in the window gives no rate, increase or delta."""
    store = SeriesStore()
    store.append("c_total", {}, 10.0, 5.0)
    assert store.rate("c_total", {}, 60, 30.0) is None
    assert store.increase("c_total", {}, 60, 30.0) is None
    assert store.delta("c_total", {}, 60, 30.0) is None


def test_delta_of_a_gauge_keeps_decreases() -> None:
    """A falling gauge's delta is negative (40 -> 30 over 60 s, extrapolated to 120 s: -20),
    where increase() would read the fall as a counter reset (30 counted, 60 extrapolated)."""
    store = SeriesStore()
    feed(store, "g", [50, 40, 30])
    # Samples at 60 and 120 (0 is outside the left-open window); start 60 s away -> 60 s.
    assert store.delta("g", {}, 120, 120.0) == pytest.approx(-20.0)
    assert store.increase("g", {}, 120, 120.0) == pytest.approx(60.0)


def test_avg_min_max_over_time() -> None:
    """The over_time functions read the window's values; an empty window gives None."""
    store = SeriesStore()
    feed(store, "g", [4, 8, 1, 7])
    assert store.avg_over_time("g", {}, 180, 180.0) == pytest.approx(16 / 3)
    assert store.max_over_time("g", {}, 180, 180.0) == 8.0
    assert store.min_over_time("g", {}, 180, 180.0) == 1.0
    assert store.avg_over_time("g", {}, 60, 1000.0) is None
    assert store.max_over_time("g", {}, 60, 1000.0) is None
    assert store.min_over_time("g", {}, 60, 1000.0) is None


# -- REFERENCE.md §5.6: the worked examples ----------------------------------------------------


def test_reference_deriv_and_seconds_to_exhaustion() -> None:
    """At 50 m: 75 used of 97, deriv over 15 m = 1/60 per s, so (97 - 75) * 60 = 1320 s."""
    store = reference_store(50)
    assert store.latest(SUM, DB1) == 75.0
    assert store.deriv(SUM, DB1, 900, 3000.0) == pytest.approx(1 / 60, rel=1e-12)
    window = store.window(SUM, DB1, 900, 3000.0)
    assert seconds_to_exhaustion(window, 97) == pytest.approx(1320.0, rel=1e-12)


def test_reference_predict_linear() -> None:
    """predict_linear(sum[15m], 30 * 60) is 105 at 50 m (over 97: the alert holds) and 65 at
    10 m (the alert test's quiet start)."""
    assert reference_store(50).predict_linear(SUM, DB1, 900, 1800, 3000.0) == pytest.approx(
        105.0, rel=1e-12
    )
    assert reference_store(10).predict_linear(SUM, DB1, 900, 1800, 600.0) == pytest.approx(
        65.0, rel=1e-12
    )


def test_flat_gauge_has_zero_slope_and_no_exhaustion() -> None:
    """A constant series fits a flat line: deriv 0, prediction the value, no exhaustion."""
    store = SeriesStore()
    feed(store, "g", [7] * 10)
    assert store.deriv("g", {}, 300, 540.0) == 0.0
    assert store.predict_linear("g", {}, 300, 3600, 540.0) == 7.0
    assert seconds_to_exhaustion(store.window("g", {}, 300, 540.0), 10) is None


def test_linear_fit_needs_two_points() -> None:
    """deriv, predict_linear and seconds_to_exhaustion give None for fewer than two points."""
    store = SeriesStore()
    store.append("g", {}, 0.0, 1.0)
    assert store.deriv("g", {}, 60, 10.0) is None
    assert store.predict_linear("g", {}, 60, 60, 10.0) is None
    assert seconds_to_exhaustion(store.window("g", {}, 60, 10.0), 5) is None


def test_seconds_to_exhaustion_when_falling_or_already_full() -> None:
    """A falling trend never exhausts (None); a value at or over the limit is 0.0 s away."""
    assert seconds_to_exhaustion(((0.0, 50.0), (60.0, 40.0)), 97) is None
    assert seconds_to_exhaustion(((0.0, 90.0), (60.0, 97.0)), 97) == 0.0
    assert seconds_to_exhaustion(((0.0, 99.0), (60.0, 98.0)), 97) == 0.0


# -- histogram_quantile ------------------------------------------------------------------------


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    """Per 5 m: 50 <= 0.05, 80 <= 0.1, 90 <= 0.25, 96 <= 0.5, 99 <= 1, 100 in all. q=0.95:
    rank 95 lies in (0.25, 0.5] holding 6, 5 past its start: 0.25 + 0.25 * 5/6."""
    store = SeriesStore()
    histogram(
        store, "w_bucket", {"0.05": 50, "0.1": 80, "0.25": 90, "0.5": 96, "1": 99, "+Inf": 100}
    )
    quantile = store.histogram_quantile(0.95, "w_bucket", {"job": "api"}, 300, 630.0)
    assert quantile == pytest.approx(0.25 + 0.25 * 5 / 6)


def test_histogram_quantile_in_the_inf_bucket_and_the_lowest_bucket() -> None:
    """Buckets 1, 3, 4, 5 per minute at 0.1, 0.5, 1, +Inf: q=0.95 lands in +Inf and gives the
    next bound, 1; q=0.7 gives 0.5 + 0.5 * 2.5/5 = 0.75; q=0.1 interpolates from 0 in the
    lowest bucket: 0.1 * 2.5/5 = 0.05."""
    store = SeriesStore()
    histogram(store, "h_bucket", {"0.1": 1, "0.5": 3, "1": 4, "+Inf": 5})
    assert store.histogram_quantile(0.95, "h_bucket", {"job": "api"}, 300, 630.0) == 1.0
    assert store.histogram_quantile(0.7, "h_bucket", {"job": "api"}, 300, 630.0) == pytest.approx(
        0.75
    )
    assert store.histogram_quantile(0.1, "h_bucket", {"job": "api"}, 300, 630.0) == pytest.approx(
        0.05
    )


def test_histogram_quantile_in_a_non_positive_lowest_bucket_is_its_bound() -> None:
    """A quantile falling in a lowest bucket with bound <= 0 is that bound, as PromQL."""
    store = SeriesStore()
    histogram(store, "n_bucket", {"-1": 4, "2": 6, "+Inf": 10})
    assert store.histogram_quantile(0.2, "n_bucket", {"job": "api"}, 300, 630.0) == -1.0


def test_histogram_quantile_counts_only_the_window_and_survives_a_reset() -> None:
    """100 slow observations (over 0.1 s) at 1-2 m, then one fast one a minute; the process
    restarts at 6 m. Over [300s] at 570 s only the fast ones count, reset included: the median
    is 0.05. Over [540s] the slow ones count too and the median lands in +Inf: 0.1."""
    store = SeriesStore()
    labels = {"job": "api"}
    feed(store, "x_bucket", [0, 0, 0, 1, 2, 3, 1, 2, 3, 4], {**labels, "le": "0.1"})
    feed(store, "x_bucket", [0, 50, 100, 101, 102, 103, 1, 2, 3, 4], {**labels, "le": "+Inf"})
    assert store.histogram_quantile(0.5, "x_bucket", labels, 300, 570.0) == pytest.approx(0.05)
    assert store.histogram_quantile(0.5, "x_bucket", labels, 540, 570.0) == 0.1


def test_histogram_quantile_without_an_answer_is_none() -> None:
    """No observations, no +Inf bucket, a single bucket or no buckets at all give None."""
    store = SeriesStore()
    histogram(store, "zero_bucket", {"0.1": 0, "+Inf": 0})
    histogram(store, "open_bucket", {"0.1": 1, "0.5": 2})
    histogram(store, "one_bucket", {"+Inf": 2})
    for name in ("zero_bucket", "open_bucket", "one_bucket", "absent_bucket"):
        assert store.histogram_quantile(0.5, name, {"job": "api"}, 300, 630.0) is None, name


def test_histogram_quantile_outside_zero_one_is_infinite() -> None:
    """q < 0 gives -Inf and q > 1 gives +Inf, as PromQL; labels with 'le' are a mistake."""
    store = SeriesStore()
    histogram(store, "h_bucket", {"0.1": 1, "+Inf": 2})
    assert store.histogram_quantile(-0.5, "h_bucket", {"job": "api"}, 300, 630.0) == -math.inf
    assert store.histogram_quantile(1.5, "h_bucket", {"job": "api"}, 300, 630.0) == math.inf
    with pytest.raises(ValueError, match="without 'le'"):
        store.histogram_quantile(0.5, "h_bucket", {"job": "api", "le": "0.1"}, 300, 630.0)


def test_histogram_quantile_forces_buckets_monotonic() -> None:
    """A bucket whose count is below a lower bucket's is raised to it (PromQL's envelope):
    0.1 gets 4, 0.5 (inconsistently) 2 -> 4, +Inf 8; q=0.75 lands in +Inf -> 0.5."""
    store = SeriesStore()
    histogram(store, "bad_bucket", {"0.1": 4, "0.5": 2, "+Inf": 8})
    assert store.histogram_quantile(0.75, "bad_bucket", {"job": "api"}, 300, 630.0) == 0.5
    assert store.histogram_quantile(
        0.25, "bad_bucket", {"job": "api"}, 300, 630.0
    ) == pytest.approx(0.05)


# -- properties ---------------------------------------------------------------------------------


@given(
    start=st.floats(0, 1e6),
    slope=st.floats(0.01, 1e3),
    interval=st.sampled_from([0.5, 1.0, 10.0, 15.0, 60.0]),
    samples=st.integers(2, 60),
)
def test_rate_of_a_steady_counter_is_its_slope(
    start: float, slope: float, interval: float, samples: int
) -> None:
    """A counter growing linearly, sampled across the whole window, has rate == its slope
    (when it started long enough ago that no zero point cuts the extrapolation)."""
    store = SeriesStore(max_age_s=samples * interval)
    base = start + slope * interval  # at least one interval's growth before the window
    for k in range(1, samples + 1):
        store.append("c_total", {}, k * interval, base + slope * k * interval)
    now = samples * interval
    assert store.rate("c_total", {}, samples * interval, now) == pytest.approx(slope, rel=1e-6)


@given(
    increments=st.lists(st.integers(0, 1000), min_size=3, max_size=40),
    reset_at=st.integers(1, 39),
    first=st.integers(1, 10_000),
)
def test_reset_does_not_change_the_increase(
    increments: list[int], reset_at: int, first: int
) -> None:
    """A process that restarts from zero (and counts again) has the increase the uninterrupted
    counter would have, as long as the reset shows as a decrease."""
    reset_at = min(reset_at, len(increments) - 1)
    true = [float(first)]
    for step in increments:
        true.append(true[-1] + step)
    seen = true[:reset_at] + [v - true[reset_at - 1] for v in true[reset_at:]]
    if not seen[reset_at] < seen[reset_at - 1]:
        return  # an increment this large after a reset is invisible to Prometheus too
    a, b = SeriesStore(), SeriesStore()
    feed(a, "c_total", true, step=10)
    feed(b, "c_total", seen, step=10)
    now = (len(true) - 1) * 10.0
    # The window reaches 10 s before the first sample so that sample is in it.
    assert b.increase("c_total", {}, now + 10, now) == pytest.approx(
        a.increase("c_total", {}, now + 10, now), rel=1e-9
    )


@given(st.lists(st.floats(0, 1e9), min_size=2, max_size=50))
def test_increase_of_a_counter_is_never_negative(values: list[float]) -> None:
    """Whatever non-negative values a counter reports, its increase and rate are >= 0."""
    store = SeriesStore()
    feed(store, "c_total", values, step=1)
    increase = store.increase("c_total", {}, len(values), len(values) - 1.0)
    assert increase is not None
    assert increase >= 0


@given(
    slope=st.floats(-100, 100),
    intercept=st.floats(-1e4, 1e4),
    samples=st.integers(2, 50),
    ahead=st.floats(0, 3600),
)
def test_linear_fit_recovers_a_line(
    slope: float, intercept: float, samples: int, ahead: float
) -> None:
    """On exactly linear data deriv is the slope and predict_linear the line's value ahead."""
    store = SeriesStore()
    for k in range(samples):
        store.append("g", {}, k * 10.0, intercept + slope * k * 10.0)
    now = (samples - 1) * 10.0
    expected = intercept + slope * (now + ahead)
    assert store.deriv("g", {}, 900, now) == pytest.approx(slope, rel=1e-9, abs=1e-9)
    assert store.predict_linear("g", {}, 900, ahead, now) == pytest.approx(
        expected, rel=1e-9, abs=1e-6
    )


@given(
    growth=st.lists(st.integers(0, 50), min_size=2, max_size=8),
    qs=st.lists(st.floats(0, 1), min_size=2, max_size=5),
)
def test_histogram_quantile_never_decreases_with_q(growth: list[int], qs: list[float]) -> None:
    """For any bucket layout with observations, a higher q never gives a lower quantile."""
    bounds = [*(str(0.1 * (i + 1)) for i in range(len(growth) - 1)), "+Inf"]
    cumulative = [sum(growth[: i + 1]) for i in range(len(growth))]
    store = SeriesStore()
    histogram(store, "h_bucket", dict(zip(bounds, cumulative, strict=True)))
    results = [
        store.histogram_quantile(q, "h_bucket", {"job": "api"}, 300, 630.0) for q in sorted(qs)
    ]
    answered = [r for r in results if r is not None]
    assert answered == sorted(answered)
    if cumulative[-1] > 0:
        # Only q=0 over an empty first bucket is 0/0 (NaN in PromQL).
        assert all(r is not None for q, r in zip(sorted(qs), results, strict=True) if q > 0)


@settings(max_examples=50)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 5), st.floats(-2, 10), st.floats(0, 100)),
        min_size=1,
        max_size=200,
    )
)
def test_memory_never_exceeds_the_bounds(steps: list[tuple[int, float, float]]) -> None:
    """Under any appends (some out of order, some at a repeated time), no series holds more
    than max_points samples or spans max_age_s, and no more than max_series series exist."""
    store = SeriesStore(max_age_s=20, max_points=8, max_series=4)
    newest: dict[str, float] = {}
    now = 0.0
    for series, dt, value in steps:
        now += dt
        if store.append("m", {"s": str(series)}, now, value):
            newest[str(series)] = now
        held = 0
        for labels in store.label_sets("m"):
            # Every sample of a series lies within max_age_s of its newest one.
            times = [t for t, _ in store.window("m", labels, 20, newest[labels["s"]])]
            assert times, "a series the store holds has its newest sample"
            assert len(times) <= 8, "never more than max_points"
            assert times == sorted(set(times))
            held += len(times)
        stats = store.stats()
        assert stats.series == len(store.label_sets("m")) <= 4
        assert stats.points == held
