"""Concurrency limit algorithms the admission core reads its limit from.

Each algorithm is fed one sample per released connection: the database hold time
(acquire to release, in seconds), the in-flight count when that request was admitted,
and whether the work was dropped (timed out or failed under load). Each keeps its limit
inside ``[min_limit, max_limit]`` (``max_limit`` is the pool's max size) and never above
the optional ``budget`` (this replica's share of the server's connections).

The algorithms follow Netflix concurrency-limits (``FixedLimit``, ``AIMDLimit``,
``Gradient2Limit`` behind a ``WindowedLimit``); formulas and defaults are in
``docs/guard-admission.md``. They are not thread-safe on their own: the admission core
calls them under its lock, so give each admission its own limit object.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from poolwarden.errors import ConfigError

__all__ = ["AIMDLimit", "ConcurrencyLimit", "FixedLimit", "Gradient2Limit"]

_log = logging.getLogger("poolwarden.guard")

# Netflix's ExpAvgMeasurement averages this many first samples plainly before it
# switches to the exponential average, so one odd first window cannot set the baseline.
_LONG_RTT_WARMUP = 10


@runtime_checkable
class ConcurrencyLimit(Protocol):
    """A concurrency limit that learns from hold-time samples."""

    @property
    def limit(self) -> int:
        """Return the current limit (at least 1)."""
        ...

    def on_sample(self, rtt_s: float, inflight: int, dropped: bool) -> None:
        """Record one released request: hold time, in-flight at admission, dropped or not."""
        ...


def _check_positive_int(owner: str, field: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{owner}: {field}={value} must be at least 1")


class _BoundedLimit:
    """Keep an estimate inside ``[min_limit, max_limit]`` and never above the budget."""

    __slots__ = ("_budget", "_estimate", "_limit", "max_limit", "min_limit")

    def __init__(
        self, *, min_limit: int, max_limit: int, initial_limit: int, budget: int | None
    ) -> None:
        owner = type(self).__name__
        _check_positive_int(owner, "min_limit", min_limit)
        _check_positive_int(owner, "max_limit", max_limit)
        if min_limit > max_limit:
            raise ConfigError(
                f"{owner}: min_limit={min_limit} is above max_limit={max_limit} "
                "(the pool's max size); lower min_limit or raise the pool's max size"
            )
        if budget is not None:
            _check_positive_int(owner, "budget", budget)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self._budget = budget
        self._estimate = float(initial_limit)
        self._limit = 0
        self._set(initial_limit)

    @property
    def limit(self) -> int:
        """Return the current limit."""
        return self._limit

    @property
    def budget(self) -> int | None:
        """Return the cap from the connection budget, or None when there is none."""
        return self._budget

    @budget.setter
    def budget(self, value: int | None) -> None:
        if value is not None:
            _check_positive_int(type(self).__name__, "budget", value)
        self._budget = value
        self._set(self._estimate)

    @property
    def ceiling(self) -> int:
        """Return the highest limit allowed now: ``min(max_limit, budget)``."""
        if self._budget is None:
            return self.max_limit
        return min(self.max_limit, self._budget)

    def _set(self, value: float) -> None:
        # The budget wins over min_limit: a budget below min_limit still caps the limit.
        self._estimate = min(max(value, float(self.min_limit)), float(self.ceiling))
        new = max(1, int(self._estimate))
        if new != self._limit:
            _log.debug("%s limit %d -> %d", type(self).__name__, self._limit, new)
            self._limit = new


class FixedLimit(_BoundedLimit):
    """A limit that only changes when you set it (or the budget caps it)."""

    __slots__ = ()

    def __init__(self, limit: int, *, budget: int | None = None) -> None:
        super().__init__(min_limit=limit, max_limit=limit, initial_limit=limit, budget=budget)

    def set_limit(self, limit: int) -> None:
        """Change the limit; call the admission's ``refresh()`` so waiters see it."""
        _check_positive_int("FixedLimit", "limit", limit)
        self.min_limit = self.max_limit = limit
        self._set(limit)

    def on_sample(self, rtt_s: float, inflight: int, dropped: bool) -> None:
        """Ignore the sample: a fixed limit does not learn."""


class AIMDLimit(_BoundedLimit):
    """Additive increase, multiplicative decrease on drops and slow samples (per sample)."""

    __slots__ = ("backoff_ratio", "timeout_s")

    def __init__(
        self,
        max_limit: int,
        *,
        min_limit: int = 1,
        initial_limit: int | None = None,
        backoff_ratio: float = 0.9,
        timeout_s: float = 5.0,
        budget: int | None = None,
    ) -> None:
        if not 0.5 <= backoff_ratio < 1.0:
            raise ConfigError(f"AIMDLimit: backoff_ratio={backoff_ratio} must be in [0.5, 1.0)")
        if not 0.0 < timeout_s < math.inf:
            raise ConfigError(f"AIMDLimit: timeout_s={timeout_s} must be a positive number")
        self.backoff_ratio = backoff_ratio
        self.timeout_s = timeout_s
        initial = max_limit if initial_limit is None else initial_limit
        super().__init__(
            min_limit=min_limit, max_limit=max_limit, initial_limit=initial, budget=budget
        )

    def on_sample(self, rtt_s: float, inflight: int, dropped: bool) -> None:
        """Back off on a drop or a sample over ``timeout_s``; grow by one while busy."""
        current = self._limit
        if dropped or rtt_s > self.timeout_s:
            # Always lose at least one, even where int(current * ratio) == current.
            self._set(max(1, min(current - 1, int(current * self.backoff_ratio))))
        elif inflight * 2 >= current:
            self._set(current + 1)


class Gradient2Limit(_BoundedLimit):
    """Netflix Gradient2: shrink while short-term latency exceeds the long-term baseline.

    Samples are gathered in windows of at least ``window_s`` seconds; a window with fewer
    than ``min_window_samples`` samples is discarded, and samples under ``min_rtt_s``
    are ignored. Each complete window feeds its mean hold time and its largest in-flight
    count to one update (see ``docs/guard-admission.md``). Drops are ignored, as in
    Netflix: latency, not errors, drives this limit.
    """

    __slots__ = (
        "_clock",
        "_long_count",
        "_long_rtt",
        "_short_rtt",
        "_win_count",
        "_win_end",
        "_win_inflight",
        "_win_sum",
        "long_window",
        "min_rtt_s",
        "min_window_samples",
        "queue_size",
        "rtt_tolerance",
        "smoothing",
        "window_s",
    )

    _win_end: float
    _win_sum: float
    _win_count: int
    _win_inflight: int

    def __init__(
        self,
        max_limit: int,
        *,
        min_limit: int = 1,
        initial_limit: int | None = None,
        smoothing: float = 0.2,
        queue_size: int = 4,
        long_window: int = 600,
        rtt_tolerance: float = 1.5,
        window_s: float = 1.0,
        min_window_samples: int = 10,
        min_rtt_s: float = 100e-6,
        budget: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_gradient2(smoothing, queue_size, long_window, rtt_tolerance, window_s)
        _check_positive_int("Gradient2Limit", "min_window_samples", min_window_samples)
        self.smoothing = smoothing
        self.queue_size = queue_size
        self.long_window = long_window
        self.rtt_tolerance = rtt_tolerance
        self.window_s = window_s
        self.min_window_samples = min_window_samples
        self.min_rtt_s = min_rtt_s
        self._clock = clock
        self._long_rtt = 0.0
        self._long_count = 0
        self._short_rtt = 0.0
        self._reset_window(clock())
        initial = max_limit if initial_limit is None else initial_limit
        super().__init__(
            min_limit=min_limit, max_limit=max_limit, initial_limit=initial, budget=budget
        )

    @property
    def long_rtt_s(self) -> float:
        """Return the long-term (baseline) mean hold time, 0.0 before the first window."""
        return self._long_rtt

    @property
    def short_rtt_s(self) -> float:
        """Return the mean hold time of the last complete window, 0.0 before it."""
        return self._short_rtt

    def on_sample(self, rtt_s: float, inflight: int, dropped: bool) -> None:
        """Add a sample to the current window; update the limit when the window closes."""
        if rtt_s < self.min_rtt_s:
            return
        self._win_sum += rtt_s
        self._win_count += 1
        self._win_inflight = max(self._win_inflight, inflight)
        now = self._clock()
        if now < self._win_end:
            return
        count, total, inflight_max = self._win_count, self._win_sum, self._win_inflight
        self._reset_window(now)
        if count >= self.min_window_samples:
            self._update(total / count, inflight_max)

    def _reset_window(self, now: float) -> None:
        self._win_end = now + self.window_s
        self._win_sum = 0.0
        self._win_count = 0
        self._win_inflight = 0

    def _update(self, short_rtt: float, inflight: int) -> None:
        self._short_rtt = short_rtt
        long_rtt = self._add_long(short_rtt)
        if long_rtt / short_rtt > 2.0:
            # Latency is back to normal after a long overload: pull the baseline down
            # faster than the slow average would, or the limit would stay high for minutes.
            self._long_rtt *= 0.95
        if inflight < self._estimate / 2:
            return  # app-limited: low latency here says nothing about a higher limit
        gradient = max(0.5, min(1.0, self.rtt_tolerance * long_rtt / short_rtt))
        target = self._estimate * gradient + self.queue_size
        self._set(self._estimate * (1.0 - self.smoothing) + target * self.smoothing)

    def _add_long(self, sample: float) -> float:
        if self._long_count < _LONG_RTT_WARMUP:
            self._long_count += 1
            self._long_rtt += (sample - self._long_rtt) / self._long_count
        else:
            factor = 2.0 / (self.long_window + 1)
            self._long_rtt = self._long_rtt * (1.0 - factor) + sample * factor
        return self._long_rtt


def _check_gradient2(
    smoothing: float, queue_size: int, long_window: int, rtt_tolerance: float, window_s: float
) -> None:
    if not 0.0 < smoothing <= 1.0:
        raise ConfigError(f"Gradient2Limit: smoothing={smoothing} must be in (0, 1]")
    if queue_size < 0:
        raise ConfigError(f"Gradient2Limit: queue_size={queue_size} must be 0 or more")
    _check_positive_int("Gradient2Limit", "long_window", long_window)
    if not 1.0 <= rtt_tolerance < math.inf:
        raise ConfigError(f"Gradient2Limit: rtt_tolerance={rtt_tolerance} must be at least 1.0")
    if not 0.0 < window_s < math.inf:
        raise ConfigError(f"Gradient2Limit: window_s={window_s} must be a positive number")
