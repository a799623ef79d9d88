"""Read-only collectors: each returns plain frozen dataclasses and never judges them."""

from __future__ import annotations

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
    "ScrapeResult",
    "ServerSnapshot",
    "parse_metrics",
    "redact_url",
    "scrape_metrics",
    "snapshot",
]
