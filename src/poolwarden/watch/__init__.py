"""The monitor: time-series windows, rules, diagnosis, incidents and notifications.

`SeriesStore` keeps the recent samples the watch loop gathers and answers the PromQL
functions the rules need (docs/watch-series.md); `RuleEngine` turns measures into alerts
with the built-in rule pack (docs/rules.md). The notifiers (`ConsoleNotifier`,
`WebhookNotifier`, `AppriseNotifier`) send a `Notification` of `NotifyAlert`s
(docs/watch-notify.md). `watch` prints nothing.
"""

from __future__ import annotations

from poolwarden.watch._fingerprint import alert_fingerprint
from poolwarden.watch.diagnose import (
    CAUSES,
    Cause,
    DiagnosisThresholds,
    Finding,
    diagnose,
    record_diagnosis,
)
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
from poolwarden.watch.measures import MEASURES, compute_measures, record_measures
from poolwarden.watch.notify import (
    INCIDENT_ANNOTATION,
    AppriseNotifier,
    ConsoleNotifier,
    Notification,
    Notifier,
    NotifyAlert,
    SendResult,
    Status,
    alertmanager_payload,
    apprise_message,
    console_line,
    encode_payload,
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
from poolwarden.watch.webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookNotifier,
    backoff_delay,
    redact_webhook_url,
    sign_body,
    verify_signature,
)

__all__ = [
    "Alert",
    "AlertEvent",
    "AlertLike",
    "AlertState",
    "AppriseNotifier",
    "CAUSES",
    "Cause",
    "ConsoleNotifier",
    "DELIVERY_HEADER",
    "DiagnosisThresholds",
    "Finding",
    "FindingLike",
    "INCIDENT_ANNOTATION",
    "Incident",
    "IncidentBook",
    "IncidentUpdate",
    "KNOWN_MEASURES",
    "LabelSet",
    "MEASURES",
    "Notification",
    "NotificationRecord",
    "Notifier",
    "NotifyAlert",
    "Observation",
    "RootCause",
    "Rule",
    "RuleEngine",
    "SIGNATURE_HEADER",
    "STORE_SCHEMA_VERSION",
    "SendResult",
    "SeriesStats",
    "SeriesStore",
    "Status",
    "Store",
    "TIMESTAMP_HEADER",
    "TargetInfo",
    "TimelineEvent",
    "WebhookNotifier",
    "alert_fingerprint",
    "alertmanager_payload",
    "apprise_message",
    "backoff_delay",
    "compute_measures",
    "console_line",
    "default_store_url",
    "diagnose",
    "encode_payload",
    "format_duration",
    "load_rules",
    "new_incident_id",
    "notification_key",
    "parse_duration",
    "prometheus_rule",
    "record_diagnosis",
    "record_measures",
    "redact_webhook_url",
    "seconds_to_exhaustion",
    "sign_body",
    "timeline_event_id",
    "verify_signature",
]
