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

__all__ = [
    "ActiveQuery",
    "BackgroundGroup",
    "ConnectionGroup",
    "ConnectionLimit",
    "IdleInTransaction",
    "LockWait",
    "ServerSnapshot",
    "snapshot",
]
