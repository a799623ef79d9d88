"""Keep incidents, their timelines, notification claims and the rule engine's state.

`Store(url)` speaks SQLAlchemy Core to SQLite (the default; WAL, ``synchronous=FULL``) or
PostgreSQL (``postgresql+psycopg://user@host/db``); `create_schema()` is idempotent. Every
method commits before it returns, so after ``kill -9`` nothing committed is lost. Events
are inserted or ignored by id (replays change nothing) and `claim_notification` lets one
caller send each notification. Every string stored passes through `redact_dsn`.
`record_samples` and `read_samples` keep the series a postmortem charts
(`watch.samples`), pruned past `sample_retention_s`; `add_note` adds a person's (or the
drill's) note to an incident's timeline. Reference: docs/watch-incidents.md,
docs/postmortem.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import platformdirs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError
from poolwarden.watch import _store_schema as schema
from poolwarden.watch.incidents import Incident, TimelineEvent, timeline_event_id
from poolwarden.watch.samples import Sample

__all__ = ["STORE_SCHEMA_VERSION", "NotificationRecord", "Store", "default_store_url"]

# Bumped only for a change an older poolwarden cannot read; a new table is not one
# (create_all adds it at the next start and older readers never look at it).
STORE_SCHEMA_VERSION = 1
_URL_HINT = "write sqlite:///path/poolwarden.db or postgresql+psycopg://user@host:5432/dbname"


_NO_DATA: Mapping[str, object] = MappingProxyType({})
_PRUNE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """A claimed notification: ``pending`` (being sent, or the sender died), ``sent``, ``failed``."""

    key: str
    status: str
    attempts: int
    detail: str
    claimed_at: datetime
    updated_at: datetime


def default_store_url() -> str:
    """Return the default store: ``poolwarden.db`` in the user's data directory."""
    return f"sqlite:///{platformdirs.user_data_path('poolwarden') / 'poolwarden.db'}"


class Store:
    """Incidents, events, notification claims and alert state in SQLite or PostgreSQL.

    A bad URL raises `ConfigError` (one line, redacted); so does a store that cannot be
    reached or holds a newer schema, at `create_schema()`. Later database failures
    propagate as SQLAlchemy errors. Safe to share between threads.
    """

    def __init__(self, url: str | None = None, *, sample_retention_s: float = 86_400.0) -> None:
        self.url = url or default_store_url()
        self.target = redact_dsn(self.url)
        if not sample_retention_s > 0:
            raise ConfigError(
                f"store {self.target}: sample_retention_s is {sample_retention_s}; "
                "give more than 0 seconds (default 86400, a day)"
            )
        self.sample_retention_s = float(sample_retention_s)
        self._engine = _create_engine(self.url, self.target)
        self._dialect = self._engine.dialect.name
        self._pruned_at: datetime | None = None  # sample time of the last prune

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create_schema(self) -> None:
        """Create the tables if missing; refuse a schema newer than `STORE_SCHEMA_VERSION`."""
        try:
            with self._engine.begin() as conn:
                found = _schema_version(conn)
                if found is not None and found > STORE_SCHEMA_VERSION:
                    raise ConfigError(
                        f"store {self.target}: schema version {found} is newer than this "
                        f"poolwarden understands ({STORE_SCHEMA_VERSION}); upgrade poolwarden or "
                        "point --store at another database"
                    )
                schema.metadata.create_all(conn)
                if found is None:
                    conn.execute(
                        schema.version.insert().values(
                            id=1, version=STORE_SCHEMA_VERSION, created_at=_now()
                        )
                    )
        except sa.exc.DBAPIError as exc:
            raise ConfigError(
                f"store {self.target}: cannot open it ({_reason(exc)}); check the URL, "
                "that the server runs and that the user may create tables"
            ) from None

    # -- incidents ----------------------------------------------------------------------

    def open_incidents(self) -> tuple[Incident, ...]:
        """Return the open incidents, oldest first, with their timelines."""
        query = (
            sa.select(schema.incidents)
            .where(schema.incidents.c.status == "open")
            .order_by(schema.incidents.c.opened_at, schema.incidents.c.id)
        )
        with self._engine.connect() as conn:
            return schema.load_incidents(conn, query)

    def get_incident(self, incident_id: str) -> Incident | None:
        """Return one incident with its timeline, or None."""
        query = sa.select(schema.incidents).where(schema.incidents.c.id == incident_id)
        with self._engine.connect() as conn:
            found = schema.load_incidents(conn, query)
        return found[0] if found else None

    def list_incidents(self, limit: int = 50, status: str | None = None) -> tuple[Incident, ...]:
        """Return up to `limit` incidents (of `status` if given), newest first."""
        query = sa.select(schema.incidents).order_by(
            schema.incidents.c.opened_at.desc(), schema.incidents.c.id.desc()
        )
        if status is not None:
            query = query.where(schema.incidents.c.status == status)
        with self._engine.connect() as conn:
            return schema.load_incidents(conn, query.limit(limit))

    def upsert_incident(self, incident: Incident) -> None:
        """Insert or update the incident's row (not its events); a stale snapshot is ignored."""
        with self._engine.begin() as conn:
            self._upsert(conn, schema.incidents, schema.incident_row(incident, _now()), "id")

    def append_events(self, incident: Incident, events: Iterable[TimelineEvent]) -> int:
        """Upsert the incident and insert the events it lacks, in one transaction.

        Returns how many events were new; an event whose id is stored already is skipped.
        """
        events = tuple(events)
        strays = [e.id for e in events if e.incident_id != incident.id]
        if strays:
            raise ValueError(f"events {strays} do not belong to incident {incident.id}")
        with self._engine.begin() as conn:
            self._upsert(conn, schema.incidents, schema.incident_row(incident, _now()), "id")
            return sum(
                self._insert_new(conn, schema.events, schema.event_row(e), "id") for e in events
            )

    def save(self, incident: Incident) -> int:
        """Store the incident and its whole timeline; heals an earlier write that failed."""
        return self.append_events(incident, incident.timeline)

    def add_note(
        self, incident_id: str, at: datetime, text: str, data: Mapping[str, object] = _NO_DATA
    ) -> TimelineEvent:
        """Append a ``note`` to the incident's timeline (once: the id is derived from it).

        `data` holds JSON values. Raises ValueError when the store lacks the incident.
        """
        at = _as_utc(at)
        text = " ".join(redact_dsn(text).split())
        ident = timeline_event_id(incident_id, "note", "", at, text)
        event = TimelineEvent(ident, incident_id, "note", at, "", text, schema.redacted(dict(data)))
        with self._engine.begin() as conn:
            found = conn.execute(
                sa.select(schema.incidents.c.id).where(schema.incidents.c.id == incident_id)
            )
            if found.first() is None:
                raise ValueError(
                    f"incident {incident_id!r}: not in store {self.target}; add notes only "
                    "to an incident watch recorded there"
                )
            # The incident's row (and revision) stays as watch wrote it: a note never makes
            # watch's next snapshot of the incident look stale.
            self._insert_new(conn, schema.events, schema.event_row(event), "id")
        return event

    # -- samples ------------------------------------------------------------------------

    def record_samples(self, rows: Iterable[Sample]) -> int:
        """Insert the samples in one transaction; return how many.

        Samples older than `sample_retention_s` before the newest are deleted, at most
        once a minute of sample time.
        """
        samples = tuple(rows)
        if not samples:
            return 0
        values = [
            {"at": s.at, "name": str(s.name), "labels": dict(s.labels), "value": float(s.value)}
            for s in samples
        ]
        newest = max(_as_utc(s.at) for s in samples)
        with self._engine.begin() as conn:
            conn.execute(schema.samples.insert(), values)
            last = self._pruned_at
            if last is None or (newest - last).total_seconds() >= _PRUNE_EVERY_S:
                cutoff = newest - timedelta(seconds=self.sample_retention_s)
                conn.execute(sa.delete(schema.samples).where(schema.samples.c.at < cutoff))
                self._pruned_at = newest
        return len(samples)

    def read_samples(
        self, start: datetime, end: datetime, names: Sequence[str] | None = None
    ) -> tuple[Sample, ...]:
        """Return the samples from `start` to `end` (inclusive), of `names` if given, by time.

        A store no poolwarden with samples has opened yet has none: ().
        """
        query = sa.select(schema.samples).where(
            schema.samples.c.at >= start, schema.samples.c.at <= end
        )
        if names is not None:
            query = query.where(schema.samples.c.name.in_([str(n) for n in names]))
        with self._engine.connect() as conn:
            if not sa.inspect(conn).has_table(schema.samples.name):
                return ()
            rows = conn.execute(
                query.order_by(schema.samples.c.at, schema.samples.c.seq)
            ).mappings()
            return tuple(
                Sample(r["at"], r["name"], dict(r["labels"]), float(r["value"])) for r in rows
            )

    # -- notifications ------------------------------------------------------------------

    def claim_notification(self, key: str) -> bool:
        """Claim the right to send notification `key`; True for exactly one caller.

        A new key, or one whose last attempt ``failed``, is claimed (status ``pending``,
        attempts + 1). A ``pending`` or ``sent`` one is not: a sender that died after its
        claim may have sent, so it is never sent twice.
        """
        now = _now()
        row = {"key": key, "status": "pending", "attempts": 1, "detail": ""}
        with self._engine.begin() as conn:
            if self._insert_new(
                conn, schema.notifications, {**row, "claimed_at": now, "updated_at": now}, "key"
            ):
                return True
            retry = (
                sa.update(schema.notifications)
                .where(schema.notifications.c.key == key, schema.notifications.c.status == "failed")
                .values(
                    status="pending",
                    attempts=schema.notifications.c.attempts + 1,
                    claimed_at=now,
                    updated_at=now,
                )
            )
            return bool(conn.execute(retry).rowcount == 1)

    def mark_notification(self, key: str, ok: bool, detail: str = "") -> None:
        """Record how the claimed notification `key` went: ``sent`` or ``failed``."""
        now = _now()
        status = "sent" if ok else "failed"
        row = {"key": key, "status": status, "attempts": 1, "detail": detail}
        with self._engine.begin() as conn:
            row |= {"claimed_at": now, "updated_at": now}
            self._upsert(conn, schema.notifications, row, "key", keep=("attempts", "claimed_at"))

    def get_notification(self, key: str) -> NotificationRecord | None:
        """Return what is known of notification `key`, or None if never claimed."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(schema.notifications).where(schema.notifications.c.key == key)
            ).first()
        return NotificationRecord(**row._mapping) if row is not None else None

    # -- rule engine state ---------------------------------------------------------------

    def save_alert_state(self, states: Mapping[str, Any]) -> None:
        """Replace the rule engine's state: one JSON value per alert fingerprint."""
        now = _now()
        with self._engine.begin() as conn:
            conn.execute(
                sa.delete(schema.alert_state).where(schema.alert_state.c.fingerprint.not_in(states))
            )
            for fingerprint, state in states.items():
                row = {"fingerprint": fingerprint, "state": state, "updated_at": now}
                self._upsert(conn, schema.alert_state, row, "fingerprint")

    def load_alert_state(self) -> dict[str, Any]:
        """Return the rule engine's state as last saved, by fingerprint."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(schema.alert_state.c.fingerprint, schema.alert_state.c.state)
            )
            return dict(rows.all())

    # -- plumbing -----------------------------------------------------------------------

    def _insert_new(
        self, conn: sa.Connection, table: sa.Table, row: dict[str, Any], key: str
    ) -> int:
        """Insert `row` unless one with its `key` exists; return 1 if inserted, else 0."""
        stmt = self._insert(table).values(row).on_conflict_do_nothing(index_elements=[key])
        # RETURNING rather than rowcount: SQLAlchemy reports -1 for psycopg here.
        return len(conn.execute(stmt.returning(table.c[key])).all())

    def _upsert(
        self,
        conn: sa.Connection,
        table: sa.Table,
        row: dict[str, Any],
        key: str,
        keep: Sequence[str] = (),
    ) -> None:
        """Insert `row` or update the one with its `key` (but not the `keep` columns)."""
        stmt = self._insert(table).values(row)
        changes = {name: stmt.excluded[name] for name in row if name != key and name not in keep}
        # An incident snapshot with fewer events than the stored one is stale: leave it.
        newer = table.c.revision <= stmt.excluded.revision if "revision" in table.c else None
        conn.execute(stmt.on_conflict_do_update(index_elements=[key], set_=changes, where=newer))

    def _insert(self, table: sa.Table) -> Any:
        """Return the dialect's INSERT, which knows ON CONFLICT."""
        return sqlite.insert(table) if self._dialect == "sqlite" else postgresql.insert(table)


def _create_engine(url: str, target: str) -> sa.Engine:
    """Return an engine for `url`, or raise a one-line ConfigError naming `target`."""
    try:
        parsed = sa.engine.make_url(url.strip())
    except sa.exc.ArgumentError:
        raise ConfigError(f"store URL {target!r}: cannot parse it; {_URL_HINT}") from None
    if parsed.drivername == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"store URL {target!r}: cannot create {str(path.parent)!r} "
                    f"({exc.strerror}); choose a writable directory"
                ) from None
            parsed = parsed.set(database=str(path))
        engine = sa.create_engine(parsed)
        sa.event.listen(engine, "connect", _sqlite_settings)
        return engine
    # Plain postgresql:// means psycopg2 to SQLAlchemy; poolwarden ships psycopg 3.
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return sa.create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True)
    raise ConfigError(f"store URL {target!r}: {parsed.drivername!r} is not supported; {_URL_HINT}")


def _sqlite_settings(dbapi_connection: Any, _record: object) -> None:
    """WAL for concurrent readers; FULL so a commit survives a power cut, not only kill -9."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _schema_version(conn: sa.Connection) -> int | None:
    if not sa.inspect(conn).has_table(schema.version.name):
        return None
    value = conn.execute(
        sa.select(schema.version.c.version).where(schema.version.c.id == 1)
    ).scalar()
    return int(value) if value is not None else None


def _reason(exc: sa.exc.DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines()
    return redact_dsn(lines[0]) if lines else type(exc.orig).__name__


def _now() -> datetime:
    return datetime.now(UTC)


def _as_utc(at: datetime) -> datetime:
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
