"""Audit a topology: every connection setting in the stack checked against the others.

`audit(topology, server, pgbouncer)` is pure: it takes the settings already read and
returns `AuditFinding`s, errors first. `read_live_settings(topology)` gathers those settings
(the live server when the topology has a DSN, PgBouncer's admin console when it has an
admin DSN, else what the file declares). Each finding's code is described in docs/plan.md.
"""

from __future__ import annotations

from poolwarden.plan._checks import (
    SEVERITIES,
    AuditFinding,
    Check,
    Fleet,
    Severity,
    check_fleet,
    check_oversized,
    check_pgbouncer,
    check_waits,
)
from poolwarden.plan._live import read_live_settings
from poolwarden.plan._server_checks import (
    check_admin_slots,
    check_lifetimes,
    check_memory,
    check_timeouts,
)
from poolwarden.plan._sources import PgBouncerSettings, ServerSettings
from poolwarden.plan.topology import Topology

__all__ = ["CHECKS", "AuditFinding", "Severity", "audit", "read_live_settings"]

CHECKS: tuple[Check, ...] = (
    check_fleet,
    check_pgbouncer,
    check_admin_slots,
    check_oversized,
    check_waits,
    check_timeouts,
    check_memory,
    check_lifetimes,
)


def audit(
    topology: Topology, server: ServerSettings, pgbouncer: PgBouncerSettings | None = None
) -> list[AuditFinding]:
    """Return every finding for `topology` running on `server` (and `pgbouncer`); no I/O.

    `pgbouncer` defaults to the topology's declared (or ini) PgBouncer settings.
    """
    if pgbouncer is None and topology.pgbouncer is not None:
        pgbouncer = topology.pgbouncer.settings
    fleet = Fleet(topology, server, pgbouncer)
    found = [finding for check in CHECKS for finding in check(fleet)]
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))
