"""Write an incident's postmortem from what watch recorded. Pure: no clock, no I/O.

`render_postmortem` returns Markdown in the seed postmortem's four sections (Issue
Summary, Timeline, Root Cause and Resolution, Corrective and Preventative Measures) under
a header; `postmortem_json` returns the same content as JSON values. The impact (failed
requests, users affected, peak connections) comes from the latest impact note and the
samples watch recorded over the incident window (`review.impact`, re-exported here);
charts written by `review.charts` are linked. Timeline entries are UTC; action items are
typed ``mitigate``, ``prevent`` or ``process`` as in the Google SRE template. Every string
passes through `redact_dsn`. Reference: docs/postmortem.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Literal

from poolwarden._dsn import redact_dsn
from poolwarden.review import _postmortem_text as md
from poolwarden.review.impact import IMPACT_MARGIN_S, Impact, incident_impact, incident_window
from poolwarden.watch.incidents import AlertState, Incident, RootCause
from poolwarden.watch.samples import Sample

__all__ = [
    "ACTION_TYPES",
    "ActionItem",
    "IMPACT_MARGIN_S",
    "Impact",
    "SECTIONS",
    "action_items",
    "incident_action_items",
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


@dataclass(frozen=True, slots=True)
class ActionItem:
    """One corrective or preventative task: its type and what to do."""

    type: ActionType
    text: str


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


def incident_action_items(incident: Incident) -> tuple[ActionItem, ...]:
    """Return the root cause's action items plus one per audit finding noted on the incident."""
    items = list(action_items(incident.root_cause))
    seen: set[str] = set()
    for event in incident.timeline:
        code, fix = event.data.get("audit"), event.data.get("fix")
        if (
            event.kind == "note"
            and isinstance(code, str)
            and isinstance(fix, str)
            and code not in seen
        ):
            seen.add(code)
            title = str(event.data.get("title", code))
            # Before the process items: a setting to change is a prevention.
            items.insert(
                len(items) - 2,
                ActionItem("prevent", redact_dsn(f"{fix} (audit `{code}`: {title})")),
            )
    return tuple(items)


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
        md.header(incident, now),
        md.summary(incident, impact, now),
        *([md.charts(charts)] if charts else []),
        md.timeline(incident, now),
        md.root_cause(incident),
        md.measures(incident_action_items(incident)),
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
        "opened_at": md.iso(incident.opened_at),
        "resolved_at": md.iso(incident.resolved_at),
        "ongoing": incident.resolved_at is None,
        "duration_s": None if end is None else (md.utc(end) - incident.opened_at).total_seconds(),
        "impact": _impact_json(incident_impact(incident, samples, now=now)),
        "charts": [str(path) for path in charts],
        "alerts": [_alert_json(a) for a in incident.alerts.values()],
        "root_cause": None if cause is None else _cause_json(cause),
        "timeline": [
            {"at": md.iso(e.at), "kind": e.kind, "text": e.text} for e in incident.timeline
        ],
        "action_items": [{"type": a.type, "text": a.text} for a in incident_action_items(incident)],
    }
    redacted = _redacted(document)
    assert isinstance(redacted, dict)
    return redacted


def _impact_json(impact: Impact) -> dict[str, object]:
    values = {f.name: getattr(impact, f.name) for f in fields(impact)}
    times = {k: md.iso(v) for k, v in values.items() if isinstance(v, datetime)}
    return {**values, **times, "failed_ratio": impact.failed_ratio}


def _alert_json(alert: AlertState) -> dict[str, object]:
    return {
        "rule": alert.rule,
        "severity": alert.severity,
        "summary": alert.summary,
        "value": alert.value,
        "fired_at": md.iso(alert.fired_at),
        "resolved_at": md.iso(alert.resolved_at),
    }


def _cause_json(cause: RootCause) -> dict[str, object]:
    return {
        "cause": cause.cause,
        "explanation": md.EXPLAIN.get(cause.cause, cause.cause),
        "confidence": cause.confidence,
        "culprit": cause.culprit,
        "evidence": dict(cause.evidence),
        "remedy": cause.remedy,
    }


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_dsn(value)
    if isinstance(value, Mapping):
        return {redact_dsn(str(k)): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value
