"""The few series a postmortem needs, kept in the store tick by tick.

`sample_recorder(store)` returns a recorder for `Watcher.add_recorder`: each tick it turns
the observation into `Sample`s (server connections, HTTP counters and p99, pool usage;
the names of `SampleName`) and writes them with `Store.record_samples`. A store that
fails is logged, never raised: the tick goes on. `summarize_window` reads samples back
into the figures of a postmortem's impact line. Names, labels and units:
docs/postmortem.md, "Samples".
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from typing import TYPE_CHECKING

from poolwarden._dsn import redact_dsn
from poolwarden.probe.postgres import ServerSnapshot
from poolwarden.probe.scrape import ScrapeResult
from poolwarden.watch.observation import Observation
from poolwarden.watch.series import SeriesStore

if TYPE_CHECKING:
    from poolwarden.watch.store import Store

__all__ = [
    "Sample",
    "SampleName",
    "SampleRecorder",
    "WindowSummary",
    "counter_rates",
    "sample_recorder",
    "summarize_window",
]

logger = logging.getLogger("poolwarden.watch.samples")
logger.addHandler(logging.NullHandler())

_HTTP = "http_server_request_duration_seconds"
_SERVER_ERROR = re.compile(r"5..")
# A server with hundreds of distinct application_names must not write hundreds of rows a
# tick: the busiest ones are kept by name, the rest summed under _OTHER_APPS.
_MAX_APPS = 12
_OTHER_APPS = "(other)"


class SampleName(StrEnum):
    """The series `sample_recorder` keeps; counters end in ``_total``."""

    SERVER_CONNECTIONS = "poolwarden_sample_server_connections"
    SERVER_USABLE = "poolwarden_sample_server_usable_connections"
    APP_CONNECTIONS = "poolwarden_sample_app_connections"
    HTTP_REQUESTS = "poolwarden_sample_http_requests_total"
    HTTP_ERRORS = "poolwarden_sample_http_errors_total"
    HTTP_P99 = "poolwarden_sample_http_p99_seconds"
    POOL_USED = "poolwarden_sample_pool_used"
    POOL_MAX = "poolwarden_sample_pool_max"
    POOL_PENDING = "poolwarden_sample_pool_pending"
    POOL_TIMEOUTS = "poolwarden_sample_pool_timeouts_total"
    POOL_REJECTIONS = "poolwarden_sample_pool_rejections_total"


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one series at one time (UTC)."""

    at: datetime
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """What the samples of a window say: requests, failures, peak connections, worst p99.

    A figure is None when no sample of its series fell in the window.
    """

    requests: float | None
    failed: float | None
    peak_connections: float | None
    usable_connections: float | None  # of the database at its peak
    peak_database: str  # "" when no connection sample
    peak_p99_seconds: float | None


class SampleRecorder:
    """Write each tick's samples to the store; see `sample_recorder`.

    Keeps the previous tick's HTTP histogram per target, for the p99 of the interval.
    One thread calls it (the watch loop's).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._buckets: dict[str, dict[float, float]] = {}
        self._failing = False

    def __call__(self, series: SeriesStore, obs: Observation) -> None:
        """Persist the samples of `obs`; log a failure once and go on."""
        try:
            rows, self._buckets = _observation_samples(obs, self._buckets)
            self._store.record_samples(rows)
        except Exception as exc:  # a store or probe quirk must not end the tick
            if not self._failing:
                reason = redact_dsn(" ".join(str(exc).split()[:20]))
                logger.warning(
                    "samples not stored in %s (%s: %s); the postmortem will lack figures "
                    "for this time",
                    self._store.target,
                    type(exc).__name__,
                    reason,
                )
            self._failing = True
            return
        if self._failing:
            logger.warning("samples stored again in %s", self._store.target)
        self._failing = False


def sample_recorder(store: Store) -> SampleRecorder:
    """Return a recorder for `Watcher.add_recorder` that keeps samples in `store`."""
    return SampleRecorder(store)


def _observation_samples(
    obs: Observation, previous: Mapping[str, Mapping[float, float]]
) -> tuple[list[Sample], dict[str, dict[float, float]]]:
    """Return the samples of one tick and the HTTP histograms to pass next time (pure)."""
    at = datetime.fromtimestamp(obs.at, UTC)
    rows: list[Sample] = []
    for database, result in obs.databases.items():
        if isinstance(result, ServerSnapshot):
            rows += _server_samples(at, database, result)
    histograms: dict[str, dict[float, float]] = {}
    for target, scrape in obs.targets.items():
        if not isinstance(scrape, ScrapeResult):
            continue
        info = obs.target_info.get(target)
        labels = {"target": target}
        if info is not None and info.database:
            labels["database"] = info.database
        rows += _pool_samples(at, labels, scrape)
        histograms[target] = _buckets(scrape)
        rows += _http_samples(at, labels, scrape, previous.get(target), histograms[target])
    return rows, histograms


def _server_samples(at: datetime, database: str, server: ServerSnapshot) -> Iterator[Sample]:
    labels = {"database": database}
    yield Sample(at, SampleName.SERVER_CONNECTIONS, labels, float(server.client_connections))
    yield Sample(at, SampleName.SERVER_USABLE, labels, float(server.usable_connections))
    by_app: dict[str, int] = defaultdict(int)
    for group in server.groups:
        by_app[group.application_name] += group.count
    ranked = sorted(by_app.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:_MAX_APPS])
    rest = sum(count for _, count in ranked[_MAX_APPS:])
    if rest:
        kept[_OTHER_APPS] = kept.get(_OTHER_APPS, 0) + rest
    for app, count in sorted(kept.items()):
        yield Sample(
            at, SampleName.APP_CONNECTIONS, {**labels, "application_name": app}, float(count)
        )


def _pool_samples(
    at: datetime, labels: Mapping[str, str], scrape: ScrapeResult
) -> Iterator[Sample]:
    gauges: tuple[tuple[SampleName, str, dict[str, str]], ...] = (
        (SampleName.POOL_USED, "db_client_connection_count", {"state": "used"}),
        (SampleName.POOL_MAX, "db_client_connection_max", {}),
        (SampleName.POOL_PENDING, "db_client_connection_pending_requests", {}),
        (SampleName.POOL_TIMEOUTS, "db_client_connection_timeouts_total", {}),
        (SampleName.POOL_REJECTIONS, "poolwarden_pool_rejections_total", {}),
    )
    for pool in scrape.pools():
        for name, metric, extra in gauges:
            value = _total(scrape, metric, pool_name=pool, **extra)
            if value is not None:
                yield Sample(at, name, {**labels, "pool": pool}, value)


def _http_samples(
    at: datetime,
    labels: Mapping[str, str],
    scrape: ScrapeResult,
    before: Mapping[float, float] | None,
    now: Mapping[float, float],
) -> Iterator[Sample]:
    requests = _total(scrape, f"{_HTTP}_count")
    if requests is None:
        return
    errors = math.fsum(
        s.value
        for s in scrape.samples(f"{_HTTP}_count")
        if _SERVER_ERROR.fullmatch(s.labels.get("http_response_status_code", ""))
    )
    # Counters, not ratios: impact over any window is a difference of two samples, so a
    # missed scrape loses resolution, never requests.
    yield Sample(at, SampleName.HTTP_REQUESTS, labels, requests)
    yield Sample(at, SampleName.HTTP_ERRORS, labels, errors)
    if before is not None:
        p99 = _bucket_quantile(0.99, _increase(before, now))
        if p99 is not None:
            yield Sample(at, SampleName.HTTP_P99, labels, p99)


def _total(scrape: ScrapeResult, name: str, **labels: str) -> float | None:
    """Return the sum of the samples `name` carrying `labels`, or None when there is none."""
    found = [
        s.value
        for s in scrape.samples(name)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return math.fsum(found) if found else None


def _buckets(scrape: ScrapeResult) -> dict[float, float]:
    """Return the HTTP histogram's cumulative counts summed over routes, by bound."""
    counts: dict[float, float] = defaultdict(float)
    for sample in scrape.samples(f"{_HTTP}_bucket"):
        try:
            bound = float(sample.labels.get("le", "nan"))
        except ValueError:
            continue
        if sample.name == f"{_HTTP}_bucket" and not math.isnan(bound):
            counts[bound] += sample.value
    return dict(counts)


def _increase(before: Mapping[float, float], now: Mapping[float, float]) -> dict[float, float]:
    """Return each bucket's increase; after a reset (a count went down), the counts since it."""
    if any(now.get(bound, 0.0) < count for bound, count in before.items()):
        return dict(now)
    return {bound: count - before.get(bound, 0.0) for bound, count in now.items()}


def _bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Return the q-quantile of cumulative bucket counts as PromQL does; None without data.

    Linear within the bucket holding the rank; in the +Inf bucket, the highest finite bound.
    """
    ordered = sorted(buckets.items())
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, max(below, count)
    return lower


# -- reading -------------------------------------------------------------------------------


def summarize_window(
    samples: Iterable[Sample], scope: Mapping[str, str] | None = None
) -> WindowSummary:
    """Summarize samples already cut to a window, keeping those in `scope`.

    A sample is in scope unless it carries one of the scope's labels with another value
    (server samples have no ``target``: they stay in a target's scope). Requests and
    failures are counter increases summed over targets; a counter that went down restarted.
    """
    wanted = dict(scope or {})
    kept = [s for s in samples if all(s.labels.get(k, v) == v for k, v in wanted.items())]
    requests = _increase_of(kept, SampleName.HTTP_REQUESTS)
    failed = _increase_of(kept, SampleName.HTTP_ERRORS)
    peak = max(
        (s for s in kept if s.name == SampleName.SERVER_CONNECTIONS),
        key=lambda s: s.value,
        default=None,
    )
    usable = None
    database = ""
    if peak is not None:
        database = peak.labels.get("database", "")
        usable = next(
            (
                s.value
                for s in kept
                if s.name == SampleName.SERVER_USABLE
                and s.at == peak.at
                and s.labels == peak.labels
            ),
            None,
        )
    p99s = [s.value for s in kept if s.name == SampleName.HTTP_P99]
    return WindowSummary(
        requests=requests,
        failed=failed,
        peak_connections=None if peak is None else peak.value,
        usable_connections=usable,
        peak_database=database,
        peak_p99_seconds=max(p99s) if p99s else None,
    )


def counter_rates(samples: Iterable[Sample], name: str) -> list[tuple[datetime, float]]:
    """Return the per-second rate of counter `name` between consecutive samples.

    Each label set's rate is taken on its own, then summed by the later sample's time
    (targets probed in one tick share it). A counter that went down restarted.
    """
    rates: dict[datetime, float] = defaultdict(float)
    for points in _by_labels(samples, name).values():
        for before, after in pairwise(points):
            seconds = (after.at - before.at).total_seconds()
            if seconds > 0:
                rates[after.at] += _step(before.value, after.value) / seconds
    return sorted(rates.items())


def _by_labels(
    samples: Iterable[Sample], name: str
) -> dict[tuple[tuple[str, str], ...], list[Sample]]:
    """Group the samples `name` by label set, each list in time order."""
    groups: dict[tuple[tuple[str, str], ...], list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.name == name:
            groups[tuple(sorted(sample.labels.items()))].append(sample)
    for points in groups.values():
        points.sort(key=lambda s: s.at)
    return dict(groups)


def _increase_of(samples: Sequence[Sample], name: str) -> float | None:
    groups = _by_labels(samples, name)
    if not groups:
        return None
    return math.fsum(
        _step(before.value, after.value)
        for points in groups.values()
        for before, after in pairwise(points)
    )


def _step(before: float, after: float) -> float:
    """Return a counter's increase between two samples; after a restart, its new count."""
    return after - before if after >= before else after
