"""What `diagnose` reads and returns: the findings, the thresholds and one tick's readings.

`Context` builds, once per tick, the readings the cause checks compare with the thresholds:
each application's connections on a server (`App`), each guarded pool (`Pool`) and each
database (`Server`), from the `Observation` and, when given, the trends in the `SeriesStore`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Literal, get_args

from poolwarden.errors import ConfigError, ProbeError
from poolwarden.probe.postgres import PROBE_APPLICATION_NAME, ServerSnapshot
from poolwarden.probe.scrape import ScrapeResult
from poolwarden.watch.observation import Observation
from poolwarden.watch.series import SeriesStore

Cause = Literal[
    "pool_oversized",
    "pool_undersized",
    "connection_leak",
    "idle_in_transaction",
    "slow_queries",
    "lock_contention",
    "noisy_neighbor",
    "database_down",
    "server_saturated",
    "target_down",
]
CAUSES: tuple[Cause, ...] = get_args(Cause)

# What `record_diagnosis` keeps in the store, named like Prometheus recording rules
# (level:metric:operation) and summed over the scrape's other labels. The pool counters and
# wait buckets are the very series `measures.record_measures` keeps: the store holds them once.
APP_CONNECTIONS = "database_application_state:client_connections:sum"
USABLE = "database:usable_connections"
USED = "target_pool:db_client_connection_count_used:sum"
CHECKOUTS = "target_pool:db_client_connection_use_time_seconds_count:sum"
USE_SECONDS = "target_pool:db_client_connection_use_time_seconds_sum:sum"
REJECTIONS = "target_pool:poolwarden_pool_rejections_total:sum"
TIMEOUTS = "target_pool:db_client_connection_timeouts_total:sum"
LEAKS = "target_pool:poolwarden_pool_leaks_total:sum"
WAIT_BUCKETS = "target_pool:db_client_connection_wait_time_seconds_bucket:sum"
# Per pool: the scrape's samples (name, labels besides pool_name) -> the store's series.
POOL_SERIES: tuple[tuple[str, dict[str, str], str], ...] = (
    ("db_client_connection_count", {"state": "used"}, USED),
    ("db_client_connection_use_time_seconds_count", {}, CHECKOUTS),
    ("db_client_connection_use_time_seconds_sum", {}, USE_SECONDS),
    ("poolwarden_pool_rejections_total", {}, REJECTIONS),
    ("db_client_connection_timeouts_total", {}, TIMEOUTS),
    ("poolwarden_pool_leaks_total", {}, LEAKS),
)

NO_NAME = "(no application_name)"
_REPLICA_SUFFIX = re.compile(r"[-_.]\d+$")  # orders-api-2 is a replica of orders-api
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class DiagnosisThresholds:
    """The limits the decision rules compare with; defaults and reasons in docs/diagnose.md."""

    near_full_ratio: float = 0.9  # client / usable connections at which the server is full
    dominant_share: float = 0.5  # share of client connections that makes one app the holder
    idle_share: float = 0.5  # share of the holder's connections idle: it hoards, not works
    budget_share: float = 0.85  # share of usable slots a remedy sizes the pools to
    free_ratio: float = 0.7  # undersized only while client / usable is at most this
    quiet_active_ratio: float = 0.5  # ... and active / usable at most this
    busy_active_ratio: float = 0.5  # active / usable at which the server is saturated
    pool_wait_p95_s: float = 0.1  # a pool's wait p95 that counts as waiting (PoolWaitHigh)
    pgbouncer_wait_s: float = 1.0  # a PgBouncer pool's oldest client wait that counts
    idle_in_transaction_s: float = 30.0  # idle in a transaction this long is a finding
    slow_query_s: float = 60.0  # a statement running this long is a finding
    busy_sessions: int = 5  # active sessions that make slow queries "many"
    lock_waits: int = 3  # sessions waiting on locks that make contention
    recent_window_s: float = 60.0  # window of failure and leak increases and wait p95
    trend_window_s: float = 300.0  # window of growth trends
    trend_min_span_s: float = 60.0  # a trend must span this long,
    trend_min_points: int = 5  # ... hold this many samples,
    leak_growth: float = 3.0  # ... and grow by this many connections

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"DiagnosisThresholds.{f.name}={value} must be positive")


@dataclass(frozen=True, slots=True)
class Finding:
    """A root cause: its class, how sure (0..1), whom to blame, why, and what to change."""

    cause: Cause
    confidence: float
    culprit: str
    database: str  # the Observation's database key ("" when a pool's database is unknown)
    evidence: dict[str, float]
    summary: str
    remedy: str


# --- what the checks read ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class App:
    """One application's client connections on a server, summed over users and databases."""

    name: str
    user: str  # the user holding most of its connections ("" when unknown)
    total: int
    active: int
    idle: int
    idle_in_transaction: int

    def states(self) -> dict[str, int]:
        return {"total": self.total, "active": self.active, "idle": self.idle,
                "idle in transaction": self.idle_in_transaction}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Pool:
    """One guarded pool of one app target, as scraped and, where the store allows, lately."""

    target: str
    name: str
    database: str
    max: float
    used: float
    pending: float
    failures: float  # rejections (or timeouts) in recent_window_s, else since the app started
    leaks: float  # the same, recent when `leaks_recent`
    wait_p95_s: float | None  # over recent_window_s, else since the app started
    leaks_recent: bool

    def waiting(self, th: DiagnosisThresholds) -> bool:
        slow = self.wait_p95_s is not None and self.wait_p95_s >= th.pool_wait_p95_s
        return self.pending > 0 or self.failures > 0 or slow

    def belongs_to(self, app: str) -> bool:
        """True when `app` (an application_name) names this pool, its target or its service."""
        names = {self.name, self.target, _REPLICA_SUFFIX.sub("", self.target)}
        return app.lower() in {n.lower() for n in names}


@dataclass(frozen=True, slots=True)
class Server:
    """One database as the checks see it: its snapshot (None when refused) and its pools."""

    database: str
    snap: ServerSnapshot | None
    usable: int  # 0 when unknown (refused before any snapshot was recorded)
    clients: int
    active: int
    apps: tuple[App, ...]  # most connections first, the probe left out
    pools: tuple[Pool, ...]
    full: bool
    holder: App | None  # the app holding at least dominant_share of the connections

    @property
    def refused(self) -> bool:
        return self.snap is None

    def pool_groups(self) -> dict[str, list[Pool]]:
        """Group the pools by name: the replicas of a service share their pool's name."""
        groups: dict[str, list[Pool]] = {}
        for pool in self.pools:
            groups.setdefault(pool.name, []).append(pool)
        return groups

    def headline(self) -> str:
        if self.refused:
            return f"database '{self.database}' refuses connections (53300, too many clients)"
        return f"database '{self.database}' at {self.clients}/{self.usable} usable connections"

    def finding(self, cause: Cause, confidence: float, culprit: str,
                evidence: dict[str, float], summary: str, remedy: str) -> Finding:  # fmt: skip
        return make_finding(cause, confidence, culprit, self.database, evidence, summary, remedy)


class Context:
    """The observation, the optional store and the thresholds, with readings built once."""

    def __init__(self, obs: Observation, store: SeriesStore | None, th: DiagnosisThresholds):
        self.obs, self.store, self.th, self.now = obs, store, th, obs.at

    @property
    def recent_s(self) -> float:
        limit = self.store.max_age_s if self.store is not None else math.inf
        return min(self.th.recent_window_s, limit)

    def points(self, name: str, labels: Mapping[str, str], seconds: float) -> tuple[Point, ...]:
        if self.store is None:
            return ()
        return self.store.window(name, labels, min(seconds, self.store.max_age_s), self.now)

    def pools(self) -> list[Pool]:
        out: list[Pool] = []
        for target, scrape in self.obs.targets.items():
            if isinstance(scrape, ScrapeResult):
                database = self._database_of(target)
                out.extend(self._pool(target, name, database, scrape) for name in scrape.pools())
        return out

    def _database_of(self, target: str) -> str:
        info = self.obs.target_info.get(target)
        if info is not None and info.database:
            return info.database
        # With one database watched, every target uses it.
        return next(iter(self.obs.databases)) if len(self.obs.databases) == 1 else ""

    def _pool(self, target: str, name: str, database: str, s: ScrapeResult) -> Pool:
        # The guard also counts a deadline rejection as an OTel timeout: read one, not both.
        metric, series = "poolwarden_pool_rejections_total", REJECTIONS
        if not s.samples(metric):
            metric, series = "db_client_connection_timeouts_total", TIMEOUTS
        failures = sample_sum(s, metric, pool_name=name) or 0.0
        leaks = sample_sum(s, "poolwarden_pool_leaks_total", pool_name=name) or 0.0
        p95, recent = _quantile(0.95, wait_buckets(s, name).items()), False
        if self.store is not None:  # what happened lately, rather than since the app started
            labels, seconds = {"target": target, "pool": name}, self.recent_s
            f = self.store.increase(series, labels, seconds, self.now)
            k = self.store.increase(LEAKS, labels, seconds, self.now)
            failures = failures if f is None else f
            leaks, recent = (leaks, False) if k is None else (k, True)
            inf = self.store.window(WAIT_BUCKETS, {**labels, "le": "+Inf"}, seconds, self.now)
            if len(inf) >= 2:
                p95 = self.store.histogram_quantile(0.95, WAIT_BUCKETS, labels, seconds, self.now)
        return Pool(
            target=target, name=name, database=database,
            max=sample_sum(s, "db_client_connection_max", pool_name=name) or 0.0,
            used=sample_sum(s, "db_client_connection_count", pool_name=name, state="used") or 0.0,
            pending=sample_sum(s, "db_client_connection_pending_requests", pool_name=name) or 0.0,
            failures=failures, leaks=leaks, wait_p95_s=p95, leaks_recent=recent,
        )  # fmt: skip

    def server(self, db: str, result: ServerSnapshot | ProbeError, pools: list[Pool]) -> Server:
        if isinstance(result, ServerSnapshot):
            snap: ServerSnapshot | None = result
            apps, usable = apps_of(result), result.usable_connections
            clients, active = result.client_connections, result.by_state.get("active", 0)
        else:  # refused with 53300: the last recorded tick says who held the slots
            snap, apps = None, self._recorded_apps(db)
            last = self.points(USABLE, {"database": db}, self.th.trend_window_s)
            usable = int(last[-1][1]) if last else 0
            clients, active = max(usable, sum(a.total for a in apps)), sum(a.active for a in apps)
        full = snap is None or (usable > 0 and clients / usable >= self.th.near_full_ratio)
        share = apps[0].total / clients if apps and clients else 0.0
        holder = apps[0] if share >= self.th.dominant_share else None
        return Server(db, snap, usable, clients, active, tuple(apps), tuple(pools), full, holder)

    def _recorded_apps(self, db: str) -> list[App]:
        latest: dict[tuple[str, str], Point] = {}
        for labels in self.store.label_sets(APP_CONNECTIONS) if self.store else ():
            points = self.points(APP_CONNECTIONS, labels, self.th.trend_window_s)
            if points and labels.get("database") == db:
                latest[labels["application_name"], labels["state"]] = points[-1]
        last_tick = max((t for t, _ in latest.values()), default=None)
        counts: dict[str, Counter[str]] = {}
        for (app, state), (t, value) in latest.items():
            if t == last_tick:
                counts.setdefault(app, Counter())[state] = int(value)
        apps = [App(app, "", c["total"], c["active"], c["idle"], c["idle in transaction"])
                for app, c in counts.items()]  # fmt: skip
        return sorted(apps, key=lambda a: (-a.total, a.name))

    def grows(self, name: str, labels: dict[str, str]) -> float | None:
        """Return a series' growth when it rose without falling over the trend window."""
        th = self.th
        points = self.points(name, labels, th.trend_window_s)
        if len(points) < th.trend_min_points or points[-1][0] - points[0][0] < th.trend_min_span_s:
            return None
        if any(b[1] < a[1] for a, b in pairwise(points)):
            return None
        growth = points[-1][1] - points[0][1]
        return growth if growth >= th.leak_growth else None


def apps_of(snap: ServerSnapshot) -> list[App]:
    counts: dict[str, Counter[str]] = {}
    users: dict[str, Counter[str]] = {}
    for g in snap.groups:
        if g.application_name != PROBE_APPLICATION_NAME:
            name = g.application_name or NO_NAME
            counts.setdefault(name, Counter())[g.state] += g.count
            users.setdefault(name, Counter())[g.usename] += g.count
    apps = [
        App(name, users[name].most_common(1)[0][0], c.total(), c["active"], c["idle"],
             c["idle in transaction"] + c["idle in transaction (aborted)"])
        for name, c in counts.items()
    ]  # fmt: skip
    return sorted(apps, key=lambda a: (-a.total, a.name))


def sample_sum(s: ScrapeResult, name: str, **labels: str) -> float | None:
    """Return the sum of the samples `name` carrying `labels`; None when there is none."""
    found = [
        x.value for x in s.samples(name) if all(x.labels.get(k) == v for k, v in labels.items())
    ]
    return math.fsum(found) if found else None


def wait_buckets(s: ScrapeResult, pool: str) -> dict[str, float]:
    buckets: dict[str, float] = {}
    for x in s.samples("db_client_connection_wait_time_seconds_bucket"):
        if x.labels.get("pool_name") == pool:
            buckets[x.labels["le"]] = buckets.get(x.labels["le"], 0.0) + x.value
    return buckets


def _quantile(q: float, buckets: Iterable[tuple[str, float]]) -> float | None:
    """Return the q-quantile of cumulative buckets (PromQL's interpolation); None if empty."""
    pairs = sorted((float(le), count) for le, count in buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank, lower, below = q * pairs[-1][1], 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return None


def make_finding(cause: Cause, confidence: float, culprit: str, database: str,
             evidence: dict[str, float], summary: str, remedy: str) -> Finding:  # fmt: skip
    rounded = {k: round(float(v), 3) for k, v in evidence.items()}
    return Finding(
        cause, round(min(confidence, 1.0), 2), culprit, database, rounded, summary, remedy
    )
