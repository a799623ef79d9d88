"""The monitor: time-series windows, rules, diagnosis, incidents and notifications.

`SeriesStore` keeps the recent samples the watch loop gathers and answers the PromQL
functions the rules need (docs/watch-series.md); `RuleEngine` turns measures into alerts
with the built-in rule pack (docs/rules.md). `watch` prints nothing.
"""

from __future__ import annotations

from poolwarden.watch.incidents import (
    AlertLike,
    AlertState,
    FindingLike,
    Incident,
    IncidentBook,
    IncidentUpdate,
    RootCause,
    TimelineEvent,
    new_incident_id,
    notification_key,
    timeline_event_id,
)
from poolwarden.watch.observation import Observation, TargetInfo
from poolwarden.watch.rules import (
    KNOWN_MEASURES,
    Alert,
    AlertEvent,
    Rule,
    RuleEngine,
    format_duration,
    load_rules,
    parse_duration,
    prometheus_rule,
)
from poolwarden.watch.series import LabelSet, SeriesStats, SeriesStore, seconds_to_exhaustion
from poolwarden.watch.store import (
    STORE_SCHEMA_VERSION,
    NotificationRecord,
    Store,
    default_store_url,
)

__all__ = [
    "Alert",
    "AlertEvent",
    "AlertLike",
    "AlertState",
    "FindingLike",
    "Incident",
    "IncidentBook",
    "IncidentUpdate",
    "KNOWN_MEASURES",
    "LabelSet",
    "NotificationRecord",
    "Observation",
    "RootCause",
    "Rule",
    "RuleEngine",
    "STORE_SCHEMA_VERSION",
    "SeriesStats",
    "SeriesStore",
    "Store",
    "TargetInfo",
    "TimelineEvent",
    "default_store_url",
    "format_duration",
    "load_rules",
    "new_incident_id",
    "notification_key",
    "parse_duration",
    "prometheus_rule",
    "seconds_to_exhaustion",
    "timeline_event_id",
]
