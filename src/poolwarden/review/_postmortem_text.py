"""The Markdown of a postmortem: its sections and how times, counts and cells are written.

`header`, `summary`, `charts`, `timeline`, `root_cause` and `measures` each return one
section of what `review.postmortem.render_postmortem` joins; `EXPLAIN` puts each cause
class in plain words; `iso` and `utc` write and normalise times. Every string from the
incident passes through `redact_dsn` and is folded onto one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from poolwarden._dsn import redact_dsn
from poolwarden.review.impact import Impact
from poolwarden.watch.incidents import Incident, TimelineEvent

if TYPE_CHECKING:
    from poolwarden.review.postmortem import ActionItem

# The cause classes of docs/diagnose.md, in plain words for a reader who was not there.
EXPLAIN: Mapping[str, str] = {
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


def header(incident: Incident, now: datetime | None) -> str:
    """Return the title and the table of id, status, severity, scope and times."""
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


def summary(incident: Incident, impact: Impact, now: datetime | None) -> str:
    """Return the Issue Summary: duration, impact, connections, alerts, root cause."""
    alerts = list(incident.alerts.values())
    fired = ", ".join(f"`{_r(a.rule)}` ({a.severity}): {_r(a.summary)}" for a in alerts)
    cause = incident.root_cause
    root = (
        f"`{cause.cause}` - {_r(cause.culprit)} ({cause.confidence:.0%} confident): "
        f"{EXPLAIN.get(cause.cause, cause.cause)}"
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


def charts(paths: Sequence[Path | str]) -> str:
    """Return the Charts subsection, linking each PNG by file name."""
    links = [f"![{Path(c).stem}]({Path(c).name})" for c in paths]
    return "\n\n".join(["### Charts", *links])


def timeline(incident: Incident, now: datetime | None) -> str:
    """Return the Timeline, in UTC, with dates only when it spans days."""
    ongoing_at = [now] if now is not None and incident.resolved_at is None else []
    stamps = [incident.opened_at, *(e.at for e in incident.timeline), *ongoing_at]
    multi_day = len({utc(t).date() for t in stamps}) > 1
    day = utc(incident.opened_at).strftime("%Y-%m-%d")
    lines = ["## Timeline", "", f"All times UTC{'' if multi_day else f', on {day}'}.", ""]
    lines += [f"- {_clock(e.at, multi_day)} - {_event_text(e)}" for e in incident.timeline]
    if incident.resolved_at is None:
        at = f" at {_clock(now, multi_day)}" if now is not None else ""
        lines.append(f"- ongoing{at}: the incident is not resolved yet")
    return "\n".join(lines)


def root_cause(incident: Incident) -> str:
    """Return Root Cause and Resolution: cause, culprit, evidence, remedy."""
    cause = incident.root_cause
    lines = ["## Root Cause and Resolution", ""]
    if cause is None:
        lines.append(
            "No diagnosis was recorded: watch saw the alerts but no finding named a cause. "
            "See the action items for how to find it next time."
        )
    else:
        explanation = EXPLAIN.get(cause.cause, "a cause class this version does not describe")
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


def measures(items: Sequence[ActionItem]) -> str:
    """Return Corrective and Preventative Measures as a numbered table."""
    rows = [f"| {n} | {_cell(a.text)} | {a.type} |" for n, a in enumerate(items, 1)]
    heading = "## Corrective and Preventative Measures"
    return "\n".join([heading, "", "| # | action item | type |", "|---|---|---|", *rows])


# -- plumbing ------------------------------------------------------------------------------


def _event_text(event: TimelineEvent) -> str:
    return f"note: {_r(event.text)}" if event.kind == "note" else _r(event.text)


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
    return f"ongoing ({_duration((utc(now) - incident.opened_at).total_seconds())} so far, opened {opened})"


def _scope(incident: Incident) -> str:
    pairs = [f"{k}={_r(v)}" for k, v in incident.labels.items()]
    return ", ".join(pairs) or _r(incident.key) or "(no labels)"


def _stamp(at: datetime | None) -> str:
    return "" if at is None else utc(at).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(at: datetime, with_date: bool) -> str:
    return utc(at).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def iso(at: datetime | None) -> str | None:
    """Return `at` as ISO 8601 text in UTC, or None."""
    return None if at is None else utc(at).isoformat()


def utc(at: datetime) -> datetime:
    """Return `at` in UTC; a naive time is taken as UTC."""
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
