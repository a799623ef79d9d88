"""What an incident cost: failed requests, users affected, peak connections. Pure.

`incident_window` gives the span a postmortem reads samples over: `IMPACT_MARGIN_S`
before the incident opened, to when it resolved (or `now`). `incident_impact` returns the
`Impact` from the latest impact note (the load generator's counts win) and the samples
watch recorded in that window. Reference: docs/postmortem.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from poolwarden.watch.incidents import Incident, TimelineEvent
from poolwarden.watch.samples import Sample, summarize_window

__all__ = ["IMPACT_MARGIN_S", "Impact", "incident_impact", "incident_window"]

# The window of an incident starts this long before it opened: the alert's `for:` and
# the first failures come before the incident does.
IMPACT_MARGIN_S = 30.0
ImpactSource = Literal["note", "samples", "none"]


@dataclass(frozen=True, slots=True)
class Impact:
    """What the incident cost, and where each figure came from; None: not measured.

    `source` says who counted the requests: the latest impact ``note`` (the load
    generator's count), the HTTP ``samples`` of the window, or ``none``.
    """

    source: ImpactSource
    requests: float | None
    failed: float | None
    users: float | None
    users_affected: float | None
    peak_connections: float | None
    usable_connections: float | None
    peak_database: str
    peak_p99_seconds: float | None
    window_start: datetime
    window_end: datetime | None  # None: an ongoing incident without `now`
    note_at: datetime | None  # the impact note's time, when there is one

    @property
    def failed_ratio(self) -> float | None:
        """Failed / requests; None when not measured or when no request came."""
        if self.requests is None or self.failed is None or self.requests <= 0:
            return None
        return self.failed / self.requests


def incident_window(
    incident: Incident, now: datetime | None = None
) -> tuple[datetime, datetime | None]:
    """Return the incident's window: `IMPACT_MARGIN_S` before it opened, to resolved (or `now`)."""
    start = _utc(incident.opened_at) - timedelta(seconds=IMPACT_MARGIN_S)
    end = incident.resolved_at or now
    return start, None if end is None else _utc(end)


def incident_impact(
    incident: Incident, samples: Iterable[Sample] = (), *, now: datetime | None = None
) -> Impact:
    """Return the incident's impact from its latest impact note and the window's samples.

    The note's request counts (the load generator's) win over the samples'; users
    affected come only from a note. Samples outside the window or scope are ignored.
    """
    start, end = incident_window(incident, now)
    inside = [s for s in samples if start <= _utc(s.at) and (end is None or _utc(s.at) <= end)]
    seen = summarize_window(inside, incident.labels)
    note = _impact_note(incident)
    data = note.data if note is not None else {}
    counted = _figure(data, "requests") is not None and _figure(data, "failed") is not None
    source: ImpactSource = "note" if counted else "samples" if seen.requests is not None else "none"
    return Impact(
        source=source,
        requests=_figure(data, "requests") if counted else seen.requests,
        failed=_figure(data, "failed") if counted else seen.failed,
        users=_figure(data, "users"),
        users_affected=_figure(data, "users_affected"),
        peak_connections=seen.peak_connections,
        usable_connections=seen.usable_connections,
        peak_database=seen.peak_database,
        peak_p99_seconds=seen.peak_p99_seconds,
        window_start=start,
        window_end=end,
        note_at=None if note is None else _utc(note.at),
    )


def _impact_note(incident: Incident) -> TimelineEvent | None:
    """Return the latest note carrying request counts or users, if any."""
    keys = ("requests", "failed", "users", "users_affected")
    notes = [e for e in incident.timeline if e.kind == "note" and any(k in e.data for k in keys)]
    return notes[-1] if notes else None


def _figure(data: Mapping[str, object], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
