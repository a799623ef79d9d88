"""The audit's checks on server settings: timeouts, memory, idle lifetimes, admin slots."""

from __future__ import annotations

from poolwarden.plan._checks import AuditFinding, Fleet


def check_timeouts(fleet: Fleet) -> list[AuditFinding]:
    """Warn when statement_timeout or idle_in_transaction_session_timeout is off."""
    server, found = fleet.server, []
    if server.statement_timeout_ms == 0:
        found.append(AuditFinding(
            "warning", "no-statement-timeout", "statement_timeout is 0 (off)",
            {"statement_timeout_ms": 0},
            "one runaway query holds its connection for as long as it runs; enough of them "
            "and the pools run dry",
            "ALTER ROLE app SET statement_timeout = '30s' (or per database; a bit above the "
            "slowest legitimate query)",
        ))  # fmt: skip
    if server.idle_in_transaction_session_timeout_ms == 0:
        found.append(AuditFinding(
            "warning", "no-idle-in-transaction-timeout",
            "idle_in_transaction_session_timeout is 0 (off)",
            {"idle_in_transaction_session_timeout_ms": 0},
            "a session left idle in a transaction holds its connection and its locks "
            "forever; the postmortem's outage began that way",
            "ALTER ROLE app SET idle_in_transaction_session_timeout = '60s'",
        ))  # fmt: skip
    return found


def check_memory(fleet: Fleet) -> list[AuditFinding]:
    """Compare shared_buffers + max_connections x work_mem with the server's memory."""
    server = fleet.server
    if server.memory_gb is None:
        return [AuditFinding(
            "info", "memory-unknown", "the server's memory is not declared",
            {"work_mem_kb": server.work_mem_kb, "max_connections": server.max_connections},
            "without it work_mem x connections cannot be checked against the memory",
            "add server.memory_gb to the topology",
        )]  # fmt: skip
    memory_kb = round(server.memory_gb * 1024 * 1024)
    need_kb = server.shared_buffers_kb + server.max_connections * server.work_mem_kb
    if need_kb <= memory_kb:
        return []
    fit = max(memory_kb - server.shared_buffers_kb, 0) // server.max_connections
    return [AuditFinding(
        "warning", "work-mem-over-memory",
        f"shared_buffers + {server.max_connections} x work_mem = {need_kb // 1024} MB > "
        f"{memory_kb // 1024} MB of memory",
        {"work_mem_kb": server.work_mem_kb, "shared_buffers_kb": server.shared_buffers_kb,
         "max_connections": server.max_connections, "need_mb": need_kb // 1024,
         "memory_mb": memory_kb // 1024, "fleet_total": fleet.total},
        "each connection may use work_mem per sort or hash node; when all are busy the "
        "server swaps or the OOM killer restarts it",
        f"lower work_mem to {fit // 1024}MB or below, or lower max_connections (put "
        "PgBouncer in front) so the sum fits",
    )]  # fmt: skip


def check_lifetimes(fleet: Fleet) -> list[AuditFinding]:
    """Pool idle lifetimes against the server's and PgBouncer's idle timeouts."""
    found: list[AuditFinding] = []
    idle_s = fleet.server.idle_session_timeout_ms / 1000
    bouncer = fleet.bouncer
    for service in fleet.topology.services:
        limits = service.limits
        if service.through_pgbouncer:
            limit_s, by = (bouncer.client_idle_timeout if bouncer else 0.0), "client_idle_timeout"
        else:
            limit_s, by = idle_s, "idle_session_timeout"
        if limit_s <= 0 or (limits.idle_bound is not None and limits.idle_bound < limit_s):
            continue
        found.append(AuditFinding(
            "warning", "pool-outlives-idle-timeout",
            f"{service.name}: idle connections outlive {by} {limit_s:g}s",
            {"service": service.name, "knob": limits.idle_knob,
             "idle_bound_s": limits.idle_bound, by: limit_s},
            f"the {'PgBouncer' if service.through_pgbouncer else 'server'} closes connections "
            "idle longer than that; the pool hands them out dead and the request fails",
            f"set {limits.idle_knob} below {limit_s:g}s (e.g. {limit_s * 0.9:g})"
            + (" and enable pool_pre_ping" if limits.library == "sqlalchemy" else ""),
        ))  # fmt: skip
    if bouncer is not None and idle_s > 0 and not 0 < bouncer.server_idle_timeout < idle_s:
        found.append(AuditFinding(
            "warning", "pgbouncer-outlives-idle-timeout",
            f"PgBouncer keeps idle server connections {bouncer.server_idle_timeout:g}s; the "
            f"server closes them after {idle_s:g}s",
            {"server_idle_timeout": bouncer.server_idle_timeout,
             "server_lifetime": bouncer.server_lifetime, "idle_session_timeout_s": idle_s},
            "PgBouncer hands a client a server connection the server already closed; the "
            "PostgreSQL docs advise against idle_session_timeout behind a pooler",
            f"set server_idle_timeout below {idle_s:g}, or idle_session_timeout = 0 for the "
            "role PgBouncer uses",
        ))  # fmt: skip
    return found


def check_admin_slots(fleet: Fleet) -> list[AuditFinding]:
    """Warn when the fleet and other clients leave too few slots for an admin to get in."""
    usable, total = fleet.server.usable_connections, fleet.total
    free, want = usable - total, fleet.topology.admin_headroom
    if total > usable or free >= want:
        return []  # an overfull fleet is already an error
    su = fleet.server.superuser_reserved_connections
    return [AuditFinding(
        "warning", "no-admin-slots",
        f"{free} connection slots left free; {want} wanted for admin access",
        {"usable_connections": usable, "total": total, "free": free, "admin_headroom": want,
         "superuser_reserved_connections": su},
        "when the pools are full, a non-superuser admin, a migration or the monitoring agent "
        f"cannot connect to find out why (only {su} superuser slots are reserved)",
        f"lower the pools by {want - free} connections or raise max_connections to "
        f"{fleet.server.max_connections + want - free}",
    )]  # fmt: skip
