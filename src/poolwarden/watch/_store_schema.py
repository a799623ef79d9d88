"""The store's tables, and how incidents and their timelines map onto rows.

SQLAlchemy Core tables for the schema version, incidents, timeline events, notification
claims, the rule engine's state and samples; the column types that redact DSN passwords
(`redacted`), keep JSON as text and keep times aware and in UTC on SQLite too; and the
conversions between `Incident` / `TimelineEvent` and their rows, used by `watch.store`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from poolwarden._dsn import redact_dsn
from poolwarden.watch.incidents import AlertState, Incident, RootCause, TimelineEvent


class _RedactedText(sa.types.TypeDecorator[str]):
    """Text that loses any DSN password on its way into the database."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else redact_dsn(value)


class _Json(sa.types.TypeDecorator[Any]):
    """JSON kept as text (NaN survives, key order too), its strings redacted."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else json.dumps(redacted(value))

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> Any:
        return None if value is None else json.loads(value)


class _UtcDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime in, an aware UTC datetime out, on SQLite too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        # SQLite keeps text; naive UTC text sorts by time.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()
version = sa.Table(
    "poolwarden_schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", _UtcDateTime, nullable=False),
)
incidents = sa.Table(
    "poolwarden_incidents",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key", _RedactedText, nullable=False),
    sa.Column("labels", _Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("title", _RedactedText, nullable=False),
    sa.Column("opened_at", _UtcDateTime, nullable=False),
    sa.Column("resolved_at", _UtcDateTime),
    sa.Column("alerts", _Json, nullable=False),
    sa.Column("root_cause", _Json),
    # Timeline length: an older snapshot (fewer events) never overwrites a newer one.
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("updated_at", _UtcDateTime, nullable=False),
    sa.Index("ix_poolwarden_incidents_status_opened", "status", "opened_at"),
)
events = sa.Table(
    "poolwarden_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("incident_id", sa.String(32), sa.ForeignKey(incidents.c.id), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("at", _UtcDateTime, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("text", _RedactedText, nullable=False),
    sa.Column("data", _Json, nullable=False),
    sa.Index("ix_poolwarden_events_incident_at", "incident_id", "at"),
)
notifications = sa.Table(
    "poolwarden_notifications",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("detail", _RedactedText, nullable=False),
    sa.Column("claimed_at", _UtcDateTime, nullable=False),
    sa.Column("updated_at", _UtcDateTime, nullable=False),
)
alert_state = sa.Table(
    "poolwarden_alert_state",
    metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("state", _Json, nullable=False),
    sa.Column("updated_at", _UtcDateTime, nullable=False),
)
samples = sa.Table(
    "poolwarden_samples",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", _UtcDateTime, nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("labels", _Json, nullable=False),
    sa.Column("value", sa.Double, nullable=False),
    sa.Index("ix_poolwarden_samples_at", "at"),
)


def load_incidents(conn: sa.Connection, query: Any) -> tuple[Incident, ...]:
    """Return the incidents `query` selects, each with its timeline."""
    rows = conn.execute(query).mappings().all()
    timelines: dict[str, list[TimelineEvent]] = {row["id"]: [] for row in rows}
    if timelines:
        found = conn.execute(
            sa.select(events)
            .where(events.c.incident_id.in_(list(timelines)))
            .order_by(events.c.at, events.c.seq)
        ).mappings()
        for ev in found:
            timelines[ev["incident_id"]].append(_event_from_row(ev))
    return tuple(_incident_from_row(row, timelines[row["id"]]) for row in rows)


# Incident fields kept in columns of the same name.
_INCIDENT_COLUMNS = (
    "id",
    "key",
    "labels",
    "status",
    "severity",
    "title",
    "opened_at",
    "resolved_at",
)


def incident_row(incident: Incident, updated_at: datetime) -> dict[str, Any]:
    """Return the incident's row (not its events); its revision is its timeline's length."""
    cause = incident.root_cause
    return {
        **{name: getattr(incident, name) for name in _INCIDENT_COLUMNS},
        "alerts": [_plain(alert) for alert in incident.alerts.values()],
        "root_cause": None if cause is None else _plain(cause),
        "revision": len(incident.timeline),
        "updated_at": updated_at,
    }


def _incident_from_row(row: RowMapping, timeline: Sequence[TimelineEvent]) -> Incident:
    alerts = [
        AlertState(
            **{**a, "fired_at": _time(a["fired_at"]), "resolved_at": _time(a["resolved_at"])}
        )
        for a in row["alerts"]
    ]
    cause = row["root_cause"]
    return Incident(
        **{name: row[name] for name in _INCIDENT_COLUMNS},
        alerts={alert.fingerprint: alert for alert in alerts},
        root_cause=None if cause is None else RootCause(**cause),
        timeline=tuple(timeline),
    )


def event_row(item: TimelineEvent) -> dict[str, Any]:
    """Return the timeline event's row."""
    return {f.name: getattr(item, f.name) for f in fields(item)}


def _event_from_row(row: RowMapping) -> TimelineEvent:
    return TimelineEvent(**{f.name: row[f.name] for f in fields(TimelineEvent)})


def _plain(item: AlertState | RootCause) -> dict[str, Any]:
    """Return a dataclass as a JSON object, times as ISO text in UTC."""
    values = ((f.name, getattr(item, f.name)) for f in fields(item))
    return {k: v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v for k, v in values}


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def redacted(value: Any) -> Any:
    """Return a JSON value with `redact_dsn` applied to every string in it."""
    if isinstance(value, str):
        return redact_dsn(value)
    if isinstance(value, Mapping):
        return {str(k): redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value
