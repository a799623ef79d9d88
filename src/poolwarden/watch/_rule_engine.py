"""The alert state machine behind `RuleEngine`: one per (rule, label set).

inactive -> pending (the condition holds) -> firing (it held for `for`) -> resolved (it
stopped holding, or crossed `clear`, for longer than `keep_firing_for`). The caller passes
the clock; the state is plain data. Reference: docs/rules.md ("How alerts change state").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from poolwarden.errors import ConfigError
from poolwarden.watch._fingerprint import alert_fingerprint as fingerprint
from poolwarden.watch._rule_text import render_template
from poolwarden.watch.series import LabelSet

if TYPE_CHECKING:  # rules.py imports this module; the engine only reads Rule's fields
    from poolwarden.watch.rules import Rule

__all__ = ["Alert", "AlertEvent", "RuleEngine"]

_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert pending or firing now (series labels + rule labels + alertname, severity)."""

    rule: str
    state: Literal["pending", "firing"]
    severity: str
    labels: dict[str, str]
    value: float
    threshold: float
    summary: str
    description: str
    runbook: str
    active_at: float  # when the condition first held (went pending)
    fired_at: float | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A transition: ``pending``, ``firing`` or ``resolved``, at `at`."""

    kind: Literal["pending", "firing", "resolved"]
    at: float
    rule: str
    severity: str
    labels: dict[str, str]
    value: float
    threshold: float
    summary: str
    description: str
    runbook: str
    started_at: float  # pending: when it went pending; firing, resolved: when it fired
    fingerprint: str


@dataclass(slots=True)
class _State:
    active_at: float
    last_seen: float  # last evaluation with data, for staleness
    value: float
    fired_at: float | None = None
    false_since: float | None = None  # firing but the condition no longer holds


class RuleEngine:
    """Evaluate rules over measure values; one state machine per (rule, label set).

    Missing data (a label set absent from `values`, or NaN) never fires and freezes the
    alert for up to `stale_after` seconds, so one failed probe neither resolves nor
    re-fires it; after that it counts as a false condition. Not thread-safe.
    """

    def __init__(self, rules: Iterable[Rule], *, stale_after: float = 10.0) -> None:
        self._rules = tuple(rule for rule in rules if rule.enabled)
        names = [rule.name for rule in self._rules]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"rules: {', '.join(twice)} defined twice; keep one of each")
        if not stale_after >= 0:
            raise ConfigError(f"stale_after={stale_after!r}: use a number of seconds >= 0")
        self.stale_after = stale_after
        self._states: dict[str, dict[LabelSet, _State]] = {r.name: {} for r in self._rules}

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The enabled rules, in evaluation order."""
        return self._rules

    def evaluate(
        self, now: float, values: Mapping[str, Mapping[LabelSet, float]]
    ) -> list[AlertEvent]:
        """Step every alert to `now` with `values` (measure -> label set -> value)."""
        events: list[AlertEvent] = []
        for rule in self._rules:
            seen: dict[LabelSet, float] = {}
            for labels, value in values.get(rule.measure, {}).items():
                if not math.isnan(value := float(value)):
                    key = labels if isinstance(labels, LabelSet) else LabelSet(labels)
                    seen[key] = value
            states = self._states[rule.name]
            for key in sorted(seen.keys() | states.keys(), key=lambda ls: tuple(ls.items())):
                event = self._step(rule, states, key, seen.get(key), now)
                if event is not None:
                    events.append(event)
        return events

    def _step(
        self,
        rule: Rule,
        states: dict[LabelSet, _State],
        key: LabelSet,
        value: float | None,
        now: float,
    ) -> AlertEvent | None:
        state = states.get(key)
        if value is None:
            if state is None or now - state.last_seen < self.stale_after:
                return None  # no data: hold whatever state there is until it is stale
            holds = False
        else:
            holds = rule.holds(value, firing=state is not None and state.fired_at is not None)
            if state is not None:
                state.last_seen, state.value = now, value
        if holds:
            if state is None:
                assert value is not None  # a missing value never holds
                state = states[key] = _State(active_at=now, last_seen=now, value=value)
                if rule.for_ > 0:
                    return self._event("pending", now, rule, key, state)
            state.false_since = None
            if state.fired_at is None and now - state.active_at >= rule.for_:
                state.fired_at = now
                return self._event("firing", now, rule, key, state)
            return None
        if state is None:
            return None
        if state.fired_at is not None and rule.keep_firing_for > 0:
            # As Prometheus: keep_firing_for counts from the first evaluation found false.
            state.false_since = now if state.false_since is None else state.false_since
            if now - state.false_since < rule.keep_firing_for:
                return None
        del states[key]
        # A pending alert that clears is dropped silently, as in Prometheus: nothing was sent.
        return None if state.fired_at is None else self._event("resolved", now, rule, key, state)

    def _event(
        self,
        kind: Literal["pending", "firing", "resolved"],
        now: float,
        rule: Rule,
        key: LabelSet,
        state: _State,
    ) -> AlertEvent:
        alert = self._alert(rule, key, state)
        return AlertEvent(
            kind=kind,
            at=now,
            rule=alert.rule,
            severity=alert.severity,
            labels=alert.labels,
            value=alert.value,
            threshold=alert.threshold,
            summary=alert.summary,
            description=alert.description,
            runbook=alert.runbook,
            started_at=state.active_at if state.fired_at is None else state.fired_at,
            fingerprint=alert.fingerprint,
        )

    @staticmethod
    def _alert(rule: Rule, key: LabelSet, state: _State) -> Alert:
        # Rule labels override the series', as in Prometheus; alertname and severity win.
        merged = {**key, **rule.labels, "alertname": rule.name, "severity": rule.severity}
        labels = dict(sorted(merged.items()))

        def render(text: str) -> str:
            return render_template(text, labels, state.value, rule.threshold)

        return Alert(
            rule=rule.name,
            state="pending" if state.fired_at is None else "firing",
            severity=rule.severity,
            labels=labels,
            value=state.value,
            threshold=rule.threshold,
            summary=render(rule.summary),
            description=render(rule.description),
            runbook=render(rule.runbook),
            active_at=state.active_at,
            fired_at=state.fired_at,
            fingerprint=fingerprint(labels),
        )

    def active(self) -> list[Alert]:
        """Return the pending and firing alerts, most severe first, then oldest first."""
        alerts = [
            self._alert(rule, key, state)
            for rule in self._rules
            for key, state in self._states[rule.name].items()
        ]
        return sorted(alerts, key=lambda a: (_SEVERITY_RANK[a.severity], a.active_at, a.rule))

    def snapshot_state(self) -> dict[str, Any]:
        """Return the alerts' state as JSON-ready plain data, for `restore_state`."""
        return {
            "version": 1,
            "alerts": [
                {
                    "rule": name,
                    "series": dict(key),
                    "active_at": s.active_at,
                    "fired_at": s.fired_at,
                    "false_since": s.false_since,
                    "last_seen": s.last_seen,
                    "value": s.value,
                }
                for name, states in self._states.items()
                for key, s in states.items()
            ],
        }

    def restore_state(self, state: Mapping[str, Any], *, now: float | None = None) -> None:
        """Replace the alerts' state with `state` from `snapshot_state`.

        Alerts of rules this engine does not have are dropped. With `now`, staleness counts
        from `now`: the gap while poolwarden was down is not the target's. Raises
        `ValueError` on data `snapshot_state` did not produce.
        """
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError("engine state: expected a mapping with version 1")
        restored: dict[str, dict[LabelSet, _State]] = {name: {} for name in self._states}
        try:
            for item in state["alerts"]:
                if item["rule"] not in restored:
                    continue
                fired, since = item["fired_at"], item["false_since"]
                seen = float(item["last_seen"])
                restored[item["rule"]][LabelSet(item["series"])] = _State(
                    active_at=float(item["active_at"]),
                    last_seen=seen if now is None else max(now, seen),
                    value=float(item["value"]),
                    fired_at=None if fired is None else float(fired),
                    false_since=None if since is None else float(since),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"engine state: malformed alert entry ({exc!r})") from None
        self._states = restored
