"""Alerts grouped into incidents, each with a timeline. Pure: no clock, no I/O, no threads.

`IncidentBook` takes the rule engine's alert events (`observe`), diagnosis findings
(`diagnose`) and notification results (`record_notification`) and returns
`IncidentUpdate`s: the incident as it now is and the timeline events just added, for the
store to append. Alerts with the same `group_by` label values (default ``target`` and
``database``) share one incident from the first firing until all are resolved (and a quiet
period, default 0 s, has passed). Event ids are deterministic and a known event is never
added twice, so replays change nothing. Strings pass through `redact_dsn` on the way in.
Rules and fields: docs/watch-incidents.md.
"""

from __future__ import annotations

import hashlib
import os
from bisect import insort
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError

__all__ = [
    "AlertLike",
    "AlertState",
    "FindingLike",
    "Incident",
    "IncidentBook",
    "IncidentUpdate",
    "RootCause",
    "TimelineEvent",
    "new_incident_id",
    "notification_key",
    "timeline_event_id",
]

EventKind = Literal[
    "alert_fired",
    "alert_resolved",
    "diagnosis",
    "notification_sent",
    "notification_failed",
    "resolved",
    "note",  # written by people or the drill through `Store.add_note`, never by the book
]

SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}
DEFAULT_GROUP_BY = ("target", "database")

# Resolved incidents stay addressable this long (by count) so that the notification of a
# resolution, sent after the incident closed, still lands in its timeline.
_RECENTLY_RESOLVED = 256
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class AlertLike(Protocol):
    """What `IncidentBook.observe` reads from a rule engine's alert event."""

    @property
    def kind(self) -> str: ...  # "pending" | "firing" | "resolved"
    @property
    def rule(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def severity(self) -> str: ...  # "info" | "warning" | "critical"
    @property
    def summary(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def at(self) -> datetime | float: ...  # a float is Unix time


class FindingLike(Protocol):
    """What `IncidentBook.diagnose` reads from a diagnosis finding."""

    @property
    def cause(self) -> str: ...  # the root-cause class, e.g. "pool_oversized"
    @property
    def confidence(self) -> float: ...  # 0..1
    @property
    def culprit(self) -> str: ...
    @property
    def evidence(self) -> Mapping[str, float]: ...
    @property
    def remedy(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RootCause:
    """A diagnosis finding kept by an incident: its class, how sure, who, why, what to do."""

    cause: str
    confidence: float
    culprit: str
    evidence: Mapping[str, float]
    remedy: str


@dataclass(frozen=True, slots=True)
class AlertState:
    """One alert of an incident, as it is now (``firing`` or ``resolved``)."""

    fingerprint: str
    rule: str
    labels: Mapping[str, str]
    severity: str
    summary: str
    description: str
    value: float
    status: Literal["firing", "resolved"]
    fired_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """Something that happened to an incident; `data` holds JSON values only."""

    id: str
    incident_id: str
    kind: EventKind
    at: datetime
    fingerprint: str  # the alert's, or "" for events about the whole incident
    text: str  # one line for people
    data: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Incident:
    """Alerts on one grouping key, from the first firing until all resolved."""

    id: str
    key: str
    labels: Mapping[str, str]  # the grouping labels and their values
    status: Literal["open", "resolved"]
    severity: str
    title: str
    opened_at: datetime
    resolved_at: datetime | None
    alerts: Mapping[str, AlertState]  # by fingerprint, in the order they first fired
    root_cause: RootCause | None
    timeline: tuple[TimelineEvent, ...]  # by time; equal times in the order they happened


@dataclass(frozen=True, slots=True)
class IncidentUpdate:
    """An incident after a change, and the timeline events the change added (maybe none)."""

    incident: Incident
    events: tuple[TimelineEvent, ...] = ()


def new_incident_id(at: datetime) -> str:
    """Return a ULID for an incident opened at `at`: 26 characters that sort by time."""
    millis = int(_utc(at).timestamp() * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def timeline_event_id(
    incident_id: str, kind: str, fingerprint: str, at: datetime, extra: str = ""
) -> str:
    """Return the deterministic id of a timeline event (32 hex characters)."""
    text = "\x1f".join((incident_id, kind, fingerprint, _utc(at).isoformat(), extra))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def notification_key(incident_id: str, fingerprint: str, status: str, channel: str = "") -> str:
    """Name the notification of `fingerprint` turning `status` in an incident (per channel)."""
    parts = [incident_id, fingerprint or "-", status]
    return "/".join([*parts, channel] if channel else parts)


class IncidentBook:
    """Group alerts into incidents and keep their timelines; see the module docstring.

    `incidents` resumes the open ones a store kept (`Store.open_incidents()`). `new_id`
    makes incident ids (inject a deterministic one in tests). Not thread-safe.
    """

    def __init__(
        self,
        *,
        group_by: Iterable[str] = DEFAULT_GROUP_BY,
        quiet_period_s: float = 0.0,
        incidents: Iterable[Incident] = (),
        new_id: Callable[[datetime], str] = new_incident_id,
    ) -> None:
        if not quiet_period_s >= 0:
            raise ConfigError(
                f"incidents: quiet_period_s is {quiet_period_s}; give 0 or more seconds"
            )
        self.group_by = tuple(sorted(set(group_by)))
        self.quiet_period_s = float(quiet_period_s)
        self._new_id = new_id
        self._open: dict[str, Incident] = {}
        self._resolved: OrderedDict[str, Incident] = OrderedDict()
        for incident in incidents:
            if incident.status == "open":
                self._open[incident.key] = incident

    def key_for(self, labels: Mapping[str, str]) -> str:
        """Return the grouping key of an alert with `labels`."""
        pairs = [f'{n}="{_escape(redact_dsn(labels[n]))}"' for n in self.group_by if n in labels]
        return "{" + ",".join(pairs) + "}"

    def open_incidents(self) -> tuple[Incident, ...]:
        """Return the open incidents, oldest first."""
        return tuple(sorted(self._open.values(), key=lambda i: (i.opened_at, i.id)))

    def get(self, incident_id: str) -> Incident | None:
        """Return an open or recently resolved incident by id."""
        found = next((i for i in self._open.values() if i.id == incident_id), None)
        return found if found is not None else self._resolved.get(incident_id)

    def observe(self, event: AlertLike) -> tuple[IncidentUpdate, ...]:
        """Apply an alert event; first resolve incidents whose quiet period ended by then."""
        if event.kind not in ("pending", "firing", "resolved"):
            raise ValueError(
                f"alert {event.rule!r}: event kind {event.kind!r}; "
                "expected 'pending', 'firing' or 'resolved'"
            )
        at = _utc(event.at)
        updates = list(self.tick(at))
        change = None
        if event.kind == "firing":
            change = self._fire(event, at)
        elif event.kind == "resolved":
            change = self._resolve_alert(event, at)
        if change is not None:
            updates.append(change)
        return tuple(updates)

    def tick(self, now: datetime | float) -> tuple[IncidentUpdate, ...]:
        """Resolve the incidents whose alerts are all resolved and whose quiet period ended."""
        now = _utc(now)
        updates = []
        for incident in self.open_incidents():
            last = _all_resolved_at(incident)
            if last is not None and (now - last).total_seconds() >= self.quiet_period_s:
                updates.append(self._close(incident, last))
        return tuple(updates)

    def diagnose(
        self, incident_id: str, finding: FindingLike, at: datetime | float
    ) -> IncidentUpdate | None:
        """Record a finding; it becomes the root cause when more confident than the current.

        A (cause, culprit) pair enters the timeline once; a repeat only raises the root
        cause's confidence. Returns None when nothing changed.
        """
        if not 0.0 <= finding.confidence <= 1.0:
            raise ValueError(
                f"finding {finding.cause!r}: confidence {finding.confidence} not in 0..1"
            )
        incident = self._find(incident_id)
        cause = RootCause(
            cause=finding.cause,
            confidence=float(finding.confidence),
            culprit=redact_dsn(finding.culprit),
            evidence=dict(finding.evidence),
            remedy=redact_dsn(finding.remedy),
        )
        seen = any(
            e.kind == "diagnosis"
            and (e.data["cause"], e.data["culprit"]) == (cause.cause, cause.culprit)
            for e in incident.timeline
        )
        better = incident.root_cause is None or cause.confidence > incident.root_cause.confidence
        if seen and not better:
            return None
        events = () if seen else (self._diagnosis_event(incident.id, cause, _utc(at)),)
        root = cause if better else incident.root_cause
        return self._apply(replace(incident, root_cause=root), events)

    def record_notification(
        self,
        incident_id: str,
        *,
        channel: str,
        ok: bool,
        detail: str,
        at: datetime | float,
        fingerprint: str = "",
        status: str = "",
    ) -> IncidentUpdate | None:
        """Record a notification attempt about an alert turning `status`; None for a replay."""
        incident = self._find(incident_id)
        detail = redact_dsn(detail)
        kind: EventKind = "notification_sent" if ok else "notification_failed"
        text = f"notification via {channel} {'sent' if ok else 'failed'}"
        data = {"channel": channel, "status": status, "detail": detail}
        event = self._event(
            incident.id,
            kind,
            _utc(at),
            fingerprint,
            f"{text}: {detail}" if detail else text,
            data,
            extra=f"{channel}\x1f{status}",
        )
        update = self._apply(incident, (event,))
        return update if update.events else None  # None: a replay

    # -- the changes -------------------------------------------------------------------

    def _fire(self, event: AlertLike, at: datetime) -> IncidentUpdate | None:
        labels = {str(k): redact_dsn(str(v)) for k, v in event.labels.items()}
        key = self.key_for(labels)
        incident = self._open.get(key)
        if incident is None:
            incident = self._open_incident(key, labels, at)
        current = incident.alerts.get(event.fingerprint)
        if current is not None and (current.resolved_at is None or at <= current.resolved_at):
            return None  # still firing, or a replay of a firing from before it resolved
        alert = AlertState(
            fingerprint=event.fingerprint,
            rule=event.rule,
            labels=labels,
            severity=event.severity,
            summary=redact_dsn(event.summary),
            description=redact_dsn(event.description),
            value=float(event.value),
            status="firing",
            fired_at=at,
            resolved_at=None,
        )
        text = f"{alert.rule} firing ({alert.severity}): {alert.summary}"
        data = {
            "rule": alert.rule,
            "severity": alert.severity,
            "value": alert.value,
            "summary": alert.summary,
            "description": alert.description,
            "labels": dict(labels),
        }
        fired = self._event(incident.id, "alert_fired", at, alert.fingerprint, text, data)
        return self._apply(_with_alert(incident, alert), (fired,))

    def _resolve_alert(self, event: AlertLike, at: datetime) -> IncidentUpdate | None:
        labels = {str(k): redact_dsn(str(v)) for k, v in event.labels.items()}
        incident = self._open.get(self.key_for(labels))
        current = incident.alerts.get(event.fingerprint) if incident is not None else None
        if (
            incident is None
            or current is None
            or current.resolved_at is not None
            or at < current.fired_at
        ):
            return None  # unknown, resolved already, or a replay from before it fired again
        alert = replace(current, status="resolved", resolved_at=at, value=float(event.value))
        data = {"rule": alert.rule, "value": alert.value}
        text = f"{alert.rule} resolved"
        resolved = self._event(incident.id, "alert_resolved", at, alert.fingerprint, text, data)
        change = self._apply(_with_alert(incident, alert), (resolved,))
        if self.quiet_period_s == 0 and _all_resolved_at(change.incident) is not None:
            closed = self._close(change.incident, at)
            return IncidentUpdate(closed.incident, change.events + closed.events)
        return change

    def _close(self, incident: Incident, at: datetime) -> IncidentUpdate:
        duration = (at - incident.opened_at).total_seconds()
        text = f"incident resolved after {_duration(duration)}"
        event = self._event(incident.id, "resolved", at, "", text, {"duration_s": duration})
        return self._apply(replace(incident, status="resolved", resolved_at=at), (event,))

    def _open_incident(self, key: str, labels: Mapping[str, str], at: datetime) -> Incident:
        return Incident(
            id=self._new_id(at),
            key=key,
            labels={name: labels[name] for name in self.group_by if name in labels},
            status="open",
            severity="info",
            title="",
            opened_at=at,
            resolved_at=None,
            alerts={},
            root_cause=None,
            timeline=(),
        )

    def _diagnosis_event(self, incident_id: str, finding: RootCause, at: datetime) -> TimelineEvent:
        text = f"root cause {finding.cause} ({finding.confidence:.0%}): {finding.culprit}"
        data = {
            "cause": finding.cause,
            "confidence": finding.confidence,
            "culprit": finding.culprit,
            "evidence": dict(finding.evidence),
            "remedy": finding.remedy,
        }
        extra = f"{finding.cause}\x1f{finding.culprit}"
        return self._event(incident_id, "diagnosis", at, "", text, data, extra=extra)

    @staticmethod
    def _event(
        incident_id: str,
        kind: EventKind,
        at: datetime,
        fingerprint: str,
        text: str,
        data: Mapping[str, object],
        *,
        extra: str = "",
    ) -> TimelineEvent:
        ident = timeline_event_id(incident_id, kind, fingerprint, at, extra)
        return TimelineEvent(ident, incident_id, kind, at, fingerprint, text, dict(data))

    def _apply(self, incident: Incident, events: Iterable[TimelineEvent]) -> IncidentUpdate:
        """Add the events not yet in the timeline, keep the result, return the update."""
        known = {e.id for e in incident.timeline}
        new = tuple(e for e in events if e.id not in known)
        timeline = list(incident.timeline)
        for event in new:
            insort(timeline, event, key=lambda e: e.at)
        incident = replace(incident, timeline=tuple(timeline))
        if incident.status == "open":
            self._open[incident.key] = incident
        else:
            if self._open.get(incident.key, incident).id == incident.id:
                self._open.pop(incident.key, None)  # not a newer incident on the same key
            self._resolved[incident.id] = incident
            self._resolved.move_to_end(incident.id)
            while len(self._resolved) > _RECENTLY_RESOLVED:
                self._resolved.popitem(last=False)
        return IncidentUpdate(incident, new)

    def _find(self, incident_id: str) -> Incident:
        incident = self.get(incident_id)
        if incident is None:
            raise KeyError(f"incident {incident_id!r} is neither open nor recently resolved")
        return incident


def _with_alert(incident: Incident, alert: AlertState) -> Incident:
    """Return `incident` with `alert` set, and its severity and title brought up to date."""
    alerts = {**incident.alerts, alert.fingerprint: alert}
    # max() keeps the first of equal maxima: the earliest alert of the top severity.
    top = max(alerts.values(), key=lambda a: SEVERITY_RANK.get(a.severity, 0))
    return replace(incident, alerts=alerts, severity=top.severity, title=top.summary)


def _all_resolved_at(incident: Incident) -> datetime | None:
    """Return when the last alert resolved if all are resolved, else None."""
    times = [a.resolved_at for a in incident.alerts.values()]
    if not times or any(t is None for t in times):
        return None
    return max(t for t in times if t is not None)


def _utc(at: datetime | float) -> datetime:
    """Return `at` in UTC; a naive time is taken to be UTC, a number to be Unix time."""
    if not isinstance(at, datetime):
        return datetime.fromtimestamp(at, UTC)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
