"""Runtime protection inside the application: admission control in front of the pool.

``guard(pool, name="orders")`` wraps a psycopg_pool, SQLAlchemy or asyncpg pool; see
docs/guard.md. The adapters for optional libraries (``poolwarden.guard.sqlalchemy``,
``poolwarden.guard.asyncpg``, ``poolwarden.guard.asgi``) are imported only when used.
"""

from __future__ import annotations

from poolwarden.guard._factory import guard
from poolwarden.guard._runtime import GuardOptions, GuardSnapshot, Lease, PoolGuard, complete
from poolwarden.guard._waiting import Admission, AsyncAdmission
from poolwarden.guard.admission import (
    AdmissionConfig,
    AdmissionCore,
    AdmissionDecision,
    AdmissionStats,
    Admit,
    Enqueue,
    Reject,
    RejectReason,
    Wake,
)
from poolwarden.guard.budget import (
    Budget,
    BudgetVerdict,
    ServerSlots,
    apply_budget,
    check_budget,
    decide_budget,
)
from poolwarden.guard.leaks import Checkout, LeakTracker
from poolwarden.guard.limits import AIMDLimit, ConcurrencyLimit, FixedLimit, Gradient2Limit
from poolwarden.guard.metrics import GuardCollector, PoolMetrics, PoolState, collector_for
from poolwarden.guard.psycopg import (
    GuardedAsyncConnectionPool,
    GuardedConnectionPool,
    PsycopgPoolSaturated,
)

__all__ = [
    "AIMDLimit",
    "Admission",
    "AdmissionConfig",
    "AdmissionCore",
    "AdmissionDecision",
    "AdmissionStats",
    "Admit",
    "AsyncAdmission",
    "Budget",
    "BudgetVerdict",
    "Checkout",
    "ConcurrencyLimit",
    "Enqueue",
    "FixedLimit",
    "Gradient2Limit",
    "GuardCollector",
    "GuardOptions",
    "GuardSnapshot",
    "GuardedAsyncConnectionPool",
    "GuardedConnectionPool",
    "LeakTracker",
    "Lease",
    "PoolGuard",
    "PoolMetrics",
    "PoolState",
    "PsycopgPoolSaturated",
    "Reject",
    "RejectReason",
    "ServerSlots",
    "Wake",
    "apply_budget",
    "check_budget",
    "collector_for",
    "complete",
    "decide_budget",
    "guard",
]
