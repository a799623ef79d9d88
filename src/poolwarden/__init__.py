"""poolwarden: keep a PostgreSQL-backed service from being taken down by its connection pool.

The public API, re-exported here so users import from one place:

- `snapshot(dsn)` reads a server's connection slots into a frozen `ServerSnapshot`;
- `pgbouncer_snapshot(admin_dsn)` reads a PgBouncer's pools into a `PgBouncerSnapshot`;
- `EmbeddedServer` runs the private PostgreSQL server the CLI and the tests use;
- `load_config(path)` reads `poolwarden.yaml`;
- `redact_dsn(dsn)` hides passwords in DSNs and in text holding DSNs;
- `guard(pool, name=...)` puts admission control in front of a pool (docs/guard.md);
- `poolwarden.watch` holds the monitor: `SeriesStore`, rules, incidents, notifications;
- the exception tree under `PoolwardenError` (drawn in `poolwarden.errors`).
"""

from __future__ import annotations

import logging

from poolwarden._dsn import redact_dsn
from poolwarden.config import Config, DatabaseConfig, TargetConfig, load_config
from poolwarden.embedded import EmbeddedServer, EmbeddedStatus, default_data_dir
from poolwarden.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    ConfigError,
    DatabaseNotFound,
    DatabaseUnreachable,
    DsnError,
    EmbeddedServerError,
    PoolSaturated,
    PoolwardenError,
    ProbeError,
    TargetBadResponse,
    TargetTimeout,
    TargetUnreachable,
    TooManyConnections,
)
from poolwarden.guard import (
    Admission,
    AdmissionConfig,
    AdmissionCore,
    AdmissionDecision,
    AdmissionStats,
    Admit,
    AIMDLimit,
    AsyncAdmission,
    Budget,
    BudgetVerdict,
    Checkout,
    ConcurrencyLimit,
    Enqueue,
    FixedLimit,
    Gradient2Limit,
    GuardCollector,
    GuardedAsyncConnectionPool,
    GuardedConnectionPool,
    GuardOptions,
    GuardSnapshot,
    LeakTracker,
    Lease,
    PoolGuard,
    PoolMetrics,
    PoolState,
    PsycopgPoolSaturated,
    Reject,
    RejectReason,
    ServerSlots,
    Wake,
    apply_budget,
    check_budget,
    collector_for,
    complete,
    decide_budget,
    guard,
)
from poolwarden.probe.pgbouncer import (
    PgBouncerConfig,
    PgBouncerDatabase,
    PgBouncerPool,
    PgBouncerSnapshot,
    PgBouncerStats,
    pgbouncer_snapshot,
)
from poolwarden.probe.postgres import (
    ActiveQuery,
    BackgroundGroup,
    ConnectionGroup,
    ConnectionLimit,
    IdleInTransaction,
    LockWait,
    ServerSnapshot,
    snapshot,
)
from poolwarden.probe.scrape import (
    MetricFamily,
    MetricSample,
    ScrapeResult,
    parse_metrics,
    redact_url,
    scrape_metrics,
)

# Library etiquette: never configure logging for the application, never warn "no handler".
logging.getLogger("poolwarden").addHandler(logging.NullHandler())

__all__ = [
    "AIMDLimit",
    "ActiveQuery",
    "Admission",
    "AdmissionConfig",
    "AdmissionCore",
    "AdmissionDecision",
    "AdmissionStats",
    "Admit",
    "AsyncAdmission",
    "AuthenticationFailed",
    "BackgroundGroup",
    "Budget",
    "BudgetExceeded",
    "BudgetVerdict",
    "Checkout",
    "ConcurrencyLimit",
    "Config",
    "ConfigError",
    "ConnectionGroup",
    "ConnectionLimit",
    "DatabaseConfig",
    "DatabaseNotFound",
    "DatabaseUnreachable",
    "DsnError",
    "EmbeddedServer",
    "EmbeddedServerError",
    "EmbeddedStatus",
    "Enqueue",
    "FixedLimit",
    "Gradient2Limit",
    "GuardCollector",
    "GuardOptions",
    "GuardSnapshot",
    "GuardedAsyncConnectionPool",
    "GuardedConnectionPool",
    "IdleInTransaction",
    "LeakTracker",
    "Lease",
    "LockWait",
    "MetricFamily",
    "MetricSample",
    "PgBouncerConfig",
    "PgBouncerDatabase",
    "PgBouncerPool",
    "PgBouncerSnapshot",
    "PgBouncerStats",
    "PoolGuard",
    "PoolMetrics",
    "PoolSaturated",
    "PoolState",
    "PoolwardenError",
    "ProbeError",
    "PsycopgPoolSaturated",
    "Reject",
    "RejectReason",
    "ScrapeResult",
    "ServerSlots",
    "ServerSnapshot",
    "TargetBadResponse",
    "TargetConfig",
    "TargetTimeout",
    "TargetUnreachable",
    "TooManyConnections",
    "Wake",
    "apply_budget",
    "check_budget",
    "collector_for",
    "complete",
    "decide_budget",
    "default_data_dir",
    "guard",
    "load_config",
    "parse_metrics",
    "pgbouncer_snapshot",
    "redact_dsn",
    "redact_url",
    "scrape_metrics",
    "snapshot",
]
