"""The audit's checks: each reads the `Fleet` and returns the findings it makes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from poolwarden.guard.budget import ServerSlots, decide_budget
from poolwarden.plan._sources import PgBouncerSettings, ServerSettings
from poolwarden.plan.topology import ServiceSpec, Topology

Severity = Literal["error", "warning", "info"]
Evidence = dict[str, int | float | str | None]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")

# The rule of thumb when nothing was measured (REFERENCE §6.5: cores x 2 + spindles, and
# spindles are 0 with the data cached); a pool this many times larger is far past the knee.
OVERSIZE_FACTOR = 4


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One problem the audit found: what, the numbers behind it, why it matters, what to set."""

    severity: Severity
    code: str
    title: str
    evidence: Evidence
    why: str
    fix: str


@dataclass(frozen=True, slots=True)
class Fleet:
    """The topology with the settings it runs against, and the connection sums."""

    topology: Topology
    server: ServerSettings
    bouncer: PgBouncerSettings | None

    def demand(self, service: ServiceSpec) -> int:
        """Connections `service`'s fleet may open: processes x pool max (overflow included)."""
        return service.processes_total * service.limits.max_connections

    @property
    def direct(self) -> int:
        """Connections the services open straight to the server."""
        return sum(self.demand(s) for s in self.topology.services if not s.through_pgbouncer)

    @property
    def bouncer_clients(self) -> int:
        """Client connections the services open to PgBouncer."""
        return sum(self.demand(s) for s in self.topology.services if s.through_pgbouncer)

    @property
    def bouncer_pools(self) -> dict[str, int]:
        """Server connections per PgBouncer database: pool size x users, capped per database."""
        if self.bouncer is None or self.topology.pgbouncer is None:
            return {}
        users, cap = self.topology.pgbouncer.users, self.bouncer.max_db_connections
        sizes = {name: size * users for name, size in self.bouncer.pool_sizes().items()}
        return {name: min(size, cap) if cap else size for name, size in sizes.items()}

    @property
    def bouncer_servers(self) -> int:
        """Server connections PgBouncer may open."""
        return sum(self.bouncer_pools.values())

    @property
    def others(self) -> int:
        """Connections of the other clients (cron, admin, replication)."""
        return sum(c.connections for c in self.topology.other_clients)

    @property
    def total(self) -> int:
        """Connections the server may be asked for: direct + PgBouncer's + other clients'."""
        return self.direct + self.bouncer_servers + self.others


def check_fleet(fleet: Fleet) -> list[AuditFinding]:
    """Error when the fleet's connections exceed the server's usable slots."""
    server, usable, total = fleet.server, fleet.server.usable_connections, fleet.total
    if total <= usable:
        return []
    evidence: Evidence = {
        "max_connections": server.max_connections,
        "reserved": server.superuser_reserved_connections + server.reserved_connections,
        "usable_connections": usable, "direct": fleet.direct,
        "pgbouncer_server_connections": fleet.bouncer_servers,
        "clients_through_pgbouncer": fleet.bouncer_clients,
        "other_clients": fleet.others, "total": total,
        **{f"service:{s.name}": fleet.demand(s) for s in fleet.topology.services},
    }  # fmt: skip
    reserved = server.max_connections - usable
    fix = f"raise max_connections to {total + reserved}"
    direct = [s for s in fleet.topology.services if not s.through_pgbouncer]
    if direct:
        big = max(direct, key=fleet.demand)
        share = _share(fleet, big)
        lower = (
            f"lower {big.name}'s {big.limits.max_knob} to {share} per process"
            if share >= 1
            else f"move {big.name} behind PgBouncer"
        )
        fix = f"{lower}, route services through PgBouncer, or {fix}"
    return [AuditFinding(
        "error", "fleet-exceeds-server",
        f"the fleet may open {total} connections; the server has {usable} usable",
        evidence,
        "when every process fills its pool at once (a deploy, a traffic spike) the server "
        "refuses the rest with 'sorry, too many clients already' (SQLSTATE 53300)",
        fix,
    )]  # fmt: skip


def _share(fleet: Fleet, service: ServiceSpec) -> int:
    """Return the per-process pool max at which `service` fits beside everyone else."""
    server = fleet.server
    slots = ServerSlots(
        target="server", max_connections=server.max_connections,
        superuser_reserved_connections=server.superuser_reserved_connections,
        reserved_connections=server.reserved_connections, role="", database="",
        others=fleet.total - fleet.demand(service),
    )  # fmt: skip
    verdict = decide_budget(
        slots, service=service.name, replicas=service.replicas, workers=service.processes,
        pool_max=service.limits.max_connections, headroom=0,
    )  # fmt: skip
    return verdict.per_process_max


def check_pgbouncer(fleet: Fleet) -> list[AuditFinding]:
    """PgBouncer's pools against max_db_connections, the server and its max_client_conn."""
    bouncer, spec = fleet.bouncer, fleet.topology.pgbouncer
    if bouncer is None or spec is None:
        return []
    found: list[AuditFinding] = []
    cap = bouncer.max_db_connections
    for name, size in bouncer.pool_sizes().items():
        if cap and size * spec.users > cap:
            found.append(AuditFinding(
                "warning", "pgbouncer-pool-over-db-limit",
                f"PgBouncer database {name!r}: pool {size} x {spec.users} users > "
                f"max_db_connections {cap}",
                {"database": name, "pool_size": size, "users": spec.users,
                 "pairs_total": size * spec.users, "max_db_connections": cap},
                "the pools can never reach their size: clients queue behind "
                "max_db_connections while the configuration promises more",
                f"lower default_pool_size (or {name}'s pool_size) to {cap // spec.users}, "
                f"or raise max_db_connections to {size * spec.users}",
            ))  # fmt: skip
    room = fleet.server.usable_connections - fleet.others - fleet.direct
    pairs = len(bouncer.pool_sizes()) * spec.users
    if fleet.bouncer_servers > room:
        found.append(AuditFinding(
            "error", "pgbouncer-exceeds-server",
            f"PgBouncer may open {fleet.bouncer_servers} server connections; "
            f"{max(room, 0)} are left for it",
            {"default_pool_size": bouncer.default_pool_size, "pairs": pairs,
             "pgbouncer_server_connections": fleet.bouncer_servers,
             "usable_connections": fleet.server.usable_connections,
             "direct": fleet.direct, "other_clients": fleet.others, "room": room},
            "PgBouncer opens server connections on demand; past the server's limit its "
            "logins fail and every client behind it waits or errors",
            f"set default_pool_size to {max(room, 0) // max(pairs, 1)} (or max_db_connections "
            f"to {max(room, 0)}) so PgBouncer fits in {max(room, 0)} connections",
        ))  # fmt: skip
    if fleet.bouncer_clients > bouncer.max_client_conn:
        found.append(AuditFinding(
            "error", "pgbouncer-client-limit",
            f"services may open {fleet.bouncer_clients} connections to PgBouncer; "
            f"max_client_conn is {bouncer.max_client_conn}",
            {"clients_through_pgbouncer": fleet.bouncer_clients,
             "max_client_conn": bouncer.max_client_conn},
            "PgBouncer refuses clients past max_client_conn with 'no more connections "
            "allowed (max_client_conn)'",
            f"raise max_client_conn to {fleet.bouncer_clients} (it costs little) or lower "
            "the pools of the services behind PgBouncer",
        ))  # fmt: skip
    return found


def check_oversized(fleet: Fleet) -> list[AuditFinding]:
    """Warn about a pool far larger than the size the server runs best at."""
    server, spec = fleet.server, fleet.topology.server
    if spec.best_pool_size is not None:
        best, basis = spec.best_pool_size, "measured (server.best_pool_size)"
    elif server.cores is not None:
        best, basis = server.cores * 2 + 1, f"cores x 2 + 1 with {server.cores} cores"
    else:
        return []
    found: list[AuditFinding] = []
    for service in fleet.topology.services:
        size = service.limits.max_connections
        if service.through_pgbouncer or size <= OVERSIZE_FACTOR * best:
            continue
        found.append(AuditFinding(
            "warning", "pool-oversized",
            f"{service.name}: pool max {size} is over {OVERSIZE_FACTOR}x the best size {best}",
            {"service": service.name, "pool_max": size, "best_pool_size": best,
             "basis": basis, "factor": round(size / best, 1)},
            "past the knee, more connections add contention (locks, CPU, cache) and lower "
            "throughput; a small pool with a queue in front serves more (REFERENCE §6.5)",
            f"set {service.name}'s {service.limits.max_knob} to about {best} per process, "
            "or measure the right size with 'poolwarden plan'",
        ))  # fmt: skip
    return found


def check_waits(fleet: Fleet) -> list[AuditFinding]:
    """Acquire timeouts against request timeouts, and waits without a bound."""
    found: list[AuditFinding] = []
    for service in fleet.topology.services:
        found += _wait_findings(service)
    return found


def _wait_findings(service: ServiceSpec) -> list[AuditFinding]:
    limits, name, request = service.limits, service.name, service.request_timeout
    found: list[AuditFinding] = []
    if limits.acquire_timeout is None:
        found.append(AuditFinding(
            "warning", "unbounded-acquire", f"{name}: acquiring a connection may wait forever",
            {"service": name, "library": limits.library, "acquire_timeout": None},
            "asyncpg's acquire() has no timeout by default: when the pool is exhausted, "
            "requests pile up until the client gives up, holding memory and sockets",
            f"pass acquire(timeout={_suggest(request)}) or wrap the pool in poolwarden.guard",
        ))  # fmt: skip
    elif request is not None and limits.acquire_timeout >= request:
        found.append(AuditFinding(
            "warning", "acquire-timeout-not-below-request",
            f"{name}: acquire timeout {limits.acquire_timeout:g}s >= request timeout "
            f"{request:g}s",
            {"service": name, "acquire_timeout": limits.acquire_timeout,
             "request_timeout": request, "knob": limits.timeout_knob},
            "a request that waits the full acquire timeout has already failed; it should "
            "fail fast and free its place instead",
            f"set {limits.timeout_knob} to {_suggest(request)} (below {request:g}s)",
        ))  # fmt: skip
    if limits.max_waiting is None and limits.library == "psycopg":
        found.append(AuditFinding(
            "warning", "unbounded-queue", f"{name}: max_waiting is 0, the queue has no bound",
            {"service": name, "max_waiting": 0},
            "under overload every request joins the queue and waits its full timeout; a "
            "bounded queue refuses the excess at once (TooManyRequests)",
            f"set max_waiting to about {2 * limits.max_connections} (2 x max_size)",
        ))  # fmt: skip
    elif limits.max_waiting is None and limits.library == "sqlalchemy":
        found.append(AuditFinding(
            "info", "unbounded-queue", f"{name}: SQLAlchemy's pool has no bounded queue",
            {"service": name, "max_waiting": None},
            "QueuePool queues every checkout until pool_timeout; nothing refuses the excess",
            "wrap the engine in poolwarden.guard (max_waiting) to shed load early",
        ))  # fmt: skip
    if limits.unlimited:
        found.append(AuditFinding(
            "error", "pool-unbounded", f"{name}: max_overflow is -1, the pool has no limit",
            {"service": name, "max_overflow": -1},
            "an unlimited pool opens connections until the server refuses them",
            "set max_overflow to a number (10 is the default)",
        ))  # fmt: skip
    return found


def _suggest(request: float | None) -> str:
    """Return an acquire timeout well inside `request` (a quarter of it), or 5s."""
    return "5" if request is None else f"{math.floor(request * 250) / 1000:g}"


Check = Callable[[Fleet], list[AuditFinding]]
