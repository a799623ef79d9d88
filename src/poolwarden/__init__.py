"""poolwarden: keep a PostgreSQL-backed service from being taken down by its connection pool."""

from __future__ import annotations

from poolwarden.errors import (
    AuthenticationFailed,
    ConfigError,
    DatabaseNotFound,
    DatabaseUnreachable,
    DsnError,
    EmbeddedServerError,
    PoolwardenError,
    ProbeError,
)

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "DatabaseNotFound",
    "DatabaseUnreachable",
    "DsnError",
    "EmbeddedServerError",
    "PoolwardenError",
    "ProbeError",
]
