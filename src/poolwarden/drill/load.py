"""Open-loop load: requests sent at a fixed rate, whatever the service does with them.

Arrivals are scheduled in advance (`start + i / rate`) and each request's latency is
measured from its scheduled start, not from when the client got round to sending it, so
a stalled client or a full pool cannot hide queueing (no coordinated omission, as in
wrk2). Every outcome is counted once:

- **served**: the request returned;
- **rejected**: it raised an exception the classifier maps to ``"rejected"`` (a guard's
  `PoolSaturated`, a pool's `PoolTimeout`): a fast, deliberate refusal;
- **failed**: any other exception, counted by class name;
- **unserved**: still running `drain` seconds after arrivals stopped; it is cancelled.

The run is bounded: `int(rate * duration)` arrivals, then at most `drain` seconds; a
`stop` event ends the arrivals early. `record` sees every outcome as it happens (the drill
files each one under the phase its scheduled start fell in). `LatencyHistogram` keeps
percentiles in constant memory with 1 % relative precision, as HdrHistogram does.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["LatencyHistogram", "LoadResult", "LoadSecond", "Outcome", "open_loop"]

REJECTED = "rejected"
Outcome = Literal["served", "rejected", "failed"]
# (scheduled start on the monotonic clock, latency from it in seconds, outcome, error class)
Record = Callable[[float, float, Outcome, str], None]
# One timer per millisecond at most, instead of one per request: keeps the client cheap at
# high rates, while latency still counts from each request's scheduled start.
_MIN_SLEEP = 0.001


@dataclass(frozen=True, slots=True)
class LoadSecond:
    """Outcomes that completed in one second of the run (second 0 starts with the first arrival)."""

    second: int
    served: int
    rejected: int
    failed: int


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one open-loop run offered, and what became of each request.

    `offered == served + rejected + sum(failed.values()) + unserved` always holds.
    """

    # What was sent: the rate asked for, and how many arrivals that made.
    offered_rps: float
    offered: int
    # Outcomes: failed maps an exception's class name to its count.
    served: int
    rejected: int
    failed: dict[str, int]
    unserved: int
    # Wall time from the first arrival to the end of the drain (never less than the
    # duration), and the served throughput over it.
    window_s: float
    served_rps: float
    # Latency from the scheduled start, in seconds; None when there is no such request.
    served_p50_s: float | None
    served_p95_s: float | None
    served_p99_s: float | None
    rejected_p50_s: float | None
    rejected_p95_s: float | None
    rejected_p99_s: float | None
    # One bucket per second of the window, empty seconds included, by completion time.
    timeline: tuple[LoadSecond, ...]

    @property
    def failed_total(self) -> int:
        """Return the number of failed requests, all exception classes together."""
        return sum(self.failed.values())


def _percentile(values: list[float], q: float) -> float | None:
    """Return the nearest-rank `q` quantile of `values` (0 <= q <= 1), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Recorder:
    """Collect outcomes as (completion offset, latency) until the run is closed."""

    def __init__(
        self,
        start: float,
        classify: Callable[[BaseException], str] | None,
        record: Record | None = None,
    ) -> None:
        self.start = start
        self.classify = classify
        self.record = record
        self.closed = False
        self.served: list[tuple[float, float]] = []
        self.rejected: list[tuple[float, float]] = []
        self.failed: list[tuple[float, str]] = []

    async def run(self, request: Callable[[], Awaitable[None]], scheduled: float) -> None:
        """Run one request and record how it ended, timed from `scheduled`."""
        try:
            await request()
        except Exception as exc:
            self._record_error(exc, scheduled)
            return
        if not self.closed:  # a request that swallowed its cancel stays unserved
            now = time.monotonic()
            self.served.append((now - self.start, now - scheduled))
            if self.record is not None:
                self.record(scheduled, now - scheduled, "served", "")

    def _record_error(self, exc: Exception, scheduled: float) -> None:
        if self.closed:
            return
        now = time.monotonic()
        outcome: Outcome = "failed"
        if self.classify is not None and self.classify(exc) == REJECTED:
            outcome = "rejected"
            self.rejected.append((now - self.start, now - scheduled))
        else:
            self.failed.append((now - self.start, type(exc).__name__))
        if self.record is not None:
            self.record(scheduled, now - scheduled, outcome, type(exc).__name__)


async def open_loop(
    request: Callable[[], Awaitable[None]],
    *,
    rate: float,
    duration: float,
    drain: float,
    classify: Callable[[BaseException], str] | None = None,
    stop: asyncio.Event | None = None,
    record: Record | None = None,
) -> LoadResult:
    """Call `request` `rate` times a second for `duration` seconds; return what happened.

    `classify` maps an exception to ``"rejected"`` or anything else (a failure); without
    it every exception is a failure. Requests still running `drain` seconds after the last
    arrival are cancelled and counted as unserved. Setting `stop` ends the arrivals early
    (`offered` then counts the arrivals made); `record` is called once per outcome.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate={rate} must be a finite number of requests per second > 0")
    for name, value in (("duration", duration), ("drain", drain)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}={value} must be a finite number of seconds >= 0")
    total = int(rate * duration)
    start = time.monotonic()
    recorder = _Recorder(start, classify, record)
    tasks, total = await _arrive(recorder, request, rate, total, stop)
    await _drain(recorder, tasks, drain)
    window = time.monotonic() - start
    return _result(recorder, rate, total, window if stop is not None else max(window, duration))


async def _arrive(
    recorder: _Recorder,
    request: Callable[[], Awaitable[None]],
    rate: float,
    total: int,
    stop: asyncio.Event | None,
) -> tuple[set[asyncio.Task[None]], int]:
    """Launch up to `total` arrivals on schedule; return the tasks still running and the count."""
    tasks: set[asyncio.Task[None]] = set()
    start = recorder.start
    i = 0
    while i < total and not (stop is not None and stop.is_set()):
        # Launch every arrival that is due, then sleep until the next one.
        now = time.monotonic()
        while i < total and start + i / rate <= now:
            task = asyncio.create_task(recorder.run(request, start + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(start + i / rate - time.monotonic(), _MIN_SLEEP))
    return tasks, i


async def _drain(recorder: _Recorder, tasks: set[asyncio.Task[None]], drain: float) -> None:
    """Wait up to `drain` seconds for `tasks`, then cancel the rest and stop recording."""
    pending: set[asyncio.Task[None]] = set()
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain)
    recorder.closed = True
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _result(recorder: _Recorder, rate: float, total: int, window: float) -> LoadResult:
    served = [latency for _, latency in recorder.served]
    rejected = [latency for _, latency in recorder.rejected]
    failed = dict(sorted(Counter(name for _, name in recorder.failed).items()))
    done = len(served) + len(rejected) + len(recorder.failed)
    return LoadResult(
        offered_rps=rate,
        offered=total,
        served=len(served),
        rejected=len(rejected),
        failed=failed,
        unserved=total - done,
        window_s=window,
        served_rps=len(served) / window if window > 0 else 0.0,
        served_p50_s=_percentile(served, 0.50),
        served_p95_s=_percentile(served, 0.95),
        served_p99_s=_percentile(served, 0.99),
        rejected_p50_s=_percentile(rejected, 0.50),
        rejected_p95_s=_percentile(rejected, 0.95),
        rejected_p99_s=_percentile(rejected, 0.99),
        timeline=_timeline(recorder, window),
    )


def _timeline(recorder: _Recorder, window: float) -> tuple[LoadSecond, ...]:
    """Bucket outcomes by the second they completed in, covering the whole window."""
    seconds = max(1, math.ceil(window))
    counts = {kind: Counter[int]() for kind in ("served", "rejected", "failed")}
    for kind, rows in (
        ("served", recorder.served),
        ("rejected", recorder.rejected),
        ("failed", recorder.failed),
    ):
        for offset, _ in rows:
            counts[kind][min(seconds - 1, int(offset))] += 1
    return tuple(
        LoadSecond(s, counts["served"][s], counts["rejected"][s], counts["failed"][s])
        for s in range(seconds)
    )


class LatencyHistogram:
    """Latencies in log-spaced buckets (1 % wide) from 10 µs to 1 h: constant memory.

    `quantile(q)` returns the upper edge of the bucket holding the nearest-rank `q`
    quantile, so it overstates by at most 1 %, never understates (HdrHistogram's
    guarantee, with one significant digit less).
    """

    _LOW = 1e-5
    _GROWTH = 1.01
    _BUCKETS = math.ceil(math.log(3600 / 1e-5) / math.log(1.01)) + 1

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.count = 0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        """Count one latency (negative values count as 0; values above 1 h as 1 h)."""
        index = 0
        if seconds > self._LOW:
            index = min(self._BUCKETS - 1, math.ceil(math.log(seconds / self._LOW, self._GROWTH)))
        self.counts[index] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float | None:
        """Return the `q` quantile (0 <= q <= 1) in seconds, None when nothing was recorded."""
        if not self.count:
            return None
        rank = min(self.count, max(1, math.ceil(q * self.count)))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(self.max, self._LOW * self._GROWTH**index)
        return self.max  # pragma: no cover - the counts always reach the rank
