"""The diagnosis checks that read the pools: their leaks, their checkouts, PgBouncer's queue.

`idle_checkouts` (one of `SERVER_CHECKS`) blames a pool whose connections are all checked
out while PostgreSQL sees them idle; `pool_leaks` reads the guard's leak counts and a used
count that climbs without more throughput; `pgbouncer_waits` finds PgBouncer clients
waiting. The other causes are in `_diagnose_causes`; each rule in docs/diagnose.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from poolwarden.probe.pgbouncer import PgBouncerSnapshot
from poolwarden.watch._diagnose_model import (
    CHECKOUTS,
    USE_SECONDS,
    USED,
    Context,
    Finding,
    Point,
    Pool,
    Server,
    make_finding,
)

# The remedies' pointer to the planner, shared with `_diagnose_causes`.
PLAN = " - see 'poolwarden plan'"
# How far back the rate of completed use is read (a few scrapes).
_COMPLETING_WINDOW_S = 10.0


def idle_checkouts(server: Server, ctx: Context) -> Iterator[Finding]:
    """A pool with every connection checked out while PostgreSQL sees them idle: held, unused.

    A pool that is all in use and waits, while the server shows its application's sessions
    idle (not in a transaction, not running anything), hands connections to code that does
    not use them: a leak, or work done while holding one. A bigger pool would not help.
    """
    th = ctx.th
    for name, group in server.pool_groups().items():
        used, pool_max = sum(p.used for p in group), sum(p.max for p in group)
        app = next((a for a in server.apps if group[0].belongs_to(a.name)), None)
        full = pool_max > 0 and used >= pool_max and any(p.waiting(th) for p in group)
        if app is None or not full or app.idle < max(th.leak_growth, 0.5 * used):
            continue
        # Little's law: connections busy with checkouts that complete = rate of use-seconds.
        # A handler that works while holding its connection completes (a busy pool); a
        # leaked checkout never does. Without that rate, say nothing.
        completing = _completing(group, ctx)
        if completing is None or used - completing < max(th.leak_growth, 0.5 * used):
            continue
        evidence = {"used": used, "pool_max": pool_max, "idle_on_server": app.idle,
                    "active_on_server": app.active, "replicas": len(group),
                    "completing": round(completing, 2)}  # fmt: skip
        summary = (
            f"pool '{name}': all {used:g} connections checked out, yet PostgreSQL sees "
            f"{app.idle} of {app.name}'s sessions idle: taken and not used"
        )
        remedy = (
            f"find the code path in {app.name} that keeps its connection (guard the pool with "
            "leak_threshold to log the acquiring stack); restart to get the connections back"
        )
        yield server.finding("connection_leak", 0.9, name, evidence, summary, remedy)


def _completing(group: list[Pool], ctx: Context) -> float | None:
    """Return the connections the group's completed checkouts kept busy lately, on average."""
    total, known = 0.0, False
    for pool in group:
        points = ctx.points(USE_SECONDS, {"target": pool.target, "pool": pool.name},
                            _COMPLETING_WINDOW_S)  # fmt: skip
        if len(points) >= 2:
            total, known = total + _per_second(points), True
    return total if known else None


def pool_leaks(pools: list[Pool], ctx: Context) -> Iterator[Finding]:
    """The guard counted leaks, or a pool's used count climbs while its throughput does not."""
    groups: dict[tuple[str, str], list[Pool]] = {}
    for pool in pools:
        groups.setdefault((pool.database, pool.name), []).append(pool)
    for (database, name), group in groups.items():
        leaks, climb = sum(p.leaks for p in group), sum(_climb(p, ctx) for p in group)
        if leaks <= 0 and climb <= 0:
            continue
        recent = all(p.leaks_recent for p in group)
        confidence = (0.9 if recent else 0.6) if leaks > 0 else 0.7
        # Held long, but busy on the server (idle in a transaction, or running a slow
        # statement): the checkouts come back, they are slow. Those causes name it better.
        held_for = _held_on_server(group[0], database, ctx)
        if held_for:
            confidence = min(confidence, 0.6)
        used, pool_max = sum(p.used for p in group), max(p.max for p in group)
        evidence = {"leaks": leaks, "used_growth": climb, "used": used, "pool_max": pool_max}
        if leaks > 0:
            when = f" in the last {ctx.th.recent_window_s:g} s" if recent else " since start"
            said = f"{leaks:g} connection(s) held past the leak threshold{when}"
        else:
            said = f"its used connections grew by {climb:g} while its throughput did not"
        summary = f"pool '{name}': {said}; {used:g}/{pool_max:g} in use"
        summary += f"; its sessions are {held_for} on the server" if held_for else ""
        remedy = (
            f"read the acquiring stacks the guard logs for pool '{name}' (poolwarden.guard) and "
            "return each connection with a context manager"
        )
        yield make_finding("connection_leak", confidence, name, database, evidence, summary, remedy)


def _held_on_server(pool: Pool, database: str, ctx: Context) -> str:
    """Say whether the pool's sessions are idle in a transaction or in a slow statement."""
    snap = ctx.obs.server(database) if database else None
    if snap is None:
        return ""
    th = ctx.th
    if any(pool.belongs_to(s.application_name) and s.idle_s >= th.idle_in_transaction_s
           for s in snap.idle_in_transaction):  # fmt: skip
        return "idle in transaction"
    query = snap.oldest_active_query
    if (
        query is not None
        and pool.belongs_to(query.application_name)
        and query.age_s >= th.slow_query_s
    ):
        return "running slow statements"
    return ""


def _climb(pool: Pool, ctx: Context) -> float:
    """Return how much the pool's used count grew, if its throughput did not grow with it."""
    labels = {"target": pool.target, "pool": pool.name}
    growth = ctx.grows(USED, labels)
    if growth is None:
        return 0.0
    points = ctx.points(CHECKOUTS, labels, ctx.th.trend_window_s)
    mid = len(points) // 2
    # More traffic explains more connections in use; a leak serves no more requests.
    if mid and _per_second(points[mid:]) > 1.1 * _per_second(points[: mid + 1]):
        return 0.0
    return growth


def _per_second(points: Sequence[Point]) -> float:
    """Return a counter's average rate from its first to its last point (0 across a reset)."""
    (t0, v0), (t1, v1) = points[0], points[-1]
    return max(v1 - v0, 0.0) / (t1 - t0) if t1 > t0 else 0.0


def pgbouncer_waits(ctx: Context) -> Iterator[Finding]:
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
                f"{size * 2} and RELOAD{PLAN}"
            )
            yield make_finding(
                "pool_undersized", confidence, culprit, database, evidence, summary, remedy
            )
