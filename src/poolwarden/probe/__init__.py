"""Read-only collectors: each returns plain frozen dataclasses and never judges them."""

from __future__ import annotations

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

__all__ = [
    "ActiveQuery",
    "BackgroundGroup",
    "ConnectionGroup",
    "ConnectionLimit",
    "IdleInTransaction",
    "LockWait",
    "MetricFamily",
    "MetricSample",
    "PgBouncerConfig",
    "PgBouncerDatabase",
    "PgBouncerPool",
    "PgBouncerSnapshot",
    "PgBouncerStats",
    "ScrapeResult",
    "ServerSnapshot",
    "parse_metrics",
    "pgbouncer_snapshot",
    "redact_url",
    "scrape_metrics",
    "snapshot",
]
