"""Text rendering of snapshots for the CLI (rich tables); the library never prints."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from poolwarden.probe.postgres import ServerSnapshot

__all__ = ["format_duration", "headline", "render_status"]

_IDLE_IN_TX = ("idle in transaction", "idle in transaction (aborted)")


def format_duration(seconds: float) -> str:
    """Return `seconds` as a compact human duration: 850ms, 42s, 2m13s, 3h05m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def headline(snap: ServerSnapshot) -> str:
    """Return the one-line summary: usage of the usable slots and the idle-in-transaction count."""
    pct = round(100 * snap.used_ratio)
    text = f"{snap.client_connections} / {snap.usable_connections} usable connections ({pct} %)"
    idle = snap.idle_in_transaction
    if idle:
        oldest = max(s.idle_s for s in idle)
        text += f" — {len(idle)} idle in transaction, oldest {format_duration(oldest)}"
    else:
        text += " — none idle in transaction"
    return text


@dataclass
class _AppRow:
    users: set[str] = field(default_factory=set)
    databases: set[str] = field(default_factory=set)
    active: int = 0
    idle: int = 0
    idle_in_tx: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.active + self.idle + self.idle_in_tx + self.other


def _by_application(snap: ServerSnapshot) -> dict[str, _AppRow]:
    rows: dict[str, _AppRow] = defaultdict(_AppRow)
    for group in snap.groups:
        row = rows[group.application_name or "(no application_name)"]
        row.users.add(group.usename)
        row.databases.add(group.datname)
        if group.state == "active":
            row.active += group.count
        elif group.state == "idle":
            row.idle += group.count
        elif group.state in _IDLE_IN_TX:
            row.idle_in_tx += group.count
        else:
            row.other += group.count
    return dict(sorted(rows.items(), key=lambda kv: (-kv[1].total, kv[0])))


def render_status(snap: ServerSnapshot, console: Console) -> None:
    """Print the headline, the table by application and any lock waits or limits."""
    console.print(headline(snap), style="bold")
    console.print(
        f"{snap.target} · PostgreSQL {snap.server_version} · max_connections "
        f"{snap.max_connections} - {snap.superuser_reserved_connections} superuser reserved"
        f" - {snap.reserved_connections} reserved = {snap.usable_connections} usable",
        style="dim",
    )
    table = Table("application", "user", "database", "active", "idle", "idle in tx", "total")
    for name, row in _by_application(snap).items():
        table.add_row(
            name, ", ".join(sorted(row.users)), ", ".join(sorted(row.databases)),
            str(row.active), str(row.idle), str(row.idle_in_tx), str(row.total),
        )  # fmt: skip
    console.print(table)
    if snap.oldest_active_query is not None:
        q = snap.oldest_active_query
        console.print(
            f"oldest running query: {format_duration(q.age_s)} (pid {q.pid}, {q.application_name or '-'})"
        )
    for wait in snap.lock_waits:
        blockers = ", ".join(
            f"{pid} ({app or '-'})"
            for pid, app in zip(wait.blocked_by, wait.blocked_by_applications, strict=False)
        )
        console.print(
            f"lock wait: pid {wait.pid} ({wait.application_name or '-'}) waiting "
            f"{format_duration(wait.waiting_s)} for {wait.mode} on {wait.lock_type}, blocked by {blockers}"
        )
    for limit in (*snap.role_limits, *snap.database_limits):
        console.print(
            f"{limit.kind} {limit.name!r}: {limit.current} / {limit.limit} connection limit"
        )
    if not snap.full_visibility:
        console.print(
            "note: this role cannot see other users' session states; grant it pg_monitor",
            style="yellow",
        )
