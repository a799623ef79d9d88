"""The monitor: time-series windows, rules, diagnosis, incidents and notifications.

`SeriesStore` keeps the recent samples the watch loop gathers and answers the PromQL
functions the rules need (docs/watch-series.md); `RuleEngine` turns measures into alerts
with the built-in rule pack (docs/rules.md). `watch` prints nothing.
"""

from __future__ import annotations

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

__all__ = [
    "Alert",
    "AlertEvent",
    "KNOWN_MEASURES",
    "LabelSet",
    "Observation",
    "Rule",
    "RuleEngine",
    "SeriesStats",
    "SeriesStore",
    "TargetInfo",
    "format_duration",
    "load_rules",
    "parse_duration",
    "prometheus_rule",
    "seconds_to_exhaustion",
]
