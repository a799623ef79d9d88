"""Bounded time-series windows and the PromQL functions the in-process rules need.

`SeriesStore` keeps, per metric name and label set, the recent samples the watch loop
appends, and answers `rate`, `increase`, `delta`, `deriv`, `predict_linear`,
`avg_over_time`, `max_over_time`, `min_over_time` and `histogram_quantile` over a window,
with Prometheus' semantics, so a built-in rule and its exported PromQL agree.
`seconds_to_exhaustion(points, limit)` turns a gauge window into the time until its linear
trend reaches a limit. Pure: no clock, no I/O, no threads; every call takes `now`.

Semantics
---------
- Time is the caller's clock in seconds (monotonic or epoch; one clock per store).
- A window of ``seconds`` at ``now`` holds the samples with ``now - seconds < t <= now``
  (Prometheus 3's left-open range). A window longer than ``max_age_s`` is a ConfigError.
- Per series, a sample older than the newest is dropped (``append`` returns False) as
  Prometheus drops out-of-order samples; one at the newest's timestamp replaces it (last
  write wins). A NaN value is dropped. A new series beyond ``max_series`` is dropped.
- ``rate``/``increase``/``delta`` use Prometheus' extrapolation: a decrease of a counter
  is a reset; the result is extrapolated to the window's edges when the first and last
  samples lie within 1.1 average intervals of them, else by half an interval, and never
  back past a counter's zero point. They need two samples.
- ``deriv`` and ``predict_linear`` are least-squares fits (two samples at least);
  ``histogram_quantile`` interpolates linearly within buckets (PromQL's rules for the +Inf
  and the lowest bucket). Where PromQL answers NaN or nothing, these return None.
- Memory: each series keeps at most ``max_points`` samples spanning less than
  ``max_age_s``; ``forget_older_than(now)`` (the loop calls it each tick) drops what aged
  out and removes series left empty. Not thread-safe: give the store one owner.

Reference with worked examples: docs/watch-series.md.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from poolwarden.errors import ConfigError

__all__ = ["LabelSet", "SeriesStats", "SeriesStore", "seconds_to_exhaustion"]

Point = tuple[float, float]
Labels = Mapping[str, str]

# Prometheus extrapolates to a window edge only when the gap to it is under this many
# average sample intervals; a larger gap means the series started or ended inside.
_EXTRAPOLATION_THRESHOLD = 1.1


class LabelSet(Mapping[str, str]):
    """An immutable, hashable label set; equal to any mapping with the same pairs."""

    __slots__ = ("_hash", "_items", "_map")

    def __init__(self, labels: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._map = dict(labels)
        self._items = tuple(sorted(self._map.items()))
        self._hash = hash(self._items)

    def __getitem__(self, key: str) -> str:
        return self._map[key]

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LabelSet):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._map == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        pairs = ", ".join(f"{key}={value!r}" for key, value in self._items)
        return f"LabelSet({{{pairs}}})"

    def without(self, *names: str) -> LabelSet:
        """Return this label set less the named labels."""
        return LabelSet((k, v) for k, v in self._items if k not in names)


@dataclass(frozen=True, slots=True)
class SeriesStats:
    """What a store holds and what it refused, counted since it was made."""

    series: int
    points: int
    rejected_out_of_order: int
    rejected_not_a_number: int
    rejected_over_series_limit: int


class _Series:
    """One series' samples, oldest first, timestamps strictly increasing."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        # array('d') keeps a sample at 16 bytes, against ~64 for a list of float pairs.
        self.times = array("d")
        self.values = array("d")

    def drop_through(self, cutoff: float) -> None:
        """Drop the samples at or before ``cutoff``."""
        index = bisect_right(self.times, cutoff)
        if index:
            del self.times[:index]
            del self.values[:index]

    def span(self, start: float, end: float) -> tuple[Sequence[float], Sequence[float]]:
        """Return the times and values with ``start < t <= end``."""
        lo = bisect_right(self.times, start)
        hi = bisect_right(self.times, end, lo)
        return self.times[lo:hi], self.values[lo:hi]


class SeriesStore:
    """Recent samples per metric name and label set, and PromQL functions over them."""

    def __init__(
        self, max_age_s: float = 900.0, max_points: int = 4000, *, max_series: int = 10_000
    ) -> None:
        if not (math.isfinite(max_age_s) and max_age_s > 0):
            raise ConfigError(f"SeriesStore: max_age_s={max_age_s} must be a positive number")
        if max_points < 2:
            raise ConfigError(
                f"SeriesStore: max_points={max_points} must be at least 2 (a rate needs two)"
            )
        if max_series < 1:
            raise ConfigError(f"SeriesStore: max_series={max_series} must be at least 1")
        self.max_age_s = float(max_age_s)
        self.max_points = max_points
        self.max_series = max_series
        self._series: dict[str, dict[LabelSet, _Series]] = {}
        self._count = 0
        self._out_of_order = 0
        self._not_a_number = 0
        self._over_limit = 0

    # -- storage -----------------------------------------------------------------------

    def append(self, name: str, labels: Labels, t: float, value: float) -> bool:
        """Record one sample; return False when it is dropped (see the module docstring)."""
        _check_time("t", t)
        if math.isnan(value):
            self._not_a_number += 1
            return False
        key = LabelSet(labels)
        series = self._find(name, key)
        if series is None:
            if self._count >= self.max_series:
                self._over_limit += 1
                return False
            series = self._series.setdefault(name, {})[key] = _Series()
            self._count += 1
        elif t <= series.times[-1]:
            if t < series.times[-1]:
                self._out_of_order += 1
                return False
            series.values[-1] = value
            return True
        series.times.append(t)
        series.values.append(value)
        series.drop_through(t - self.max_age_s)
        if len(series.times) > self.max_points:
            series.drop_through(series.times[-self.max_points - 1])
        return True

    def forget_older_than(self, now: float) -> int:
        """Drop samples older than ``max_age_s`` at ``now``; return how many series went."""
        _check_time("now", now)
        removed = 0
        for name in list(self._series):
            by_labels = self._series[name]
            for key in list(by_labels):
                by_labels[key].drop_through(now - self.max_age_s)
                if not by_labels[key].times:
                    del by_labels[key]
                    removed += 1
            if not by_labels:
                del self._series[name]
        self._count -= removed
        return removed

    def names(self) -> tuple[str, ...]:
        """Return the metric names held, sorted."""
        return tuple(sorted(self._series))

    def label_sets(self, name: str) -> tuple[LabelSet, ...]:
        """Return the label sets held for ``name``, sorted by their pairs."""
        return tuple(sorted(self._series.get(name, {}), key=lambda key: tuple(key.items())))

    def stats(self) -> SeriesStats:
        """Return how many series and samples are held and how many samples were refused."""
        points = sum(len(s.times) for by in self._series.values() for s in by.values())
        return SeriesStats(
            self._count, points, self._out_of_order, self._not_a_number, self._over_limit
        )

    def latest(self, name: str, labels: Labels) -> float | None:
        """Return the newest value of the series, or None when it holds none."""
        series = self._find(name, labels)
        return series.values[-1] if series is not None else None

    def window(self, name: str, labels: Labels, seconds: float, now: float) -> tuple[Point, ...]:
        """Return the ``(t, value)`` samples with ``now - seconds < t <= now``, oldest first."""
        times, values = self._span(name, labels, seconds, now)
        return tuple(zip(times, values, strict=True))

    # -- functions over a window ---------------------------------------------------------

    def rate(self, name: str, labels: Labels, seconds: float, now: float) -> float | None:
        """Return the per-second rate of a counter, as PromQL's ``rate``."""
        increase = self.increase(name, labels, seconds, now)
        return None if increase is None else increase / seconds

    def increase(self, name: str, labels: Labels, seconds: float, now: float) -> float | None:
        """Return a counter's increase across resets, as PromQL's ``increase``."""
        times, values = self._span(name, labels, seconds, now)
        return _extrapolated(times, values, now - seconds, now, counter=True)

    def delta(self, name: str, labels: Labels, seconds: float, now: float) -> float | None:
        """Return a gauge's change over the window, as PromQL's ``delta``."""
        times, values = self._span(name, labels, seconds, now)
        return _extrapolated(times, values, now - seconds, now, counter=False)

    def deriv(self, name: str, labels: Labels, seconds: float, now: float) -> float | None:
        """Return a gauge's least-squares slope per second, as PromQL's ``deriv``."""
        fit = _linear_fit(*self._span(name, labels, seconds, now), at=now)
        return None if fit is None else fit[0]

    def predict_linear(
        self, name: str, labels: Labels, seconds: float, t_ahead: float, now: float
    ) -> float | None:
        """Return the least-squares line's value at ``now + t_ahead``, as ``predict_linear``."""
        fit = _linear_fit(*self._span(name, labels, seconds, now), at=now)
        return None if fit is None else fit[1] + fit[0] * t_ahead

    def avg_over_time(self, name: str, labels: Labels, seconds: float, now: float) -> float | None:
        """Return the mean of the window's values, or None when it is empty."""
        _, values = self._span(name, labels, seconds, now)
        return math.fsum(values) / len(values) if values else None

    def max_over_time(self, name: str, labels: Labels, seconds: float, now: float) -> float | None:
        """Return the largest of the window's values, or None when it is empty."""
        _, values = self._span(name, labels, seconds, now)
        return max(values) if values else None

    def min_over_time(self, name: str, labels: Labels, seconds: float, now: float) -> float | None:
        """Return the smallest of the window's values, or None when it is empty."""
        _, values = self._span(name, labels, seconds, now)
        return min(values) if values else None

    def histogram_quantile(
        self, q: float, name: str, labels: Labels, seconds: float, now: float
    ) -> float | None:
        """Return the q-quantile of the observations made in the window, as PromQL.

        ``name`` is the cumulative ``_bucket`` counter and ``labels`` its labels less
        ``le``. Each bucket's ``increase`` over the window is taken, then PromQL's
        ``histogram_quantile`` rules apply. None when no observation was made.
        """
        if "le" in labels:
            raise ValueError(f"histogram_quantile({name}): pass the labels without 'le'")
        start, end = self._range(seconds, now)
        target = LabelSet(labels)
        buckets: list[tuple[float, float]] = []
        for key, series in self._series.get(name, {}).items():
            bound = _bucket_bound(key.get("le"))
            if bound is None or key.without("le") != target:
                continue
            increase = _extrapolated(*series.span(start, end), start, end, counter=True)
            if increase is not None:
                buckets.append((bound, increase))
        return _bucket_quantile(q, buckets) if buckets else None

    # -- plumbing ------------------------------------------------------------------------

    def _find(self, name: str, labels: Labels) -> _Series | None:
        key = labels if isinstance(labels, LabelSet) else LabelSet(labels)
        return self._series.get(name, {}).get(key)

    def _range(self, seconds: float, now: float) -> tuple[float, float]:
        _check_time("now", now)
        if not seconds > 0:
            raise ConfigError(f"a window of {seconds} s is empty; use a positive length")
        if seconds > self.max_age_s:
            raise ConfigError(
                f"a window of {seconds:g} s is longer than the series store keeps "
                f"(max_age_s={self.max_age_s:g}); raise max_age_s or shorten the window"
            )
        return now - seconds, now

    def _span(
        self, name: str, labels: Labels, seconds: float, now: float
    ) -> tuple[Sequence[float], Sequence[float]]:
        start, end = self._range(seconds, now)
        series = self._find(name, labels)
        return series.span(start, end) if series is not None else ((), ())


def seconds_to_exhaustion(points: Sequence[Point], limit: float) -> float | None:
    """Return the seconds until a gauge's linear trend reaches ``limit``.

    ``(limit - newest value) / least-squares slope``, as the PromQL
    ``(limit - used) / (deriv(used[15m]) > 0)``. 0.0 when the newest value is already at or
    over the limit; None with fewer than two points or when the trend is not rising.
    """
    if len(points) < 2:
        return None
    used = points[-1][1]
    if used >= limit:
        return 0.0
    fit = _linear_fit([t for t, _ in points], [v for _, v in points], at=points[-1][0])
    if fit is None or fit[0] <= 0:
        return None
    return (limit - used) / fit[0]


def _check_time(field: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{field}={value} is not a finite time in seconds")


def _extrapolated(
    times: Sequence[float], values: Sequence[float], start: float, end: float, *, counter: bool
) -> float | None:
    """Return PromQL's extrapolated increase (counter) or delta (gauge) over (start, end]."""
    if len(times) < 2:
        return None
    result = values[-1] - values[0]
    if counter:
        # A decrease is a reset to zero: the value before it was counted in full.
        result += math.fsum(prev for prev, cur in pairwise(values) if cur < prev)
    sampled = times[-1] - times[0]
    average = sampled / (len(times) - 1)
    to_start = times[0] - start
    to_end = end - times[-1]
    if to_start >= average * _EXTRAPOLATION_THRESHOLD:
        to_start = average / 2
    if counter and result > 0 and values[0] >= 0:
        # A counter is never negative: do not extrapolate back past its zero point.
        to_start = min(to_start, sampled * values[0] / result)
    if to_end >= average * _EXTRAPOLATION_THRESHOLD:
        to_end = average / 2
    return result * (sampled + to_start + to_end) / sampled


def _linear_fit(
    times: Sequence[float], values: Sequence[float], *, at: float
) -> tuple[float, float] | None:
    """Return the least-squares (slope, value at ``at``), or None under two samples."""
    n = len(times)
    if n < 2:
        return None
    if all(v == values[0] for v in values):
        # PromQL returns a flat line here rather than rounding noise.
        return 0.0, float(values[0])
    xs = [t - at for t in times]
    mean_x = math.fsum(xs) / n
    mean_y = math.fsum(values) / n
    var_x = math.fsum((x - mean_x) ** 2 for x in xs)
    cov = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True))
    slope = cov / var_x
    return slope, mean_y - slope * mean_x


def _bucket_bound(le: str | None) -> float | None:
    """Return a bucket's upper bound, or None for a missing or malformed ``le``."""
    if le is None:
        return None
    try:
        bound = float(le)
    except ValueError:
        return None
    return None if math.isnan(bound) else bound


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Return PromQL's bucketQuantile over ``(upper bound, count)`` pairs; None for NaN."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    bounds = sorted(merged)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    counts = list(_running_max(merged[bound] for bound in bounds))
    observations = counts[-1]
    if observations == 0:
        return None
    rank = q * observations
    index = bisect_left(counts, rank, 0, len(counts) - 1)
    if index == len(counts) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[index - 1] if index else 0.0
    below = counts[index - 1] if index else 0.0
    in_bucket = counts[index] - below
    if in_bucket == 0:
        return None
    return start + (bounds[index] - start) * (rank - below) / in_bucket


def _running_max(counts: Iterable[float]) -> Iterator[float]:
    """Yield the counts made non-decreasing, as PromQL forces bucket monotonicity."""
    highest = -math.inf
    for count in counts:
        highest = max(highest, count)
        yield highest
