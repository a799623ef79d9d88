"""Capacity search: the pool size at which the database serves a workload best.

`plan_capacity(dsn, workload, ...)` measures throughput and latency with pgbench at chosen
pool sizes (pgbench clients = connections = the pool size), searches the size
coarse-to-fine, fits the universal scalability law and recommends the smallest size that
reaches 95 % of the peak throughput within the p99 SLO. The search (`search`), the fit
(`fit_usl`) and the choice (`choose`) are pure functions over `Point`s; only `PgbenchMeter`
does I/O.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from poolwarden._dsn import describe_target
from poolwarden.embedded import _bin
from poolwarden.errors import ConfigError
from poolwarden.plan.workload import Workload, initialise, pgbench_env, validate

__all__ = [
    "CapacityResult",
    "Point",
    "UslFit",
    "fit_usl",
    "plan_capacity",
]

_log = logging.getLogger("poolwarden.plan")

PEAK_SHARE = 0.95  # the pick must reach this share of the peak throughput
MIN_FIT_POINTS = 6  # as usl4j: fewer points leave sigma and kappa poorly determined
_MAX_EVALUATIONS = 64  # hard bound on the measurements one search may take
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement: throughput and latency with `size` connections busy."""

    size: int
    tps: float
    p50_ms: float
    p99_ms: float
    transactions: int
    seconds: float  # wall time this measurement took, start-up included


@dataclass(frozen=True, slots=True)
class UslFit:
    """The universal scalability law fitted to the points: X(N) = lambdaN / (1 + sigma(N-1) + kappaN(N-1))."""

    sigma: float  # contention: the serial share of the work
    kappa: float  # coherency: the cost of each pair of connections agreeing
    lam: float  # throughput of one connection
    peak_size: int | None  # N* = floor(sqrt((1-sigma)/kappa)); None when kappa = 0 (no peak)
    peak_tps: float  # X(N*), or X at the largest measured size when there is no peak
    points: int

    def throughput(self, size: float) -> float:
        """Return the fitted throughput at `size` connections."""
        n = size
        return self.lam * n / (1 + self.sigma * (n - 1) + self.kappa * n * (n - 1))


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """The outcome of a plan: every point measured, the fit, the peak and the pick."""

    workload: str
    target: str  # user@host:port/db, never a password
    max_size: int
    slo_ms: float | None
    seconds_per_point: float
    points: tuple[Point, ...]  # sorted by size
    fit: UslFit | None  # None with fewer than MIN_FIT_POINTS sizes
    peak: Point
    pick: Point
    reason: str
    measuring_seconds: float  # total wall time spent measuring


def fit_usl(
    points: tuple[Point, ...] | list[Point], min_points: int = MIN_FIT_POINTS
) -> UslFit | None:
    """Fit sigma and kappa by least squares as usl4j does; None with fewer than `min_points` sizes.

    lambda is the best throughput per connection; then N/(X/lambda) - 1 = sigma(N-1) + kappaN(N-1) is a
    linear least-squares problem without intercept. A negative coefficient is pinned to 0
    and the other refitted alone.
    """
    usable = [p for p in points if p.tps > 0]
    if len({p.size for p in usable}) < min_points:
        return None
    lam = max(p.tps / p.size for p in usable)
    rows = [(p.size - 1.0, p.size * (p.size - 1.0), p.size / (p.tps / lam) - 1) for p in usable]
    saa = sum(a * a for a, _, _ in rows)
    sbb = sum(b * b for _, b, _ in rows)
    sab = sum(a * b for a, b, _ in rows)
    say = sum(a * y for a, _, y in rows)
    sby = sum(b * y for _, b, y in rows)
    det = saa * sbb - sab * sab
    sigma, kappa = ((say * sbb - sby * sab) / det, (sby * saa - say * sab) / det) if det else (0, 0)
    if kappa < 0 or not det:
        sigma, kappa = (say / saa if saa else 0.0), 0.0
    if sigma < 0:
        sigma, kappa = 0.0, (sby / sbb if sbb else 0.0)
    sigma, kappa = min(max(sigma, 0.0), 1.0), max(kappa, 0.0)
    peak = math.floor(math.sqrt((1 - sigma) / kappa)) if kappa > 0 else None
    fit = UslFit(sigma, kappa, lam, peak, 0.0, len(usable))
    at = peak if peak else max(p.size for p in usable)
    return UslFit(sigma, kappa, lam, peak, fit.throughput(max(at, 1)), len(usable))


def search(
    measure: Callable[[int], Point], max_size: int, *, rise: float = 0.03, tolerance: float = 0.25
) -> dict[int, Point]:
    """Find the throughput peak in 1..max_size; return every point measured, by size.

    Coarse: sizes 1, 2, 4, ... (and `max_size`) while each beats the best so far by more
    than `rise`. Fine: shrink the bracket around the best size, probing the middle of its
    wider side, until both sides are 1 wide or the bracket is within `tolerance` x the
    best size (the curve is flat near its peak, so finer steps buy noise, not throughput).
    """
    cache: dict[int, Point] = {}

    def at(size: int) -> Point:
        if size not in cache:
            if len(cache) >= _MAX_EVALUATIONS:
                raise RuntimeError("capacity search exceeded its evaluation bound")
            cache[size] = measure(size)
        return cache[size]

    size, best = 1, at(1)
    while size < max_size:
        size = min(size * 2, max_size)
        point = at(size)
        if point.tps <= best.tps * (1 + rise):
            best = point if point.tps > best.tps else best
            break
        best = point
    sizes = sorted(cache)
    i = sizes.index(best.size)
    lo, hi = sizes[max(i - 1, 0)], sizes[min(i + 1, len(sizes) - 1)]
    b = best.size
    while max(b - lo, hi - b) > 1 and not (tolerance and hi - lo <= tolerance * b):
        x = b + (hi - b) // 2 if hi - b >= b - lo else b - (b - lo) // 2
        if at(x).tps > at(b).tps:
            lo, hi = (b, hi) if x > b else (lo, b)
            b = x
        else:
            lo, hi = (lo, x) if x > b else (x, hi)
    return cache


def choose(
    points: dict[int, Point] | list[Point] | tuple[Point, ...],
    slo_ms: float | None,
    share: float = PEAK_SHARE,
) -> tuple[Point, Point, str]:
    """Return (pick, peak, reason): the smallest size with `share` of the peak within the SLO."""
    ordered = sorted(points.values() if isinstance(points, dict) else points, key=lambda p: p.size)
    peak = max(ordered, key=lambda p: p.tps)
    within = [p for p in ordered if slo_ms is None or p.p99_ms <= slo_ms]
    if not within:
        pick = min(ordered, key=lambda p: p.p99_ms)
        return (
            pick,
            peak,
            (
                f"no size met p99 <= {slo_ms:g} ms; size {pick.size} has the lowest p99 "
                f"({pick.p99_ms:.1f} ms): the SLO needs faster transactions, not another pool size"
            ),
        )
    good = [p for p in within if p.tps >= share * peak.tps]
    slo = f" with p99 {_ms(good[0].p99_ms if good else 0)} <= {slo_ms:g} ms" if slo_ms else ""
    if good:
        pick = good[0]
        return (
            pick,
            peak,
            (
                f"size {pick.size} gives {pick.tps:.0f} tps, {pick.tps / peak.tps:.0%} of the peak "
                f"{peak.tps:.0f} tps at size {peak.size}{slo}; more connections add latency, "
                "not throughput"
            ),
        )
    pick = max(within, key=lambda p: p.tps)
    return (
        pick,
        peak,
        (
            f"the p99 SLO of {slo_ms:g} ms caps the pool at size {pick.size}: {pick.tps:.0f} tps, "
            f"{pick.tps / peak.tps:.0%} of the peak {peak.tps:.0f} tps at size {peak.size}"
        ),
    )


def refine_pick(
    measure: Callable[[int], Point],
    cache: dict[int, Point],
    slo_ms: float | None,
    tolerance: float = 0.25,
) -> None:
    """Bisect below the pick while a smaller unmeasured size might also qualify."""
    for _ in range(_MAX_EVALUATIONS):
        pick, _, _ = choose(cache, slo_ms)
        below = [s for s in cache if s < pick.size]
        if not below or len(cache) >= _MAX_EVALUATIONS:
            return
        gap = pick.size - max(below)
        if gap <= 1 or (tolerance and gap <= tolerance * pick.size):
            return
        x = max(below) + gap // 2
        cache[x] = measure(x)


def fill_for_fit(measure: Callable[[int], Point], cache: dict[int, Point], max_size: int) -> None:
    """Measure the sizes farthest from any measured one until the fit has enough sizes."""
    while len(cache) < min(MIN_FIT_POINTS, max_size):
        free = [s for s in range(1, max_size + 1) if s not in cache]
        x = max(free, key=lambda s: min(abs(s - m) for m in cache))
        cache[x] = measure(x)


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


class PgbenchMeter:
    """Measure one pool size: run pgbench with that many clients, parse its log."""

    def __init__(self, dsn: str, workload: Workload, seconds: float, workdir: Path) -> None:
        self.dsn, self.workload, self.seconds, self.workdir = dsn, workload, seconds, workdir
        self._conninfo, self._env = pgbench_env(dsn)
        self._scripts = workload.script_args(workdir)
        self._cores = os.cpu_count() or 1

    def __call__(self, size: int) -> Point:
        """Run pgbench at `size` clients for the configured seconds; return the point."""
        logdir = Path(tempfile.mkdtemp(prefix=f"n{size}-", dir=self.workdir))
        # -n: no vacuum (custom scripts may have no pgbench tables); threads <= cores.
        argv = [_bin("pgbench"), "-n", "-c", str(size), "-j", str(min(size, self._cores))]
        argv += ["-T", str(max(1, round(self.seconds))), "-M", "prepared", "-l"]
        argv += ["--log-prefix", str(logdir / "log"), *self._scripts, self._conninfo]
        started = time.monotonic()
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=self._env, cwd=logdir,
            timeout=self.seconds + 120, check=False,
        )  # fmt: skip
        took = time.monotonic() - started
        if proc.returncode != 0 or not (match := _TPS.search(proc.stdout)):
            raise ConfigError(
                f"pgbench with {size} clients on {describe_target(self.dsn)} failed: "
                f"{_last_line(proc.stderr)}; check the workload or lower --max-size"
            )
        latencies = sorted(_latencies(logdir))
        return Point(
            size, float(match[1]), _pct(latencies, 0.50), _pct(latencies, 0.99),
            len(latencies), took,
        )  # fmt: skip


def _latencies(logdir: Path) -> Iterator[float]:
    # Log line: client_id transaction_no time_us script_no time_epoch time_us [lag]
    for path in logdir.glob("log*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                yield int(fields[2]) / 1000.0


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def niced(pid: int | None, nice: int) -> Iterator[None]:
    """Lower the server's CPU priority while measuring, then restore it.

    Backends inherit the postmaster's priority. On a machine shared with pgbench, a
    niced server stands in for a separate database host (as bench/_server.py does), so
    pgbench's own scheduling delay does not pass for server latency.
    """
    if pid is None or nice <= 0:
        yield
        return
    try:
        before = os.getpriority(os.PRIO_PROCESS, pid)
        os.setpriority(os.PRIO_PROCESS, pid, before + nice)
    except OSError as exc:
        _log.info("cannot renice the server (pid %s): %s", pid, exc)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # not root: the priority cannot be raised back
            os.setpriority(os.PRIO_PROCESS, pid, before)


def plan_capacity(
    dsn: str,
    workload: Workload,
    *,
    max_size: int = 64,
    slo_ms: float | None = None,
    seconds: float = 5.0,
    scale: int = 10,
    on_point: Callable[[Point], None] | None = None,
) -> CapacityResult:
    """Prepare the workload, search the pool size, fit the USL and choose the pick."""
    if max_size < 1:
        raise ConfigError(f"--max-size {max_size}: give at least 1")
    if seconds <= 0:
        raise ConfigError(f"--seconds {seconds:g}: give a positive number of seconds")
    validate(workload, dsn)
    if workload.needs_init():
        initialise(dsn, scale)
    with tempfile.TemporaryDirectory(prefix="poolwarden-plan-") as tmp:
        meter = PgbenchMeter(dsn, workload, seconds, Path(tmp))
        meter(min(2, max_size))  # warm-up, discarded: a cold cache would flatter size 2 over 1

        def measure(size: int) -> Point:
            point = meter(size)
            if on_point is not None:
                on_point(point)
            return point

        cache = search(measure, max_size)
        refine_pick(measure, cache, slo_ms)
        fill_for_fit(measure, cache, max_size)
    points = tuple(sorted(cache.values(), key=lambda p: p.size))
    pick, peak, reason = choose(points, slo_ms)
    return CapacityResult(
        workload.name, describe_target(dsn), max_size, slo_ms, seconds, points,
        fit_usl(points), peak, pick, reason, sum(p.seconds for p in points),
    )  # fmt: skip
