"""`guard(pool, name=..., **options)`: wrap any supported pool in the guard."""

from __future__ import annotations

import dataclasses
from typing import Any

from poolwarden.errors import ConfigError
from poolwarden.guard._runtime import GuardOptions

__all__ = ["guard"]

_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(GuardOptions) if f.name != "budget_cap")


def guard(pool: Any, *, name: str | None = None, budget: Any = None, **options: Any) -> Any:
    """Return `pool` behind admission control, with the library's own acquire idiom.

    Supported: psycopg_pool `ConnectionPool` / `AsyncConnectionPool`, SQLAlchemy `Engine` /
    `AsyncEngine`, asyncpg `Pool`. `name` labels metrics and errors (default: the pool's own
    name where it has one). `options` are the fields of `GuardOptions` (docs/guard.md);
    `budget` checks the fleet's connections against the server before starting.
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ConfigError(
            f"guard(): unknown option {unknown[0]!r}; known options: {', '.join(_OPTION_NAMES)}"
        )
    opts = GuardOptions(**options)
    if budget is not None:
        from poolwarden.guard.budget import apply_budget

        opts = apply_budget(budget, pool, name, opts)
    kind = _kind(pool)
    if kind == "psycopg":
        from psycopg_pool import AsyncConnectionPool

        from poolwarden.guard import psycopg as adapter

        if isinstance(pool, AsyncConnectionPool):
            return adapter.GuardedAsyncConnectionPool(pool, name, opts)
        return adapter.GuardedConnectionPool(pool, name, opts)
    if kind == "sqlalchemy":
        from poolwarden.guard import sqlalchemy as sa_adapter

        return sa_adapter.guard_engine(pool, name, opts)
    if kind == "asyncpg":
        from poolwarden.guard import asyncpg as pg_adapter

        return pg_adapter.GuardedPool(pool, name, opts)
    raise ConfigError(
        f"guard(): cannot guard a {type(pool).__module__}.{type(pool).__qualname__}; pass a "
        "psycopg_pool ConnectionPool/AsyncConnectionPool, a SQLAlchemy Engine/AsyncEngine "
        "or an asyncpg Pool"
    )


def _kind(pool: Any) -> str:
    """Name the library a pool comes from, without importing libraries the app does not use."""
    for klass in type(pool).__mro__:
        root = klass.__module__.split(".")[0]
        if root == "psycopg_pool":
            return "psycopg"
        if root in ("sqlalchemy", "asyncpg"):
            return root
    return ""
