"""Read the settings an audit needs from the live server and PgBouncer's admin console."""

from __future__ import annotations

from typing import Any, Literal

from poolwarden._dsn import describe_target
from poolwarden.plan._sources import (
    PgBouncerSettings,
    ServerSettings,
    parse_duration_ms,
    parse_size_kb,
)
from poolwarden.plan.topology import Topology
from poolwarden.probe._connect import connect
from poolwarden.probe.pgbouncer import pgbouncer_snapshot
from poolwarden.probe.postgres import PROBE_APPLICATION_NAME

# current_setting() gives each value with its unit ('4MB', '30s'); the parsers share the
# declared settings' rules. The missing_ok form covers settings older servers lack.
_SETTINGS_SQL = """
SELECT current_setting('max_connections'),
       current_setting('superuser_reserved_connections'),
       coalesce(current_setting('reserved_connections', true), '0'),
       current_setting('statement_timeout'),
       current_setting('idle_in_transaction_session_timeout'),
       coalesce(current_setting('idle_session_timeout', true), '0'),
       current_setting('work_mem'),
       current_setting('shared_buffers'),
       current_setting('maintenance_work_mem')
"""


def read_server_settings(topology: Topology, *, connect_timeout: float = 5.0) -> ServerSettings:
    """Return the server's settings: read live when ``server.dsn`` is set, else declared.

    Raises the probe's `ProbeError` subclasses when the server cannot be read.
    """
    spec = topology.server
    if spec.dsn is None:
        return spec.declared()
    with (
        connect(spec.dsn, application_name=PROBE_APPLICATION_NAME, timeout=connect_timeout) as conn,
        conn.transaction(),
        conn.cursor() as cur,
    ):
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(_SETTINGS_SQL)
        row: Any = cur.fetchone()
    assert row is not None, describe_target(spec.dsn)
    values = [str(v) for v in row]
    return ServerSettings(
        source="live", max_connections=int(values[0]),
        superuser_reserved_connections=int(values[1]), reserved_connections=int(values[2]),
        statement_timeout_ms=parse_duration_ms(values[3]),
        idle_in_transaction_session_timeout_ms=parse_duration_ms(values[4]),
        idle_session_timeout_ms=parse_duration_ms(values[5]),
        work_mem_kb=parse_size_kb(values[6]), shared_buffers_kb=parse_size_kb(values[7]),
        maintenance_work_mem_kb=parse_size_kb(values[8]),
        memory_gb=spec.memory_gb, cores=spec.cores,
    )  # fmt: skip


def read_pgbouncer_settings(
    topology: Topology, *, connect_timeout: float = 5.0
) -> PgBouncerSettings | None:
    """Return PgBouncer's settings: from its admin console when ``admin_dsn`` is set."""
    spec = topology.pgbouncer
    if spec is None or spec.admin_dsn is None:
        return None if spec is None else spec.settings
    snap = pgbouncer_snapshot(spec.admin_dsn, connect_timeout=connect_timeout)
    c = snap.config
    databases = {db.name: db.pool_size or None for db in snap.databases if db.name != "pgbouncer"}
    return PgBouncerSettings(
        max_client_conn=c.max_client_conn, default_pool_size=c.default_pool_size,
        reserve_pool_size=c.reserve_pool_size, max_db_connections=c.max_db_connections,
        max_user_connections=c.max_user_connections,
        pool_mode=_POOL_MODES.get(c.pool_mode, "session"),
        query_wait_timeout=c.query_wait_timeout, server_idle_timeout=c.server_idle_timeout,
        server_lifetime=c.server_lifetime,
        client_idle_timeout=float(c.raw.get("client_idle_timeout", "0") or 0),
        databases=databases or {"*": None},
    )  # fmt: skip


_POOL_MODES: dict[str, Literal["session", "transaction", "statement"]] = {
    "session": "session", "transaction": "transaction", "statement": "statement",
}  # fmt: skip


def read_live_settings(
    topology: Topology, *, connect_timeout: float = 5.0
) -> tuple[ServerSettings, PgBouncerSettings | None]:
    """Read what `audit` needs: the server's settings and PgBouncer's, live where possible."""
    return (
        read_server_settings(topology, connect_timeout=connect_timeout),
        read_pgbouncer_settings(topology, connect_timeout=connect_timeout),
    )
