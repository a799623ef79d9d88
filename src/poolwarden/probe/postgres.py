"""Read what a PostgreSQL server's connection slots are doing, in one consistent snapshot.

`snapshot(dsn)` opens one short read-only session and returns a `ServerSnapshot`: the
limits, who holds the client connections (by application, user, database and state), the
sessions idle in a transaction, the oldest running query, lock waits with their blockers,
role and database connection limits, and the background processes. It needs no more than
the `pg_monitor` role. It never judges what it sees; `watch` does. Field reference:
docs/status.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from poolwarden._dsn import describe_target
from poolwarden.probe._connect import connect

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

PROBE_APPLICATION_NAME = "poolwarden-probe"

# Every state pg_stat_activity reports for a client backend, in display order. A NULL state
# means the probing role may not see that session's details (no pg_read_all_stats).
STATES = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
    "unknown",
)


@dataclass(frozen=True, slots=True)
class ConnectionGroup:
    """Client connections sharing application_name, user, database and state."""

    application_name: str
    usename: str
    datname: str
    state: str
    count: int


@dataclass(frozen=True, slots=True)
class IdleInTransaction:
    """A session that opened a transaction and is not running anything."""

    pid: int
    application_name: str
    usename: str
    datname: str
    idle_s: float
    transaction_age_s: float
    aborted: bool


@dataclass(frozen=True, slots=True)
class ActiveQuery:
    """A running statement (its text is never collected: it may hold secrets)."""

    pid: int
    application_name: str
    usename: str
    datname: str
    age_s: float
    wait_event_type: str


@dataclass(frozen=True, slots=True)
class LockWait:
    """A session waiting on a heavyweight lock, and the sessions that block it."""

    pid: int
    application_name: str
    usename: str
    datname: str
    waiting_s: float
    lock_type: str
    mode: str
    blocked_by: tuple[int, ...]
    blocked_by_applications: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConnectionLimit:
    """A role's or database's CONNECTION LIMIT and how many connections use it now."""

    kind: str  # "role" or "database"
    name: str
    limit: int
    current: int


@dataclass(frozen=True, slots=True)
class BackgroundGroup:
    """Server processes that are not client connections (autovacuum, walwriter, ...)."""

    backend_type: str
    count: int


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """What the server's connection slots were doing at `taken_at`; see docs/status.md."""

    target: str
    taken_at: datetime
    server_version: str
    server_version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    usable_connections: int
    client_connections: int
    by_state: dict[str, int]
    groups: tuple[ConnectionGroup, ...]
    idle_in_transaction: tuple[IdleInTransaction, ...]
    oldest_active_query: ActiveQuery | None
    oldest_active_query_s: float
    lock_waits: tuple[LockWait, ...]
    role_limits: tuple[ConnectionLimit, ...]
    database_limits: tuple[ConnectionLimit, ...]
    background: tuple[BackgroundGroup, ...]
    background_processes: int
    probe_pid: int
    session_user: str
    database: str
    superuser: bool
    full_visibility: bool

    @property
    def used_ratio(self) -> float:
        """Client connections as a fraction of the slots an ordinary role can use."""
        return self.client_connections / self.usable_connections if self.usable_connections else 1.0


def snapshot(dsn: str, *, connect_timeout: float = 5.0) -> ServerSnapshot:
    """Connect to `dsn` and return one consistent `ServerSnapshot`.

    Raises a `ProbeError` subclass (unreachable, authentication, missing database) with a
    one-line message naming the target without its password.
    """
    # One transaction: PostgreSQL caches the statistics snapshot per transaction, so every
    # section below sees the same pg_stat_activity.
    with (
        connect(dsn, application_name=PROBE_APPLICATION_NAME, timeout=connect_timeout) as conn,
        conn.transaction(),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        cur.execute("SET TRANSACTION READ ONLY")
        return _collect(cur, describe_target(dsn))


def _collect(cur: psycopg.Cursor[dict[str, Any]], target: str) -> ServerSnapshot:
    head = _one(cur, _SETTINGS_SQL)
    usable = head["max_connections"] - head["superuser_reserved"] - head["reserved"]
    groups = tuple(ConnectionGroup(**row) for row in _all(cur, _GROUPS_SQL))
    by_state = dict.fromkeys(STATES, 0)
    for group in groups:
        by_state[group.state] = by_state.get(group.state, 0) + group.count
    idle = tuple(IdleInTransaction(**row) for row in _all(cur, _IDLE_IN_TX_SQL))
    oldest = [ActiveQuery(**row) for row in _all(cur, _OLDEST_QUERY_SQL)]
    background = tuple(BackgroundGroup(**row) for row in _all(cur, _BACKGROUND_SQL))
    limits = [ConnectionLimit(**row) for row in _all(cur, _LIMITS_SQL)]
    return ServerSnapshot(
        target=target,
        taken_at=head["taken_at"],
        server_version=head["server_version"],
        server_version_num=head["server_version_num"],
        max_connections=head["max_connections"],
        superuser_reserved_connections=head["superuser_reserved"],
        reserved_connections=head["reserved"],
        usable_connections=usable,
        client_connections=sum(g.count for g in groups),
        by_state=by_state,
        groups=groups,
        idle_in_transaction=idle,
        oldest_active_query=oldest[0] if oldest else None,
        oldest_active_query_s=oldest[0].age_s if oldest else 0.0,
        lock_waits=_lock_waits(cur, head["server_version_num"]),
        role_limits=tuple(lim for lim in limits if lim.kind == "role"),
        database_limits=tuple(lim for lim in limits if lim.kind == "database"),
        background=background,
        background_processes=sum(b.count for b in background),
        probe_pid=head["probe_pid"],
        session_user=head["session_user"],
        database=head["database"],
        superuser=head["superuser"],
        full_visibility=head["full_visibility"],
    )


def _lock_waits(cur: psycopg.Cursor[dict[str, Any]], version_num: int) -> tuple[LockWait, ...]:
    sql = _LOCK_WAITS_SQL
    if version_num < 140000:  # pg_locks.waitstart arrived in PostgreSQL 14
        sql = sql.replace("waitstart AS waitstart", "NULL::timestamptz AS waitstart")
    rows = _all(cur, sql)
    return tuple(
        LockWait(
            **{k: v for k, v in row.items() if k not in ("blocked_by", "blocked_by_applications")},
            blocked_by=tuple(row["blocked_by"]),
            blocked_by_applications=tuple(row["blocked_by_applications"]),
        )
        for row in rows
    )


def _one(cur: psycopg.Cursor[dict[str, Any]], sql: str) -> dict[str, Any]:
    cur.execute(sql)
    row = cur.fetchone()
    assert row is not None
    return row


def _all(cur: psycopg.Cursor[dict[str, Any]], sql: str) -> list[dict[str, Any]]:
    cur.execute(sql)
    return cur.fetchall()


_SETTINGS_SQL = """
SELECT now() AS taken_at,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
       pg_backend_pid() AS probe_pid,
       session_user::text AS session_user,
       current_database()::text AS database,
       (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) AS superuser,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
         OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS full_visibility
"""


def _clients(alias: str = "") -> str:
    """SQL condition selecting client backends in pg_stat_activity (optionally aliased).

    Background workers and WAL senders do not take max_connections slots (PostgreSQL 12+).
    Without pg_read_all_stats, other users' rows hide backend_type; a hidden row with a
    database is then taken for a client (autovacuum workers are the rare false positive).
    The probe's own session is counted: it does take a slot.
    """
    p = f"{alias}." if alias else ""
    return f"coalesce({p}backend_type = 'client backend', {p}datid IS NOT NULL)"


_CLIENTS = _clients()

_GROUPS_SQL = f"""
SELECT coalesce(application_name, '') AS application_name,
       coalesce(usename::text, '') AS usename,
       coalesce(datname::text, '') AS datname,
       coalesce(state, 'unknown') AS state,
       count(*)::int AS count
FROM pg_stat_activity
WHERE {_CLIENTS}
GROUP BY 1, 2, 3, 4
ORDER BY 5 DESC, 1, 2, 3, 4
"""

_IDLE_IN_TX_SQL = f"""
SELECT pid,
       coalesce(application_name, '') AS application_name,
       coalesce(usename::text, '') AS usename,
       coalesce(datname::text, '') AS datname,
       extract(epoch FROM clock_timestamp() - state_change)::float8 AS idle_s,
       extract(epoch FROM clock_timestamp() - xact_start)::float8 AS transaction_age_s,
       state = 'idle in transaction (aborted)' AS aborted
FROM pg_stat_activity
WHERE {_CLIENTS} AND state IN ('idle in transaction', 'idle in transaction (aborted)')
ORDER BY state_change, pid
"""

_OLDEST_QUERY_SQL = f"""
SELECT pid,
       coalesce(application_name, '') AS application_name,
       coalesce(usename::text, '') AS usename,
       coalesce(datname::text, '') AS datname,
       extract(epoch FROM clock_timestamp() - query_start)::float8 AS age_s,
       coalesce(wait_event_type, '') AS wait_event_type
FROM pg_stat_activity
WHERE {_CLIENTS} AND state = 'active' AND pid <> pg_backend_pid()
ORDER BY query_start, pid
LIMIT 1
"""

_LOCK_WAITS_SQL = f"""
SELECT a.pid,
       coalesce(a.application_name, '') AS application_name,
       coalesce(a.usename::text, '') AS usename,
       coalesce(a.datname::text, '') AS datname,
       extract(epoch FROM clock_timestamp()
               - coalesce(l.waitstart, a.state_change))::float8 AS waiting_s,
       coalesce(l.locktype, '') AS lock_type,
       coalesce(l.mode, '') AS mode,
       b.pids AS blocked_by,
       ARRAY(SELECT coalesce(s.application_name, '') FROM unnest(b.pids) AS p(pid)
             JOIN pg_stat_activity s ON s.pid = p.pid ORDER BY p.pid) AS blocked_by_applications
FROM pg_stat_activity a
CROSS JOIN LATERAL (SELECT ARRAY(SELECT unnest(pg_blocking_pids(a.pid)) ORDER BY 1) AS pids) b
LEFT JOIN LATERAL (
    SELECT locktype, mode, waitstart AS waitstart FROM pg_locks
    WHERE pid = a.pid AND NOT granted LIMIT 1
) l ON true
WHERE {_clients("a")} AND a.wait_event_type = 'Lock' AND cardinality(b.pids) > 0
ORDER BY waiting_s DESC, a.pid
"""

_LIMITS_SQL = f"""
SELECT 'role' AS kind, r.rolname::text AS name, r.rolconnlimit AS limit,
       (SELECT count(*) FROM pg_stat_activity a
        WHERE a.usesysid = r.oid AND {_clients("a")})::int AS current
FROM pg_roles r WHERE r.rolconnlimit >= 0
UNION ALL
SELECT 'database', d.datname::text, d.datconnlimit,
       (SELECT count(*) FROM pg_stat_activity a
        WHERE a.datid = d.oid AND {_clients("a")})::int
FROM pg_database d WHERE d.datconnlimit >= 0
ORDER BY 1 DESC, 2
"""

_BACKGROUND_SQL = f"""
SELECT backend_type, count(*)::int AS count
FROM pg_stat_activity
WHERE NOT ({_CLIENTS})
GROUP BY 1
ORDER BY 2 DESC, 1
"""
