"""Plan capacity: audit a deployment's connection settings against each other.

`load_topology` reads the topology file (docs/plan.md); `read_live_settings` reads the
server and PgBouncer; `audit` returns the `AuditFinding`s.
"""

from __future__ import annotations

from poolwarden.plan.audit import CHECKS, AuditFinding, Severity, audit, read_live_settings
from poolwarden.plan.topology import (
    GuardSpec,
    OtherClient,
    PgBouncerSettings,
    PgBouncerSpec,
    PoolLimits,
    PoolSpec,
    ServerSettings,
    ServerSpec,
    ServiceSpec,
    Topology,
    load_topology,
)

__all__ = [
    "CHECKS",
    "AuditFinding",
    "GuardSpec",
    "OtherClient",
    "PgBouncerSettings",
    "PgBouncerSpec",
    "PoolLimits",
    "PoolSpec",
    "ServerSettings",
    "ServerSpec",
    "ServiceSpec",
    "Severity",
    "Topology",
    "audit",
    "load_topology",
    "read_live_settings",
]
