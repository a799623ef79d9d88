"""Read what a PgBouncer is doing from its admin console, in one snapshot.

`pgbouncer_snapshot(admin_dsn)` logs into the admin console (``dbname=pgbouncer``, as a
member of ``admin_users`` or ``stats_users``), runs ``SHOW VERSION``, ``SHOW POOLS``,
``SHOW STATS``, ``SHOW DATABASES`` and ``SHOW CONFIG`` and returns a `PgBouncerSnapshot`.
Columns are read by name, because they differ between PgBouncer versions: a column this
version lacks reads as 0 (or empty) and is listed in `missing_columns`, nowhere else. The
probe never judges what it sees; `watch` does. Field reference: docs/pgbouncer.md.

The console speaks only the simple query protocol and refuses ``BEGIN``, so the probe uses
an autocommit connection and a `psycopg.ClientCursor` without parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from poolwarden._dsn import describe_target
from poolwarden.probe._pgbouncer_console import (
    Deadline,
    connect_admin,
    query_deadline,
    query_error,
)

__all__ = [
    "PgBouncerConfig",
    "PgBouncerDatabase",
    "PgBouncerPool",
    "PgBouncerSnapshot",
    "PgBouncerStats",
    "pgbouncer_snapshot",
]

# The commands whose columns are read by name; each is a key of `missing_columns`.
COMMANDS = ("SHOW POOLS", "SHOW STATS", "SHOW DATABASES", "SHOW CONFIG")


@dataclass(frozen=True, slots=True)
class PgBouncerPool:
    """One (database, user) pool from SHOW POOLS: its clients, its server connections."""

    database: str
    user: str
    cl_active: int
    cl_waiting: int
    cl_active_cancel_req: int
    cl_waiting_cancel_req: int
    sv_active: int
    sv_active_cancel: int
    sv_being_canceled: int
    sv_idle: int
    sv_used: int
    sv_tested: int
    sv_login: int
    maxwait_s: float
    pool_mode: str


@dataclass(frozen=True, slots=True)
class PgBouncerStats:
    """One database's SHOW STATS: totals since start, averages over the last stats_period."""

    database: str
    total_xact_count: int
    total_query_count: int
    total_server_assignment_count: int
    total_received: int
    total_sent: int
    total_xact_time_s: float
    total_query_time_s: float
    total_wait_time_s: float
    avg_xact_count: float
    avg_query_count: float
    avg_server_assignment_count: float
    avg_recv: float
    avg_sent: float
    avg_xact_time_s: float
    avg_query_time_s: float
    avg_wait_time_s: float


@dataclass(frozen=True, slots=True)
class PgBouncerDatabase:
    """One entry of SHOW DATABASES: where it points and its limits."""

    name: str
    host: str
    port: int
    database: str
    force_user: str
    pool_size: int
    min_pool_size: int
    reserve_pool: int
    pool_mode: str
    max_connections: int
    current_connections: int
    paused: bool
    disabled: bool


@dataclass(frozen=True, slots=True)
class PgBouncerConfig:
    """The settings of SHOW CONFIG that size and time the pools (times in seconds), and all."""

    max_client_conn: int
    default_pool_size: int
    min_pool_size: int
    reserve_pool_size: int
    reserve_pool_timeout: float
    max_db_connections: int
    max_user_connections: int
    pool_mode: str
    query_wait_timeout: float
    server_idle_timeout: float
    server_lifetime: float
    idle_transaction_timeout: float
    raw: dict[str, str]


@dataclass(frozen=True, slots=True)
class PgBouncerSnapshot:
    """What a PgBouncer's pools were doing at `taken_at`; see docs/pgbouncer.md."""

    target: str
    taken_at: datetime
    version: str
    version_info: tuple[int, ...]
    pools: tuple[PgBouncerPool, ...]
    stats: tuple[PgBouncerStats, ...]
    databases: tuple[PgBouncerDatabase, ...]
    config: PgBouncerConfig
    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    servers_used: int
    max_wait_s: float
    missing_columns: dict[str, tuple[str, ...]]


def pgbouncer_snapshot(
    admin_dsn: str, *, connect_timeout: float = 5.0, query_timeout: float = 5.0
) -> PgBouncerSnapshot:
    """Log into PgBouncer's admin console at `admin_dsn` and return a `PgBouncerSnapshot`.

    `query_timeout` bounds the SHOW commands together: a PgBouncer that accepted the login
    and then stopped answering cannot hang the caller. Raises a `ProbeError` subclass with a
    one-line message naming the target without its password.
    """
    target = describe_target(admin_dsn)
    taken_at = datetime.now(UTC)
    with (
        connect_admin(admin_dsn, target, connect_timeout) as conn,
        query_deadline(conn, query_timeout) as deadline,
    ):
        tables = _read(conn, target, deadline)
    return _build(target, taken_at, tables)


# -- reading ---------------------------------------------------------------------------


class _Table:
    """One SHOW command's rows, read by column name; notes the columns this version lacks."""

    def __init__(self, command: str, columns: tuple[str, ...], rows: list[dict[str, Any]]):
        self.command = command
        self.columns = frozenset(columns)
        self.rows = rows
        self.missing: set[str] = set()

    def value(self, row: dict[str, Any], name: str) -> Any:
        """Return column `name`, or its spelling in this version, or None if it has neither."""
        for spelling in (name, *_SPELLINGS.get(name, ())):
            if spelling in self.columns:
                return row[spelling]
        self.missing.add(name)
        return None

    def count(self, row: dict[str, Any], name: str) -> int:
        value = self.value(row, name)
        return int(value) if value is not None else 0

    def rate(self, row: dict[str, Any], name: str) -> float:
        value = self.value(row, name)
        return float(value) if value is not None else 0.0

    def seconds(self, row: dict[str, Any], name: str) -> float:
        """Read a duration PgBouncer reports in microseconds, as seconds."""
        return self.rate(row, name) / 1_000_000

    def text(self, row: dict[str, Any], name: str) -> str:
        value = self.value(row, name)
        return str(value) if value is not None else ""


# Other versions' names for a column: before 1.18 SHOW POOLS had cl_cancel_req, before 1.8
# SHOW STATS counted "requests" and had avg_query; 1.24 renamed reserve_pool.
_SPELLINGS = {
    "cl_waiting_cancel_req": ("cl_cancel_req",),
    "total_query_count": ("total_requests",),
    "avg_query_count": ("avg_req",),
    "avg_query_time": ("avg_query",),
    "reserve_pool": ("reserve_pool_size",),
}


def _read(conn: psycopg.Connection[Any], target: str, deadline: Deadline) -> dict[str, _Table]:
    cur = psycopg.ClientCursor(conn, row_factory=dict_row)
    tables: dict[str, _Table] = {}
    for command in ("SHOW VERSION", *COMMANDS):
        try:
            # prepare=False and no parameters: the console rejects the extended protocol.
            cur.execute(command, prepare=False)
            columns = tuple(col.name for col in cur.description or ())
            tables[command] = _Table(command, columns, cur.fetchall())
        except psycopg.Error as exc:
            timeout = deadline.seconds if deadline.fired.is_set() else 0.0
            raise query_error(conn, target, command, exc, timeout) from None
    return tables


def _build(target: str, taken_at: datetime, tables: dict[str, _Table]) -> PgBouncerSnapshot:
    config = _config(tables["SHOW CONFIG"])
    pools = _pools(tables["SHOW POOLS"])
    version = _version(tables["SHOW VERSION"])
    return PgBouncerSnapshot(
        target=target,
        taken_at=taken_at,
        version=version,
        version_info=tuple(int(part) for part in version.split(".")) if version else (),
        pools=pools,
        stats=_stats(tables["SHOW STATS"]),
        databases=_databases(tables["SHOW DATABASES"], config.pool_mode),
        config=config,
        clients_active=sum(p.cl_active for p in pools),
        clients_waiting=sum(p.cl_waiting for p in pools),
        servers_active=sum(p.sv_active for p in pools),
        servers_idle=sum(p.sv_idle for p in pools),
        servers_used=sum(p.sv_used for p in pools),
        max_wait_s=max((p.maxwait_s for p in pools), default=0.0),
        missing_columns={cmd: tuple(sorted(tables[cmd].missing)) for cmd in COMMANDS},
    )


def _version(table: _Table) -> str:
    text = table.text(table.rows[0], "version") if table.rows else ""
    match = re.search(r"\d+(?:\.\d+)*", text)  # "PgBouncer 1.18.0"
    return match[0] if match else ""


_POOL_COUNTS = (
    "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
    "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used",
    "sv_tested", "sv_login",
)  # fmt: skip


def _pools(t: _Table) -> tuple[PgBouncerPool, ...]:
    return tuple(
        PgBouncerPool(
            database=t.text(row, "database"),
            user=t.text(row, "user"),
            **{name: t.count(row, name) for name in _POOL_COUNTS},
            # maxwait holds whole seconds, maxwait_us the microseconds beyond them.
            maxwait_s=t.count(row, "maxwait") + t.count(row, "maxwait_us") / 1_000_000,
            pool_mode=t.text(row, "pool_mode"),
        )
        for row in t.rows
    )


def _stats(t: _Table) -> tuple[PgBouncerStats, ...]:
    return tuple(
        PgBouncerStats(
            database=t.text(row, "database"),
            total_xact_count=t.count(row, "total_xact_count"),
            total_query_count=t.count(row, "total_query_count"),
            total_server_assignment_count=t.count(row, "total_server_assignment_count"),
            total_received=t.count(row, "total_received"),
            total_sent=t.count(row, "total_sent"),
            total_xact_time_s=t.seconds(row, "total_xact_time"),
            total_query_time_s=t.seconds(row, "total_query_time"),
            total_wait_time_s=t.seconds(row, "total_wait_time"),
            avg_xact_count=t.rate(row, "avg_xact_count"),
            avg_query_count=t.rate(row, "avg_query_count"),
            avg_server_assignment_count=t.rate(row, "avg_server_assignment_count"),
            avg_recv=t.rate(row, "avg_recv"),
            avg_sent=t.rate(row, "avg_sent"),
            avg_xact_time_s=t.seconds(row, "avg_xact_time"),
            avg_query_time_s=t.seconds(row, "avg_query_time"),
            avg_wait_time_s=t.seconds(row, "avg_wait_time"),
        )
        for row in t.rows
    )


def _databases(t: _Table, default_pool_mode: str) -> tuple[PgBouncerDatabase, ...]:
    return tuple(
        PgBouncerDatabase(
            name=t.text(row, "name"),
            host=t.text(row, "host"),
            port=t.count(row, "port"),
            database=t.text(row, "database"),
            force_user=t.text(row, "force_user"),
            pool_size=t.count(row, "pool_size"),
            min_pool_size=t.count(row, "min_pool_size"),
            reserve_pool=t.count(row, "reserve_pool"),
            # NULL means the database follows the global pool_mode.
            pool_mode=t.text(row, "pool_mode") or default_pool_mode,
            max_connections=t.count(row, "max_connections"),
            current_connections=t.count(row, "current_connections"),
            paused=bool(t.count(row, "paused")),
            disabled=bool(t.count(row, "disabled")),
        )
        for row in t.rows
    )


# PgBouncer's documented defaults, for a key an older version's SHOW CONFIG lacks.
_CONFIG_DEFAULTS: dict[str, int | float | str] = {
    "max_client_conn": 100,
    "default_pool_size": 20,
    "min_pool_size": 0,
    "reserve_pool_size": 0,
    "reserve_pool_timeout": 5.0,
    "max_db_connections": 0,
    "max_user_connections": 0,
    "pool_mode": "session",
    "query_wait_timeout": 120.0,
    "server_idle_timeout": 600.0,
    "server_lifetime": 3600.0,
    "idle_transaction_timeout": 0.0,
}


def _config(t: _Table) -> PgBouncerConfig:
    raw = {t.text(row, "key"): t.text(row, "value") for row in t.rows}
    typed: dict[str, Any] = {}
    for key, default in _CONFIG_DEFAULTS.items():
        try:
            value = raw[key]
            typed[key] = value if isinstance(default, str) else type(default)(float(value))
        except (KeyError, ValueError):
            t.missing.add(key)  # absent in this version, or unreadable: the default holds
            typed[key] = default
    return PgBouncerConfig(**typed, raw=raw)
