"""The decision rules of `diagnose`, one check per cause; each rule in docs/diagnose.md.

`SERVER_CHECKS` runs per database; the checks that read the pools themselves (leaks,
idle checkouts, PgBouncer waits) live in `_diagnose_pools`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from poolwarden._dsn import redact_dsn
from poolwarden.errors import ProbeError, TargetBadResponse, TargetTimeout
from poolwarden.probe.postgres import LockWait
from poolwarden.watch._diagnose_model import (
    APP_CONNECTIONS,
    NO_NAME,
    Context,
    DiagnosisThresholds,
    Finding,
    Pool,
    Server,
    make_finding,
)
from poolwarden.watch._diagnose_pools import PLAN, idle_checkouts


def _pool_oversized(server: Server, ctx: Context) -> Iterator[Finding]:
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
    remedy, size = _resize(server, th, culprit, group)
    evidence["recommended_max_size"] = size
    yield server.finding("pool_oversized", confidence, culprit, evidence, summary, remedy)


def _resize(
    server: Server, th: DiagnosisThresholds, culprit: str, group: list[Pool]
) -> tuple[str, int]:
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
        return f"lower {culprit}'s pool max_size from {pool_max:g} to {size} ({fits}){PLAN}", size
    cap = f"at most {size}" if usable else "well under the server's usable slots"
    return f"cap {culprit}'s connection pool to {cap} connections{PLAN}", size


def _noisy_neighbor(server: Server, ctx: Context) -> Iterator[Finding]:
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
        f"{victim.target} gets its share{PLAN}"
    )
    confidence = 0.8 if own else 0.9  # an unguarded neighbour is the classic case
    yield server.finding("noisy_neighbor", confidence, holder.name, evidence, summary, remedy)


def _pool_undersized(server: Server, ctx: Context) -> Iterator[Finding]:
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
            "active": server.active, "recommended_max_size": size,
        }  # fmt: skip
        wait = f", p95 wait {p95:.2f} s" if p95 else ""
        summary = (
            f"pool '{name}': {pending:g} waiting, {failures:g} refused{wait} at {used:g}/"
            f"{pool_max:g} in use, while database '{server.database}' has {free} of {usable} "
            f"slots free and {server.active} active"
        )
        remedy = f"raise {name}'s pool max_size from {pool_max:g} to {size}{PLAN}"
        yield server.finding("pool_undersized", confidence, name, evidence, summary, remedy)


def _idle_in_transaction(server: Server, ctx: Context) -> Iterator[Finding]:
    """Sessions idle inside a transaction for long; blame the app holding the most of them."""
    limit = ctx.th.idle_in_transaction_s
    sessions = server.snap.idle_in_transaction if server.snap else ()
    stuck = [s for s in sessions if s.idle_s >= limit]
    if not stuck:
        return
    by_app: dict[str, list[float]] = {}
    for s in stuck:
        by_app.setdefault(s.application_name or NO_NAME, []).append(s.idle_s)
    culprit = max(by_app, key=lambda a: (len(by_app[a]), max(by_app[a])))
    mine = [s for s in stuck if (s.application_name or NO_NAME) == culprit]
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


def _slow_queries(server: Server, ctx: Context) -> Iterator[Finding]:
    """The oldest running statement is older than slow_query_s; blame its application."""
    snap, limit = server.snap, ctx.th.slow_query_s
    query = snap.oldest_active_query if snap else None
    if snap is None or query is None or query.age_s < limit:
        return
    active = snap.by_state.get("active", 0)
    # A statement waiting on a lock is slow because of the holder: lock_contention says whom.
    many = 0.15 * (active >= ctx.th.busy_sessions)
    confidence = 0.4 if query.wait_event_type == "Lock" else 0.65 + many
    culprit = query.application_name or NO_NAME
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


def _lock_contention(server: Server, ctx: Context) -> Iterator[Finding]:
    """Several sessions wait on locks; blame the blocker at the head of their queue."""
    waits = server.snap.lock_waits if server.snap else ()
    if len(waits) < ctx.th.lock_waits:
        return
    behind = Counter(pid for w in waits for pid in _root_blockers(w, waits))
    pid = max(behind, key=lambda p: (behind[p], -p))
    app = _blocker_apps(waits).get(pid) or NO_NAME
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


def _server_saturated(server: Server, ctx: Context) -> Iterator[Finding]:
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
            f"sessions stay near the server's cores, or put PgBouncer (transaction mode) in front{PLAN}"
        )
    yield server.finding("server_saturated", confidence, server.database, evidence, summary, remedy)


def _app_leaks(server: Server, ctx: Context) -> Iterator[Finding]:
    """An application's idle-in-transaction (or idle) connections growing without falling."""
    for app in server.apps:
        for state, confidence in (("idle in transaction", 0.75), ("idle", 0.45)):
            labels = {"database": server.database, "application_name": app.name, "state": state}
            growth = ctx.grows(APP_CONNECTIONS, labels)
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


_DOWN_REMEDY = {
    "AuthenticationFailed": "check the user and password poolwarden connects with (pg_hba.conf)",
    "DatabaseNotFound": "check the database name in the DSN, or create the database",
    "DatabaseUnreachable": "check that the server runs and listens at the DSN's host and port",
}


def database_down(database: str, error: ProbeError) -> Finding:
    """The probe failed for another reason than 53300: the database itself is the culprit."""
    kind = type(error).__name__
    remedy = _DOWN_REMEDY.get(kind, "read the error and the server's log")
    summary = f"database '{database}' is down for poolwarden: {redact_dsn(str(error))}"
    confidence = 0.95 if kind in _DOWN_REMEDY else 0.8
    return make_finding(
        "database_down", confidence, database, database, {"database_up": 0}, summary, remedy
    )


def target_down(ctx: Context) -> Iterator[Finding]:
    """A configured app target whose /metrics could not be scraped: the target is the culprit."""
    for name, info in ctx.obs.target_info.items():
        error = ctx.obs.targets.get(name)
        if not isinstance(error, ProbeError):
            continue
        timed_out = isinstance(error, TargetTimeout)
        status = error.status or 0 if isinstance(error, TargetBadResponse) else 0
        evidence: dict[str, float] = {"timed_out": int(timed_out), "status": status}
        summary = f"{name} cannot be scraped: {redact_dsn(str(error))}"
        remedy = (
            f"check that {name} runs and that its /metrics endpoint answers ({info.url});"
            " raise probe_timeout if it is only slow"
        )
        yield make_finding("target_down", 0.9, name, info.database or "", evidence, summary, remedy)


SERVER_CHECKS = (
    _pool_oversized,
    _noisy_neighbor,
    _pool_undersized,
    _idle_in_transaction,
    _slow_queries,
    _lock_contention,
    _server_saturated,
    idle_checkouts,
    _app_leaks,
)
