"""Name the root cause of a connection problem, whom to blame and the setting to change.

`diagnose(obs, store)` reads one tick's `Observation` and, when given, the trends in a
`SeriesStore` that `record_diagnosis` fills, and returns `Finding`s, most certain first: the
cause (one of `CAUSES`), how sure, the culprit (application_name, pool, blocking pid or
database), the numbers that say so, one line in the product's voice and the remedy. Pure:
no I/O, no clock (the time is `obs.at`). Decision rules, evidence and confidence of each
cause: docs/diagnose.md.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Literal, get_args

from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError, ProbeError, TooManyConnections
from poolwarden.probe.pgbouncer import PgBouncerSnapshot
from poolwarden.probe.postgres import PROBE_APPLICATION_NAME, LockWait, ServerSnapshot
from poolwarden.probe.scrape import ScrapeResult
from poolwarden.watch.observation import Observation
from poolwarden.watch.series import SeriesStore

__all__ = ["CAUSES", "Cause", "DiagnosisThresholds", "Finding", "diagnose", "record_diagnosis"]

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
]
CAUSES: tuple[Cause, ...] = get_args(Cause)

# What `record_diagnosis` keeps in the store, named like Prometheus recording rules
# (level:metric:operation) and summed over the scrape's other labels. The pool counters and
# wait buckets are the very series `measures.record_measures` keeps: the store holds them once.
_APP_CONNECTIONS = "database_application_state:client_connections:sum"
_USABLE = "database:usable_connections"
_USED = "target_pool:db_client_connection_count_used:sum"
_CHECKOUTS = "target_pool:db_client_connection_use_time_seconds_count:sum"
_REJECTIONS = "target_pool:poolwarden_pool_rejections_total:sum"
_TIMEOUTS = "target_pool:db_client_connection_timeouts_total:sum"
_LEAKS = "target_pool:poolwarden_pool_leaks_total:sum"
_WAIT_BUCKETS = "target_pool:db_client_connection_wait_time_seconds_bucket:sum"
# Per pool: the scrape's samples (name, labels besides pool_name) -> the store's series.
_POOL_SERIES: tuple[tuple[str, dict[str, str], str], ...] = (
    ("db_client_connection_count", {"state": "used"}, _USED),
    ("db_client_connection_use_time_seconds_count", {}, _CHECKOUTS),
    ("poolwarden_pool_rejections_total", {}, _REJECTIONS),
    ("db_client_connection_timeouts_total", {}, _TIMEOUTS),
    ("poolwarden_pool_leaks_total", {}, _LEAKS),
)

_NO_NAME = "(no application_name)"
_PLAN = " - see 'poolwarden plan'"
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


def diagnose(
    obs: Observation,
    store: SeriesStore | None = None,
    *,
    thresholds: DiagnosisThresholds = DiagnosisThresholds(),
) -> list[Finding]:
    """Return the root causes `obs` (and the trends in `store`) point to, most certain first.

    A healthy server yields an empty list. `store` adds trends (leak growth, recent
    failures and waits); without it the counters since start stand in.
    """
    ctx = _Context(obs, store, thresholds)
    pools = ctx.pools()
    found: list[Finding] = []
    for db, result in obs.databases.items():
        if isinstance(result, ProbeError) and not isinstance(result, TooManyConnections):
            found.append(_database_down(db, result))
            continue
        server = ctx.server(db, result, [p for p in pools if p.database == db])
        for check in _SERVER_CHECKS:
            found.extend(check(server, ctx))
    found.extend(_pool_leaks(pools, ctx))
    found.extend(_pgbouncer_waits(ctx))
    return sorted(found, key=lambda f: (-f.confidence, CAUSES.index(f.cause), f.culprit))


def record_diagnosis(store: SeriesStore, obs: Observation) -> None:
    """Append at `obs.at` the series `diagnose` reads its trends from (before `diagnose`)."""
    for db, result in obs.databases.items():
        if isinstance(result, ServerSnapshot):
            store.append(_USABLE, {"database": db}, obs.at, result.usable_connections)
            for app in _apps(result):
                for state, value in app.states().items():
                    labels = {"database": db, "application_name": app.name, "state": state}
                    store.append(_APP_CONNECTIONS, labels, obs.at, value)
    for target, scrape in obs.targets.items():
        if isinstance(scrape, ScrapeResult):
            for pool in scrape.pools():
                _record_pool(store, obs.at, target, pool, scrape)


def _record_pool(store: SeriesStore, at: float, target: str, pool: str, s: ScrapeResult) -> None:
    labels = {"target": target, "pool": pool}
    for metric, more, series in _POOL_SERIES:
        value = _sum(s, metric, pool_name=pool, **more)
        if value is not None:  # absent is no data, not zero (as record_measures does)
            store.append(series, labels, at, value)
    for le, count in _wait_buckets(s, pool).items():
        store.append(_WAIT_BUCKETS, {**labels, "le": le}, at, count)


# --- what the checks read ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _App:
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
class _Pool:
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
class _Server:
    """One database as the checks see it: its snapshot (None when refused) and its pools."""

    database: str
    snap: ServerSnapshot | None
    usable: int  # 0 when unknown (refused before any snapshot was recorded)
    clients: int
    active: int
    apps: tuple[_App, ...]  # most connections first, the probe left out
    pools: tuple[_Pool, ...]
    full: bool
    holder: _App | None  # the app holding at least dominant_share of the connections

    @property
    def refused(self) -> bool:
        return self.snap is None

    def pool_groups(self) -> dict[str, list[_Pool]]:
        """Group the pools by name: the replicas of a service share their pool's name."""
        groups: dict[str, list[_Pool]] = {}
        for pool in self.pools:
            groups.setdefault(pool.name, []).append(pool)
        return groups

    def headline(self) -> str:
        if self.refused:
            return f"database '{self.database}' refuses connections (53300, too many clients)"
        return f"database '{self.database}' at {self.clients}/{self.usable} usable connections"

    def finding(self, cause: Cause, confidence: float, culprit: str,
                evidence: dict[str, float], summary: str, remedy: str) -> Finding:  # fmt: skip
        return _finding(cause, confidence, culprit, self.database, evidence, summary, remedy)


class _Context:
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

    def pools(self) -> list[_Pool]:
        out: list[_Pool] = []
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

    def _pool(self, target: str, name: str, database: str, s: ScrapeResult) -> _Pool:
        # The guard also counts a deadline rejection as an OTel timeout: read one, not both.
        metric, series = "poolwarden_pool_rejections_total", _REJECTIONS
        if not s.samples(metric):
            metric, series = "db_client_connection_timeouts_total", _TIMEOUTS
        failures = _sum(s, metric, pool_name=name) or 0.0
        leaks = _sum(s, "poolwarden_pool_leaks_total", pool_name=name) or 0.0
        p95, recent = _quantile(0.95, _wait_buckets(s, name).items()), False
        if self.store is not None:  # what happened lately, rather than since the app started
            labels, seconds = {"target": target, "pool": name}, self.recent_s
            f = self.store.increase(series, labels, seconds, self.now)
            k = self.store.increase(_LEAKS, labels, seconds, self.now)
            failures = failures if f is None else f
            leaks, recent = (leaks, False) if k is None else (k, True)
            inf = self.store.window(_WAIT_BUCKETS, {**labels, "le": "+Inf"}, seconds, self.now)
            if len(inf) >= 2:
                p95 = self.store.histogram_quantile(0.95, _WAIT_BUCKETS, labels, seconds, self.now)
        return _Pool(
            target=target, name=name, database=database,
            max=_sum(s, "db_client_connection_max", pool_name=name) or 0.0,
            used=_sum(s, "db_client_connection_count", pool_name=name, state="used") or 0.0,
            pending=_sum(s, "db_client_connection_pending_requests", pool_name=name) or 0.0,
            failures=failures, leaks=leaks, wait_p95_s=p95, leaks_recent=recent,
        )  # fmt: skip

    def server(self, db: str, result: ServerSnapshot | ProbeError, pools: list[_Pool]) -> _Server:
        if isinstance(result, ServerSnapshot):
            snap: ServerSnapshot | None = result
            apps, usable = _apps(result), result.usable_connections
            clients, active = result.client_connections, result.by_state.get("active", 0)
        else:  # refused with 53300: the last recorded tick says who held the slots
            snap, apps = None, self._recorded_apps(db)
            last = self.points(_USABLE, {"database": db}, self.th.trend_window_s)
            usable = int(last[-1][1]) if last else 0
            clients, active = max(usable, sum(a.total for a in apps)), sum(a.active for a in apps)
        full = snap is None or (usable > 0 and clients / usable >= self.th.near_full_ratio)
        share = apps[0].total / clients if apps and clients else 0.0
        holder = apps[0] if share >= self.th.dominant_share else None
        return _Server(db, snap, usable, clients, active, tuple(apps), tuple(pools), full, holder)

    def _recorded_apps(self, db: str) -> list[_App]:
        latest: dict[tuple[str, str], Point] = {}
        for labels in self.store.label_sets(_APP_CONNECTIONS) if self.store else ():
            points = self.points(_APP_CONNECTIONS, labels, self.th.trend_window_s)
            if points and labels.get("database") == db:
                latest[labels["application_name"], labels["state"]] = points[-1]
        last_tick = max((t for t, _ in latest.values()), default=None)
        counts: dict[str, Counter[str]] = {}
        for (app, state), (t, value) in latest.items():
            if t == last_tick:
                counts.setdefault(app, Counter())[state] = int(value)
        apps = [_App(app, "", c["total"], c["active"], c["idle"], c["idle in transaction"])
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


def _apps(snap: ServerSnapshot) -> list[_App]:
    counts: dict[str, Counter[str]] = {}
    users: dict[str, Counter[str]] = {}
    for g in snap.groups:
        if g.application_name != PROBE_APPLICATION_NAME:
            name = g.application_name or _NO_NAME
            counts.setdefault(name, Counter())[g.state] += g.count
            users.setdefault(name, Counter())[g.usename] += g.count
    apps = [
        _App(name, users[name].most_common(1)[0][0], c.total(), c["active"], c["idle"],
             c["idle in transaction"] + c["idle in transaction (aborted)"])
        for name, c in counts.items()
    ]  # fmt: skip
    return sorted(apps, key=lambda a: (-a.total, a.name))


def _sum(s: ScrapeResult, name: str, **labels: str) -> float | None:
    """Return the sum of the samples `name` carrying `labels`; None when there is none."""
    found = [
        x.value for x in s.samples(name) if all(x.labels.get(k) == v for k, v in labels.items())
    ]
    return math.fsum(found) if found else None


def _wait_buckets(s: ScrapeResult, pool: str) -> dict[str, float]:
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


def _finding(cause: Cause, confidence: float, culprit: str, database: str,
             evidence: dict[str, float], summary: str, remedy: str) -> Finding:  # fmt: skip
    rounded = {k: round(float(v), 3) for k, v in evidence.items()}
    return Finding(
        cause, round(min(confidence, 1.0), 2), culprit, database, rounded, summary, remedy
    )


# --- the causes ------------------------------------------------------------------------------


def _pool_oversized(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """A full server, and one app hoarding its slots or pools allowed more than it has."""
    th, holder, groups = ctx.th, server.holder, server.pool_groups()
    configured = sum(p.max for p in server.pools)
    over = server.usable > 0 and configured > server.usable
    if not server.full or (holder is None and not over):
        return
    if holder is not None:
        name = next((n for n, g in groups.items() if g[0].belongs_to(holder.name)), "")
        hoards = holder.idle >= th.idle_share * holder.total
        confidence, culprit = (0.85 if hoards else 0.6) + 0.1 * over, holder.name
    else:  # load spread over apps, but the pools together may open more than the server has
        name = max(groups, key=lambda n: sum(p.max for p in groups[n]))
        confidence, culprit = 0.75, name
    group = groups.get(name, [])
    held = holder.total if holder is not None else sum(p.used for p in group)
    evidence = {
        "client_connections": server.clients, "usable": server.usable, "held_by_culprit": held,
        "culprit_idle": holder.idle if holder else 0,
        "pool_max": max((p.max for p in group), default=0.0), "replicas": len(group),
        "pools_max_total": configured, "refused": server.refused,
    }  # fmt: skip
    summary = f"{server.headline()}: {culprit} holds {held:g}"
    summary += f" ({holder.idle} idle)" if holder is not None else ""
    summary += f"; its pools may open {configured:g} of {server.usable} usable" if over else ""
    remedy = _resize(server, th, culprit, group)
    yield server.finding("pool_oversized", confidence, culprit, evidence, summary, remedy)


def _resize(server: _Server, th: DiagnosisThresholds, culprit: str, group: list[_Pool]) -> str:
    """Say what max_size per replica keeps every pool within budget_share of the usable slots."""
    n, pool_max, usable = len(group), max((p.max for p in group), default=0.0), server.usable
    # The rest of the budget goes to the other pools' max sizes, or to what the other
    # applications hold now if that is more (unguarded apps have no max size to read).
    others = max(
        sum(a.total for a in server.apps if a.name != culprit),
        sum(p.max for p in server.pools) - sum(p.max for p in group),
    )
    size = max(1, (math.floor(usable * th.budget_share) - int(others)) // (n or 1))
    if n and usable and pool_max > size:
        fits = f"{n} replica{'s' if n > 1 else ''} x {size} = {n * size} fits {usable} usable"
        return f"lower {culprit}'s pool max_size from {pool_max:g} to {size} ({fits}){_PLAN}"
    cap = f"at most {size}" if usable else "well under the server's usable slots"
    return f"cap {culprit}'s connection pool to {cap} connections{_PLAN}"


def _noisy_neighbor(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """A full server whose main holder is not the app whose pool waits."""
    holder = server.holder
    if not server.full or holder is None:
        return
    own = [p for p in server.pools if p.belongs_to(holder.name)]
    victims = [p for p in server.pools if p.waiting(ctx.th) and not p.belongs_to(holder.name)]
    if not victims or any(p.waiting(ctx.th) for p in own):
        return
    victim = max(victims, key=lambda p: (p.pending, p.failures, p.wait_p95_s or 0.0))
    evidence = {
        "client_connections": server.clients, "usable": server.usable,
        "held_by_culprit": holder.total, "culprit_idle": holder.idle,
        "victim_pending": victim.pending, "victim_failures": victim.failures,
        "victim_wait_p95_s": victim.wait_p95_s or 0.0,
    }  # fmt: skip
    summary = (
        f"{server.headline()}: {holder.name} holds {holder.total} ({holder.idle} idle) while "
        f"{victim.target}'s pool '{victim.name}' waits ({victim.pending:g} pending, "
        f"{victim.failures:g} refused)"
    )
    limit = f"ALTER ROLE {holder.user} CONNECTION LIMIT n" if holder.user else "a role limit"
    remedy = (
        f"cap {holder.name}'s connections (its pool's max_size, or {limit}) so that "
        f"{victim.target} gets its share{_PLAN}"
    )
    confidence = 0.8 if own else 0.9  # an unguarded neighbour is the classic case
    yield server.finding("noisy_neighbor", confidence, holder.name, evidence, summary, remedy)


def _pool_undersized(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """A pool that waits while the server has plenty of free, quiet slots."""
    th, usable = ctx.th, server.usable
    roomy = server.clients <= th.free_ratio * usable
    if server.refused or not roomy or server.active > th.quiet_active_ratio * usable:
        return
    free = usable - server.clients
    for name, group in server.pool_groups().items():
        waiting = [p for p in group if p.waiting(th)]
        if not waiting:
            continue
        at_max = all(0 < p.max <= p.used for p in waiting)
        confidence = (0.75 if at_max else 0.5) + 0.1 * any(p.failures for p in waiting)
        pool_max, p95 = max(p.max for p in group), max((p.wait_p95_s or 0.0) for p in group)
        size = int(min(pool_max * 2, pool_max + max(1, int(free * th.budget_share) // len(group))))
        pending, failures = sum(p.pending for p in group), sum(p.failures for p in group)
        used = sum(p.used for p in group)
        evidence = {
            "pending": pending, "failures": failures, "wait_p95_s": p95, "used": used,
            "pool_max": pool_max, "replicas": len(group), "free": free, "usable": usable,
            "active": server.active,
        }  # fmt: skip
        wait = f", p95 wait {p95:.2f} s" if p95 else ""
        summary = (
            f"pool '{name}': {pending:g} waiting, {failures:g} refused{wait} at {used:g}/"
            f"{pool_max:g} in use, while database '{server.database}' has {free} of {usable} "
            f"slots free and {server.active} active"
        )
        remedy = f"raise {name}'s pool max_size from {pool_max:g} to {size}{_PLAN}"
        yield server.finding("pool_undersized", confidence, name, evidence, summary, remedy)


def _idle_in_transaction(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """Sessions idle inside a transaction for long; blame the app holding the most of them."""
    limit = ctx.th.idle_in_transaction_s
    sessions = server.snap.idle_in_transaction if server.snap else ()
    stuck = [s for s in sessions if s.idle_s >= limit]
    if not stuck:
        return
    by_app: dict[str, list[float]] = {}
    for s in stuck:
        by_app.setdefault(s.application_name or _NO_NAME, []).append(s.idle_s)
    culprit = max(by_app, key=lambda a: (len(by_app[a]), max(by_app[a])))
    mine = [s for s in stuck if (s.application_name or _NO_NAME) == culprit]
    oldest = max(by_app[culprit])
    confidence = 0.7 + 0.1 * (len(mine) >= 3) + 0.1 * (oldest >= 10 * limit)
    evidence = {
        "sessions": len(stuck), "culprit_sessions": len(mine), "oldest_idle_s": oldest,
        "oldest_transaction_s": max(s.transaction_age_s for s in mine), "threshold_s": limit,
    }  # fmt: skip
    summary = (
        f"{len(stuck)} session(s) idle in a transaction for over {limit:g} s on "
        f"'{server.database}'; {culprit} holds {len(mine)}, the oldest idle {oldest:.0f} s"
    )
    remedy = (
        f"commit or roll back in {culprit} before slow work; as a backstop ALTER ROLE "
        f"{mine[0].usename or 'its role'} SET idle_in_transaction_session_timeout = "
        f"'{math.ceil(2 * limit)}s'"
    )
    yield server.finding("idle_in_transaction", confidence, culprit, evidence, summary, remedy)


def _slow_queries(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """The oldest running statement is older than slow_query_s; blame its application."""
    snap, limit = server.snap, ctx.th.slow_query_s
    query = snap.oldest_active_query if snap else None
    if snap is None or query is None or query.age_s < limit:
        return
    active = snap.by_state.get("active", 0)
    # A statement waiting on a lock is slow because of the holder: lock_contention says whom.
    many = 0.15 * (active >= ctx.th.busy_sessions)
    confidence = 0.4 if query.wait_event_type == "Lock" else 0.65 + many
    culprit = query.application_name or _NO_NAME
    evidence = {
        "oldest_query_s": query.age_s,
        "pid": query.pid,
        "active": active,
        "threshold_s": limit,
    }
    summary = (
        f"database '{server.database}': pid {query.pid} ({culprit}) has run one statement for "
        f"{query.age_s:.0f} s; {active} session(s) active"
    )
    remedy = (
        f"EXPLAIN pid {query.pid}'s statement (pg_stat_activity.query) and fix its plan; "
        f"ALTER ROLE {query.usename or 'its role'} SET statement_timeout = '{math.ceil(limit)}s'"
    )
    yield server.finding("slow_queries", confidence, culprit, evidence, summary, remedy)


def _lock_contention(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """Several sessions wait on locks; blame the blocker at the head of their queue."""
    waits = server.snap.lock_waits if server.snap else ()
    if len(waits) < ctx.th.lock_waits:
        return
    behind = Counter(pid for w in waits for pid in _root_blockers(w, waits))
    pid = max(behind, key=lambda p: (behind[p], -p))
    app = _blocker_apps(waits).get(pid) or _NO_NAME
    culprit, longest = f"pid {pid} ({app})", max(w.waiting_s for w in waits)
    evidence = {
        "waiting": len(waits), "blocked_by_culprit": behind[pid], "longest_wait_s": longest,
        "blocking_pid": pid,
    }  # fmt: skip
    confidence = 0.75 + 0.15 * (behind[pid] == len(waits))
    summary = (
        f"{len(waits)} session(s) wait on locks on '{server.database}', the longest "
        f"{longest:.1f} s; {behind[pid]} of them queue behind {culprit}"
    )
    remedy = (
        f"end pid {pid}'s transaction (SELECT pg_terminate_backend({pid}) if it is stuck) and "
        f"keep {app}'s transactions short; SET lock_timeout in the waiting applications"
    )
    yield server.finding("lock_contention", confidence, culprit, evidence, summary, remedy)


def _root_blockers(wait: LockWait, waits: Sequence[LockWait]) -> set[int]:
    """Follow the blocked-by chain to the sessions that block without waiting themselves."""
    blocked_by = {w.pid: w.blocked_by for w in waits}
    frontier, seen, roots = list(wait.blocked_by), {wait.pid}, set()
    while frontier:  # bounded: each pid is expanded once
        pid = frontier.pop()
        if pid not in seen:
            seen.add(pid)
            if pid in blocked_by:
                frontier.extend(blocked_by[pid])
            else:
                roots.add(pid)
    return roots or set(wait.blocked_by)  # a deadlock cycle has no head: blame its members


def _blocker_apps(waits: Iterable[LockWait]) -> dict[int, str]:
    apps = {w.pid: w.application_name for w in waits}
    for w in waits:
        # The names come from a join that drops a blocker which ended meanwhile.
        if len(w.blocked_by) == len(w.blocked_by_applications):
            apps.update(zip(w.blocked_by, w.blocked_by_applications, strict=True))
    return apps


def _server_saturated(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """Many sessions at once with no single holder: the load itself exceeds the server."""
    busy = server.usable > 0 and server.active >= ctx.th.busy_active_ratio * server.usable
    if not (server.full or busy) or server.holder is not None:
        return
    over = server.usable > 0 and sum(p.max for p in server.pools) > server.usable
    # Refused with nothing recorded about who held the slots: a guess, and said as one.
    confidence = 0.6 + 0.2 * busy - 0.2 * over if server.apps else 0.4
    top = server.apps[0] if server.apps else None
    share = top.total / server.clients if top and server.clients else 0.0
    evidence = {
        "active": server.active, "client_connections": server.clients, "usable": server.usable,
        "applications": len(server.apps), "largest_share": share,
    }  # fmt: skip
    if top is None:
        summary = f"{server.headline()}; no earlier snapshot says who holds the slots"
        remedy = "see who holds the slots: 'poolwarden status' as a superuser (reserved slots)"
    else:
        summary = (
            f"{server.headline()}, {server.active} active, spread over {len(server.apps)} "
            f"app(s); the largest, {top.name}, holds {share:.0%}"
        )
        remedy = (
            "queue work instead of adding connections: lower the pools' max_size so that active "
            f"sessions stay near the server's cores, or put PgBouncer (transaction mode) in front{_PLAN}"
        )
    yield server.finding("server_saturated", confidence, server.database, evidence, summary, remedy)


def _app_leaks(server: _Server, ctx: _Context) -> Iterator[Finding]:
    """An application's idle-in-transaction (or idle) connections growing without falling."""
    for app in server.apps:
        for state, confidence in (("idle in transaction", 0.75), ("idle", 0.45)):
            labels = {"database": server.database, "application_name": app.name, "state": state}
            growth = ctx.grows(_APP_CONNECTIONS, labels)
            if growth is not None:
                now = app.states()[state]
                evidence = {"growth": growth, state.replace(" ", "_"): now}
                summary = (
                    f"{app.name}'s {state} connections on '{server.database}' grew by "
                    f"{growth:g} to {now} over {ctx.th.trend_window_s:g} s without falling"
                )
                remedy = f"find the code path in {app.name} that takes a connection and keeps it"
                yield server.finding(
                    "connection_leak", confidence, app.name, evidence, summary, remedy
                )
                break  # the stronger signal is enough


def _pool_leaks(pools: list[_Pool], ctx: _Context) -> Iterator[Finding]:
    """The guard counted leaks, or a pool's used count climbs while its throughput does not."""
    groups: dict[tuple[str, str], list[_Pool]] = {}
    for pool in pools:
        groups.setdefault((pool.database, pool.name), []).append(pool)
    for (database, name), group in groups.items():
        leaks, climb = sum(p.leaks for p in group), sum(_climb(p, ctx) for p in group)
        if leaks <= 0 and climb <= 0:
            continue
        recent = all(p.leaks_recent for p in group)
        confidence = (0.9 if recent else 0.6) if leaks > 0 else 0.7
        used, pool_max = sum(p.used for p in group), max(p.max for p in group)
        evidence = {"leaks": leaks, "used_growth": climb, "used": used, "pool_max": pool_max}
        if leaks > 0:
            when = f" in the last {ctx.th.recent_window_s:g} s" if recent else " since start"
            said = f"{leaks:g} connection(s) held past the leak threshold{when}"
        else:
            said = f"its used connections grew by {climb:g} while its throughput did not"
        summary = f"pool '{name}': {said}; {used:g}/{pool_max:g} in use"
        remedy = (
            f"read the acquiring stacks the guard logs for pool '{name}' (poolwarden.guard) and "
            "return each connection with a context manager"
        )
        yield _finding("connection_leak", confidence, name, database, evidence, summary, remedy)


def _climb(pool: _Pool, ctx: _Context) -> float:
    """Return how much the pool's used count grew, if its throughput did not grow with it."""
    labels = {"target": pool.target, "pool": pool.name}
    growth = ctx.grows(_USED, labels)
    if growth is None:
        return 0.0
    points = ctx.points(_CHECKOUTS, labels, ctx.th.trend_window_s)
    mid = len(points) // 2
    # More traffic explains more connections in use; a leak serves no more requests.
    if mid and _per_second(points[mid:]) > 1.1 * _per_second(points[: mid + 1]):
        return 0.0
    return growth


def _per_second(points: Sequence[Point]) -> float:
    """Return a counter's average rate from its first to its last point (0 across a reset)."""
    (t0, v0), (t1, v1) = points[0], points[-1]
    return max(v1 - v0, 0.0) / (t1 - t0) if t1 > t0 else 0.0


def _pgbouncer_waits(ctx: _Context) -> Iterator[Finding]:
    """A PgBouncer pool with clients waiting while the server behind it has room."""
    dbs = ctx.obs.databases
    database = next(iter(dbs)) if len(dbs) == 1 else ""  # else which server is behind is unknown
    behind = ctx.obs.server(database) if database else None
    confidence = 0.75 if behind is not None and behind.used_ratio <= ctx.th.free_ratio else 0.5
    for name, snap in ctx.obs.pgbouncers.items():
        if not isinstance(snap, PgBouncerSnapshot):
            continue
        for pool in snap.pools:
            if pool.cl_waiting <= 0 or pool.maxwait_s < ctx.th.pgbouncer_wait_s:
                continue
            entry = next((d for d in snap.databases if d.name == pool.database), None)
            size = entry.pool_size if entry is not None else snap.config.default_pool_size
            culprit = f"pgbouncer '{name}' pool {pool.database}/{pool.user}"
            evidence = {
                "clients_waiting": pool.cl_waiting, "max_wait_s": pool.maxwait_s,
                "servers_active": pool.sv_active, "pool_size": size,
            }  # fmt: skip
            summary = (
                f"{culprit}: {pool.cl_waiting} client(s) waiting, the oldest for "
                f"{pool.maxwait_s:.1f} s, {pool.sv_active}/{size} server connections active"
            )
            remedy = (
                f"raise pool_size for [{pool.database}] in pgbouncer.ini from {size} to "
                f"{size * 2} and RELOAD{_PLAN}"
            )
            yield _finding(
                "pool_undersized", confidence, culprit, database, evidence, summary, remedy
            )


_DOWN_REMEDY = {
    "AuthenticationFailed": "check the user and password poolwarden connects with (pg_hba.conf)",
    "DatabaseNotFound": "check the database name in the DSN, or create the database",
    "DatabaseUnreachable": "check that the server runs and listens at the DSN's host and port",
}


def _database_down(database: str, error: ProbeError) -> Finding:
    """The probe failed for another reason than 53300: the database itself is the culprit."""
    kind = type(error).__name__
    remedy = _DOWN_REMEDY.get(kind, "read the error and the server's log")
    summary = f"database '{database}' is down for poolwarden: {redact_dsn(str(error))}"
    confidence = 0.95 if kind in _DOWN_REMEDY else 0.8
    return _finding(
        "database_down", confidence, database, database, {"database_up": 0}, summary, remedy
    )


_SERVER_CHECKS = (
    _pool_oversized,
    _noisy_neighbor,
    _pool_undersized,
    _idle_in_transaction,
    _slow_queries,
    _lock_contention,
    _server_saturated,
    _app_leaks,
)
