"""Plan capacity: audit a deployment's connection settings against each other.

`load_topology` reads the topology file (docs/plan.md); `read_live_settings` reads the
server and PgBouncer; `audit` returns the `AuditFinding`s; `plan_capacity` measures the
best pool size on the real database; `split_budget` shares the server's budget across
the services.
"""

from __future__ import annotations

from poolwarden.plan.audit import CHECKS, AuditFinding, Severity, audit, read_live_settings
from poolwarden.plan.capacity import CapacityResult, Point, UslFit, fit_usl, plan_capacity
from poolwarden.plan.report import write_reports
from poolwarden.plan.split import BudgetSplit, ServiceShare, split_budget
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
from poolwarden.plan.workload import BUILTIN_WORKLOADS, Workload, load_workload

__all__ = [
    "AuditFinding",
    "BUILTIN_WORKLOADS",
    "BudgetSplit",
    "CHECKS",
    "CapacityResult",
    "GuardSpec",
    "OtherClient",
    "PgBouncerSettings",
    "PgBouncerSpec",
    "Point",
    "PoolLimits",
    "PoolSpec",
    "ServerSettings",
    "ServerSpec",
    "ServiceShare",
    "ServiceSpec",
    "Severity",
    "Topology",
    "UslFit",
    "Workload",
    "audit",
    "fit_usl",
    "load_topology",
    "load_workload",
    "plan_capacity",
    "read_live_settings",
    "split_budget",
    "write_reports",
]
