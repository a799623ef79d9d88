"""Write an incident's postmortem from what watch recorded. Pure: no clock, no I/O.

`render_postmortem` returns Markdown in the seed postmortem's four sections (Issue
Summary, Timeline, Root Cause and Resolution, Corrective and Preventative Measures) under
a header; `postmortem_json` returns the same content as JSON values. The impact (failed
requests, users affected, peak connections) comes from the latest impact note and the
samples watch recorded over the incident window (`incident_impact`); charts written by
`review.charts` are linked. Timeline entries are UTC; action items are typed
``mitigate``, ``prevent`` or ``process`` as in the Google SRE template. Every string
passes through `redact_dsn`. Reference: docs/postmortem.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from poolwarden._dsn import redact_dsn
from poolwarden.watch.incidents import AlertState, Incident, RootCause, TimelineEvent
from poolwarden.watch.samples import Sample, summarize_window

__all__ = [
    "ACTION_TYPES",
    "ActionItem",
    "IMPACT_MARGIN_S",
    "Impact",
    "SECTIONS",
    "action_items",
    "incident_impact",
    "incident_window",
    "postmortem_json",
    "render_postmortem",
]

ActionType = Literal["mitigate", "prevent", "process"]
ACTION_TYPES: tuple[ActionType, ...] = ("mitigate", "prevent", "process")
SECTIONS = (
    "Issue Summary",
    "Timeline",
    "Root Cause and Resolution",
    "Corrective and Preventative Measures",
)
# The window of an incident starts this long before it opened: the alert's `for:` and
# the first failures come before the incident does.
IMPACT_MARGIN_S = 30.0
ImpactSource = Literal["note", "samples", "none"]


@dataclass(frozen=True, slots=True)
class ActionItem:
    """One corrective or preventative task: its type and what to do."""

    type: ActionType
    text: str


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


# The cause classes of docs/diagnose.md, in plain words for a reader who was not there.
_EXPLAIN: Mapping[str, str] = {
    "pool_oversized": "the server's connection slots were full and one application's pool "
    "held most of them: its pools were allowed more connections than the database can serve",
    "pool_undersized": "requests waited for a pool connection while the database had room: "
    "the pool was too small for the traffic",
    "connection_leak": "connections were taken from the pool and never given back, so the "
    "pool ran dry",
    "idle_in_transaction": "sessions opened a transaction and then sat idle in it, holding "
    "their connection slots and locks",
    "slow_queries": "statements ran for a long time and held their connections while they ran",
    "lock_contention": "sessions queued behind a lock held by one transaction",
    "noisy_neighbor": "another application held most of the server's slots and starved this "
    "service of connections",
    "database_down": "the database could not be reached",
    "server_saturated": "the load itself was more than the server handles at once, with no "
    "single application to blame",
    "target_down": "an application's /metrics endpoint hung or failed, so its pools could not "
    "be watched",
}

_WATCH: tuple[ActionType, str] = (
    "process",
    "keep `poolwarden watch` running and alerting on this database",
)
_REVIEW: tuple[ActionType, str] = (
    "process",
    "hold a post-incident review of this postmortem with the owning team",
)

# Per cause class: (type, template); {culprit} names the culprit. The remedy comes first.
_MEASURES: Mapping[str, Sequence[tuple[ActionType, str]]] = {
    "pool_oversized": (
        (
            "prevent",
            "guard {culprit}'s pool with a budget so that a fleet that does not fit "
            'the server refuses to start: `guard(pool, name="{culprit}", '
            'budget=Budget(DSN, service="{culprit}", replicas=N))`',
        ),
        (
            "prevent",
            "add `poolwarden audit TOPOLOGY` to CI so pool sizes are checked against "
            "the server's max_connections before each deploy",
        ),
    ),
    "pool_undersized": (
        (
            "prevent",
            "measure {culprit}'s pool size on the real database with `poolwarden "
            "plan` and record it in the topology file",
        ),
        (
            "prevent",
            "guard {culprit}'s pool with `max_waiting` and a deadline so waits fail "
            'fast instead of piling up: `guard(pool, name="{culprit}", max_waiting=...)`',
        ),
    ),
    "connection_leak": (
        (
            "prevent",
            "guard {culprit}'s pool so that a connection held too long is reported "
            "with the stack that took it (logger `poolwarden.guard`)",
        ),
        (
            "prevent",
            "take connections only in `with pool.connection():` blocks in "
            "{culprit}'s code, so every path gives them back",
        ),
    ),
    "idle_in_transaction": (
        ("prevent", "set `idle_in_transaction_session_timeout` on {culprit}'s role as a backstop"),
        ("prevent", "move slow work (HTTP calls, file I/O) out of {culprit}'s transactions"),
    ),
    "slow_queries": (
        ("prevent", "set `statement_timeout` on {culprit}'s role"),
        (
            "prevent",
            "review the slow statement's plan with `EXPLAIN (ANALYZE)` and fix it "
            "(an index, a rewrite)",
        ),
    ),
    "lock_contention": (
        ("prevent", "set `lock_timeout` in the applications that wait on locks"),
        (
            "prevent",
            "keep the transactions of {culprit} short; run migrations with a `lock_timeout`",
        ),
    ),
    "noisy_neighbor": (
        (
            "prevent",
            "give each service its share of the server: `poolwarden plan` splits "
            "the budget; enforce it with `ALTER ROLE ... CONNECTION LIMIT n` or a guard budget",
        ),
        (
            "prevent",
            "add `poolwarden audit TOPOLOGY` to CI so the services' pools together fit the server",
        ),
    ),
    "database_down": (
        (
            "prevent",
            "guard the pools with a deadline so requests fail fast while the "
            "database is away, and check that pools reconnect when it is back",
        ),
        ("process", "check the database's failover and restart runbook against this timeline"),
    ),
    "server_saturated": (
        (
            "prevent",
            "size the pools to what the server does at once (`poolwarden plan`), or "
            "put PgBouncer in transaction mode in front",
        ),
        (
            "prevent",
            "guard the pools so admission control queues or sheds excess load "
            "instead of opening connections",
        ),
    ),
    "target_down": (
        (
            "prevent",
            "check that {culprit} serves /metrics from a thread its request load cannot "
            "starve; raise probe_timeout only if it is just slow",
        ),
        ("process", "add {culprit}'s /metrics endpoint to its own health checks"),
    ),
}
_UNDIAGNOSED: Sequence[tuple[ActionType, str]] = (
    (
        "mitigate",
        "find the root cause: run `poolwarden status` as a superuser during the next "
        "occurrence and keep the incident's alerts",
    ),
)


def action_items(root_cause: RootCause | None) -> tuple[ActionItem, ...]:
    """Return the action items for a root cause (or for none): remedy, prevention, process."""
    if root_cause is None:
        planned: list[tuple[ActionType, str]] = [*_UNDIAGNOSED]
    else:
        culprit = root_cause.culprit or "the culprit"
        planned = [("mitigate", root_cause.remedy)] if root_cause.remedy else []
        planned += [(t, s.format(culprit=culprit)) for t, s in _MEASURES.get(root_cause.cause, ())]
    planned += [_WATCH, _REVIEW]
    return tuple(ActionItem(kind, redact_dsn(text)) for kind, text in planned)


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


def render_postmortem(
    incident: Incident,
    *,
    samples: Iterable[Sample] = (),
    charts: Sequence[Path | str] = (),
    now: datetime | None = None,
) -> str:
    """Return the incident's postmortem as Markdown; `now` dates an ongoing one.

    `samples` give the impact figures; `charts` (PNG paths beside the Markdown) are
    linked by file name under the Issue Summary.
    """
    impact = incident_impact(incident, samples, now=now)
    parts = [
        _header(incident, now),
        _summary(incident, impact, now),
        *([_charts(charts)] if charts else []),
        _timeline(incident, now),
        _root_cause(incident),
        _measures(incident),
    ]
    # Belt and braces: each field was redacted on the way in, the whole text is again.
    return redact_dsn("\n\n".join(parts) + "\n")


def postmortem_json(
    incident: Incident,
    *,
    samples: Iterable[Sample] = (),
    charts: Sequence[Path | str] = (),
    now: datetime | None = None,
) -> dict[str, object]:
    """Return the postmortem's content as JSON values (times ISO 8601 in UTC)."""
    cause = incident.root_cause
    end = incident.resolved_at or now
    document: dict[str, object] = {
        "incident_id": incident.id,
        "title": incident.title,
        "key": incident.key,
        "labels": dict(incident.labels),
        "status": incident.status,
        "severity": incident.severity,
        "opened_at": _iso(incident.opened_at),
        "resolved_at": _iso(incident.resolved_at),
        "ongoing": incident.resolved_at is None,
        "duration_s": None if end is None else (_utc(end) - incident.opened_at).total_seconds(),
        "impact": _impact_json(incident_impact(incident, samples, now=now)),
        "charts": [str(path) for path in charts],
        "alerts": [_alert_json(a) for a in incident.alerts.values()],
        "root_cause": None if cause is None else _cause_json(cause),
        "timeline": [{"at": _iso(e.at), "kind": e.kind, "text": e.text} for e in incident.timeline],
        "action_items": [{"type": a.type, "text": a.text} for a in action_items(cause)],
    }
    redacted = _redacted(document)
    assert isinstance(redacted, dict)
    return redacted


def _impact_json(impact: Impact) -> dict[str, object]:
    values = {f.name: getattr(impact, f.name) for f in fields(impact)}
    times = {k: _iso(v) for k, v in values.items() if isinstance(v, datetime)}
    return {**values, **times, "failed_ratio": impact.failed_ratio}


def _alert_json(alert: AlertState) -> dict[str, object]:
    return {
        "rule": alert.rule,
        "severity": alert.severity,
        "summary": alert.summary,
        "value": alert.value,
        "fired_at": _iso(alert.fired_at),
        "resolved_at": _iso(alert.resolved_at),
    }


def _cause_json(cause: RootCause) -> dict[str, object]:
    return {
        "cause": cause.cause,
        "explanation": _EXPLAIN.get(cause.cause, cause.cause),
        "confidence": cause.confidence,
        "culprit": cause.culprit,
        "evidence": dict(cause.evidence),
        "remedy": cause.remedy,
    }


# -- the sections --------------------------------------------------------------------------


def _header(incident: Incident, now: datetime | None) -> str:
    status = "resolved" if incident.status == "resolved" else "open (ongoing)"
    rows = [
        ("Incident", f"`{incident.id}`"),
        ("Status", status),
        ("Severity", incident.severity),
        ("Scope", _scope(incident)),
        ("Opened", _stamp(incident.opened_at)),
        ("Resolved", _stamp(incident.resolved_at) if incident.resolved_at else "ongoing"),
    ]
    if now is not None:
        rows.append(("Written", _stamp(now)))
    table = "\n".join(f"| {name} | {_cell(value)} |" for name, value in rows)
    return f"# Postmortem: {_r(incident.title or incident.key)}\n\n| | |\n|---|---|\n{table}"


def _summary(incident: Incident, impact: Impact, now: datetime | None) -> str:
    alerts = list(incident.alerts.values())
    fired = ", ".join(f"`{_r(a.rule)}` ({a.severity}): {_r(a.summary)}" for a in alerts)
    cause = incident.root_cause
    root = (
        f"`{cause.cause}` - {_r(cause.culprit)} ({cause.confidence:.0%} confident): "
        f"{_EXPLAIN.get(cause.cause, cause.cause)}"
        if cause is not None
        else "not diagnosed: no finding was recorded for this incident"
    )
    lines = [
        "## Issue Summary",
        "",
        f"- **Duration:** {_duration_text(incident, now)}",
        f"- **Impact:** {_impact_text(impact)}",
        f"- **Connections:** {_connections_text(impact)}",
        f"- **Alerts:** {len(alerts)} fired on {_scope(incident)}: {fired or 'none'}",
        f"- **Root Cause:** {root}",
    ]
    return "\n".join(lines)


def _impact_text(impact: Impact) -> str:
    if impact.source == "none":
        text = "not measured: no HTTP samples or impact note were recorded for this incident"
    elif not impact.requests:
        text = "no request came during the incident"
    else:
        ratio = impact.failed_ratio or 0.0
        text = (
            f"{_count(impact.failed)} of {_count(impact.requests)} requests failed "
            f"({ratio * 100:.1f} %)"
        )
    if impact.source == "note" and impact.note_at is not None:
        text += f", counted by the load generator (impact note at {_clock(impact.note_at, False)})"
    elif impact.source == "samples":
        until = _clock(impact.window_end, False) if impact.window_end else "now"
        text += (
            f", from the apps' HTTP metrics sampled {_clock(impact.window_start, False)} to {until}"
        )
    if impact.users is not None and impact.users_affected is not None:
        text += f"; {_count(impact.users_affected)} of {_count(impact.users)} users affected"
    return text


def _connections_text(impact: Impact) -> str:
    if impact.peak_connections is None:
        return "not sampled"
    usable = (
        ""
        if impact.usable_connections is None
        else f" of {_count(impact.usable_connections)} usable"
    )
    where = f" on {_r(impact.peak_database)}" if impact.peak_database else ""
    text = f"peak {_count(impact.peak_connections)}{usable}{where}"
    if impact.peak_p99_seconds is not None:
        text += f"; worst HTTP p99 {impact.peak_p99_seconds * 1000:.0f} ms"
    return text


def _charts(charts: Sequence[Path | str]) -> str:
    links = [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    return "\n\n".join(["### Charts", *links])


def _timeline(incident: Incident, now: datetime | None) -> str:
    ongoing_at = [now] if now is not None and incident.resolved_at is None else []
    stamps = [incident.opened_at, *(e.at for e in incident.timeline), *ongoing_at]
    multi_day = len({_utc(t).date() for t in stamps}) > 1
    day = _utc(incident.opened_at).strftime("%Y-%m-%d")
    lines = ["## Timeline", "", f"All times UTC{'' if multi_day else f', on {day}'}.", ""]
    lines += [f"- {_clock(e.at, multi_day)} - {_event_text(e)}" for e in incident.timeline]
    if incident.resolved_at is None:
        at = f" at {_clock(now, multi_day)}" if now is not None else ""
        lines.append(f"- ongoing{at}: the incident is not resolved yet")
    return "\n".join(lines)


def _root_cause(incident: Incident) -> str:
    cause = incident.root_cause
    lines = ["## Root Cause and Resolution", ""]
    if cause is None:
        lines.append(
            "No diagnosis was recorded: watch saw the alerts but no finding named a cause. "
            "See the action items for how to find it next time."
        )
    else:
        explanation = _EXPLAIN.get(cause.cause, "a cause class this version does not describe")
        lines += [
            f"**Cause:** `{cause.cause}` - {explanation}.",
            "",
            f"**Culprit:** {_r(cause.culprit)} (confidence {cause.confidence:.0%})",
            "",
            "| evidence | value |",
            "|---|---|",
            *(f"| `{_cell(k)}` | {_number(v)} |" for k, v in cause.evidence.items()),
            "",
            f"**Remedy:** {_r(cause.remedy)}",
        ]
    lines += ["", _resolution(incident)]
    return "\n".join(lines)


def _measures(incident: Incident) -> str:
    items = action_items(incident.root_cause)
    rows = [f"| {n} | {_cell(a.text)} | {a.type} |" for n, a in enumerate(items, 1)]
    heading = "## Corrective and Preventative Measures"
    return "\n".join([heading, "", "| # | action item | type |", "|---|---|---|", *rows])


# -- plumbing ------------------------------------------------------------------------------


def _event_text(event: TimelineEvent) -> str:
    return f"note: {_r(event.text)}" if event.kind == "note" else _r(event.text)


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


def _count(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def _resolution(incident: Incident) -> str:
    if incident.resolved_at is None:
        return "**Resolution:** none yet; the incident is ongoing."
    took = _duration((incident.resolved_at - incident.opened_at).total_seconds())
    return f"**Resolution:** all alerts resolved at {_stamp(incident.resolved_at)}, {took} after the first fired."


def _duration_text(incident: Incident, now: datetime | None) -> str:
    opened = _stamp(incident.opened_at)
    if incident.resolved_at is not None:
        took = _duration((incident.resolved_at - incident.opened_at).total_seconds())
        return f"{took} ({opened} to {_stamp(incident.resolved_at)})"
    if now is None:
        return f"ongoing (opened {opened})"
    return f"ongoing ({_duration((_utc(now) - incident.opened_at).total_seconds())} so far, opened {opened})"


def _scope(incident: Incident) -> str:
    pairs = [f"{k}={_r(v)}" for k, v in incident.labels.items()]
    return ", ".join(pairs) or _r(incident.key) or "(no labels)"


def _stamp(at: datetime | None) -> str:
    return "" if at is None else _utc(at).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(at: datetime, with_date: bool) -> str:
    return _utc(at).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else _utc(at).isoformat()


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")


def _r(text: str) -> str:
    """Redact `text` and fold it onto one line."""
    return " ".join(redact_dsn(str(text)).split())


def _cell(text: str) -> str:
    """Return `text` fit for a Markdown table cell."""
    return _r(text).replace("|", "\\|")


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_dsn(value)
    if isinstance(value, Mapping):
        return {redact_dsn(str(k)): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value
