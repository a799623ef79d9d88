"""The guard's metrics: the nine OpenTelemetry `db.client.connection.*` instruments, in Prometheus form.

Each guarded pool records into its own `PoolMetrics` (plain counters and fixed-bucket
histograms, updated in O(1) on the hot path). A `GuardCollector` turns every registered
pool's `PoolMetrics` and live pool state into metric families at scrape time, the way
prometheus_client's own `GCCollector` does, so nothing is computed between scrapes.

| OTel instrument | Prometheus name | kind |
|---|---|---|
| db.client.connection.count{state} | db_client_connection_count{state="used"/"idle"} | gauge |
| db.client.connection.max | db_client_connection_max | gauge |
| db.client.connection.idle.max | db_client_connection_idle_max | gauge |
| db.client.connection.idle.min | db_client_connection_idle_min | gauge |
| db.client.connection.pending_requests | db_client_connection_pending_requests | gauge |
| db.client.connection.timeouts | db_client_connection_timeouts_total | counter |
| db.client.connection.wait_time | db_client_connection_wait_time_seconds | histogram |
| db.client.connection.use_time | db_client_connection_use_time_seconds | histogram |
| db.client.connection.create_time | db_client_connection_create_time_seconds | histogram |

plus `poolwarden_pool_rejections_total{reason}`, `poolwarden_pool_limit` and
`poolwarden_pool_leaks_total`. The OTel attribute `db.client.connection.pool.name` becomes
the label `pool_name` (Prometheus labels cannot hold dots).
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, get_args

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from poolwarden.errors import ConfigError
from poolwarden.guard.admission import RejectReason

__all__ = ["GuardCollector", "PoolMetrics", "PoolState", "collector_for"]

# Seconds. OTel gives no bucket advice for the pool histograms; these cover a sub-ms
# checkout up to the 30 s default timeouts of the pools we guard.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)


@dataclass(frozen=True, slots=True)
class PoolState:
    """What the wrapped pool holds right now; every field always present."""

    used: int
    idle: int
    max: int
    idle_max: int
    idle_min: int
    pending: int  # requests waiting inside the library's own pool, beyond the guard


class Histogram:
    """A fixed-bucket histogram; `observe` is a bisect and two additions."""

    __slots__ = ("_buckets", "_counts", "_sum")

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self._buckets = tuple(buckets)
        self._counts = [0] * (len(self._buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (caller holds the owning PoolMetrics' lock)."""
        self._counts[bisect.bisect_left(self._buckets, value)] += 1
        self._sum += value

    @property
    def count(self) -> int:
        """Return the number of observations."""
        return sum(self._counts)

    @property
    def sum(self) -> float:
        """Return the sum of observations."""
        return self._sum

    def cumulative(self) -> list[tuple[str, float]]:
        """Return Prometheus buckets: (upper bound, cumulative count), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*self._buckets, float("inf")), self._counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class PoolMetrics:
    """Counters and histograms of one guarded pool, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.wait_time = Histogram()
        self.use_time = Histogram()
        self.create_time = Histogram()
        self.timeouts = 0
        self.leaks = 0
        self.rejections = dict.fromkeys(REJECT_REASONS, 0)

    def observe_wait(self, seconds: float) -> None:
        """Record the time one request waited for its connection."""
        with self._lock:
            self.wait_time.observe(seconds)

    def observe_use(self, seconds: float) -> None:
        """Record how long one connection was held, borrow to return."""
        with self._lock:
            self.use_time.observe(seconds)

    def observe_create(self, seconds: float) -> None:
        """Record how long opening one new server connection took."""
        with self._lock:
            self.create_time.observe(seconds)

    def reject(self, reason: str) -> None:
        """Count a rejection; a `deadline` rejection is also an OTel timeout."""
        with self._lock:
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
            if reason == "deadline":
                self.timeouts += 1

    def leak(self) -> None:
        """Count a connection held past the leak threshold."""
        with self._lock:
            self.leaks += 1


class MetricsSource(Protocol):
    """What a collector needs from one guarded pool: its name, metrics and live numbers."""

    @property
    def name(self) -> str:
        """The pool's unique name (the `pool_name` label)."""

    @property
    def metrics(self) -> PoolMetrics:
        """The pool's counters and histograms."""

    def pool_state(self) -> PoolState:
        """Read the wrapped pool's live numbers."""

    def pending_requests(self) -> int:
        """Return how many requests wait in the guard's queue."""

    def current_limit(self) -> int:
        """Return the guard's in-flight limit."""


class GuardCollector(Collector):
    """Build the metric families of every registered pool at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, weakref.ref[MetricsSource]] = {}

    def add(self, source: MetricsSource) -> None:
        """Register a guarded pool; its name must be unique in this collector (OTel)."""
        with self._lock:
            existing = self._sources.get(source.name)
            if existing is not None and existing() is not None:
                raise ConfigError(
                    f"pool name {source.name!r} is already registered in this metrics "
                    "registry; give each guarded pool a unique name="
                )
            self._sources[source.name] = weakref.ref(source)

    def remove(self, name: str) -> None:
        """Forget a pool (e.g. when it is closed)."""
        with self._lock:
            self._sources.pop(name, None)

    def _live(self) -> list[MetricsSource]:
        with self._lock:
            pairs = [(name, ref()) for name, ref in self._sources.items()]
            for name, source in pairs:
                if source is None:
                    del self._sources[name]
        return sorted((s for _, s in pairs if s is not None), key=lambda s: s.name)

    def collect(self) -> Iterator[Metric]:
        """Yield one family per metric, with a sample per pool."""
        return iter(_Families(self._live()).build())


class _Families:
    """One scrape: read each pool once, then emit the families."""

    def __init__(self, sources: list[MetricsSource]) -> None:
        self.sources = sources

    def build(self) -> list[Metric]:
        return [*self._gauges(), *self._counters(), *self._histograms()]

    def _gauges(self) -> list[Metric]:
        count = GaugeMetricFamily(
            "db_client_connection_count",
            "Connections currently in the pool, by state (OTel db.client.connection.count).",
            labels=["pool_name", "state"],
        )
        simple: dict[str, tuple[str, Callable[[MetricsSource, PoolState], float]]] = {
            "db_client_connection_max": ("Most connections allowed.", lambda s, p: p.max),
            "db_client_connection_idle_max": (
                "Most idle connections allowed.",
                lambda s, p: p.idle_max,
            ),
            "db_client_connection_idle_min": (
                "Fewest idle connections kept.",
                lambda s, p: p.idle_min,
            ),
            "db_client_connection_pending_requests": (
                "Requests waiting for a connection (guard queue plus the pool's own).",
                lambda s, p: s.pending_requests() + p.pending,
            ),
            "poolwarden_pool_limit": (
                "The guard's current in-flight limit.",
                lambda s, p: s.current_limit(),
            ),
        }
        families = {
            n: GaugeMetricFamily(n, doc, labels=["pool_name"]) for n, (doc, _) in simple.items()
        }
        for source in self.sources:
            state = source.pool_state()
            count.add_metric([source.name, "used"], state.used)
            count.add_metric([source.name, "idle"], state.idle)
            for name, (_, read) in simple.items():
                families[name].add_metric([source.name], read(source, state))
        return [count, *families.values()]

    def _counters(self) -> list[Metric]:
        timeouts = CounterMetricFamily(
            "db_client_connection_timeouts",
            "Attempts to obtain a connection that timed out.",
            labels=["pool_name"],
        )
        rejections = CounterMetricFamily(
            "poolwarden_pool_rejections",
            "Requests the guard refused, by reason (queue_full, deadline, shed).",
            labels=["pool_name", "reason"],
        )
        leaks = CounterMetricFamily(
            "poolwarden_pool_leaks",
            "Connections held longer than the leak threshold.",
            labels=["pool_name"],
        )
        for source in self.sources:
            m = source.metrics
            with m._lock:
                timeouts.add_metric([source.name], m.timeouts)
                leaks.add_metric([source.name], m.leaks)
                for reason, value in m.rejections.items():
                    rejections.add_metric([source.name, reason], value)
        return [timeouts, rejections, leaks]

    def _histograms(self) -> list[Metric]:
        specs = {
            "wait_time": "Time it took to obtain a connection from the pool.",
            "use_time": "Time between borrowing a connection and returning it.",
            "create_time": "Time it took to create a new connection.",
        }
        out: list[Metric] = []
        for attr, doc in specs.items():
            family = HistogramMetricFamily(
                f"db_client_connection_{attr}_seconds", doc, labels=["pool_name"]
            )
            for source in self.sources:
                m = source.metrics
                with m._lock:
                    hist: Histogram = getattr(m, attr)
                    family.add_metric([source.name], hist.cumulative(), hist.sum)
            out.append(family)
        return out


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, GuardCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def collector_for(registry: CollectorRegistry | None) -> GuardCollector:
    """Return the one GuardCollector of `registry` (default: prometheus_client's), creating it."""
    target = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = GuardCollector()
            target.register(collector)
            _collectors[target] = collector
        return collector
