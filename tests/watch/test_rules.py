"""Behaviour of the rule model, the built-in pack, overrides and the alert state machine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from poolwarden.errors import ConfigError
from poolwarden.watch._rule_engine import fingerprint
from poolwarden.watch._rule_text import render_template
from poolwarden.watch.rules import (
    KNOWN_MEASURES,
    AlertEvent,
    Rule,
    RuleEngine,
    format_duration,
    load_rules,
    parse_duration,
    prometheus_rule,
)
from poolwarden.watch.series import LabelSet

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "src" / "poolwarden" / "watch" / "rules.yaml"

POOL = LabelSet({"target": "orders-api", "pool": "orders"})
OTHER_POOL = LabelSet({"target": "billing", "pool": "main"})


def make_rule(**fields: Any) -> Rule:
    """A rule on pool_saturation, `> 0.8` unless `fields` say otherwise."""
    base = {"name": "TestSaturated", "measure": "pool_saturation", "op": ">", "threshold": 0.8}
    return Rule.model_validate({**base, **fields})


def at(value: float | None, labels: LabelSet = POOL) -> dict[str, dict[LabelSet, float]]:
    """Measure values holding `value` for `labels` (nothing at all when None)."""
    return {} if value is None else {"pool_saturation": {labels: value}}


def run(engine: RuleEngine, steps: list[tuple[float, float | None]]) -> list[tuple[float, str]]:
    """Evaluate each (now, value) in turn; return (now, kind) of every event."""
    return [(now, e.kind) for now, v in steps for e in engine.evaluate(now, at(v))]


# --- the condition ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "below", "equal", "above"),
    [
        (">", False, False, True),
        (">=", False, True, True),
        ("<", True, False, False),
        ("<=", True, True, False),
        ("==", False, True, False),
        ("!=", True, False, True),
    ],
)
def test_every_op_compares_the_value_with_the_threshold(
    op: str, below: bool, equal: bool, above: bool
) -> None:
    """Each op fires exactly for the values it names: below, at and above the threshold."""
    for value, expected in ((0.5, below), (0.8, equal), (0.9, above)):
        engine = RuleEngine([make_rule(op=op)])
        kinds = [e.kind for e in engine.evaluate(0.0, at(value))]
        assert kinds == (["firing"] if expected else []), (op, value)


def test_for_goes_pending_then_firing_exactly_at_for() -> None:
    """With for 5s the alert is pending at once and fires on the first evaluation 5 s later."""
    engine = RuleEngine([make_rule(**{"for": "5s"})])
    steps = [(100.0, 0.9), (102.0, 0.9), (104.999, 0.9), (105.0, 0.9), (106.0, 0.9)]
    assert run(engine, steps) == [(100.0, "pending"), (105.0, "firing")]


def test_for_zero_fires_on_the_first_evaluation_without_pending() -> None:
    """With for 0s (the default) the first true evaluation fires; no pending event."""
    engine = RuleEngine([make_rule()])
    assert run(engine, [(0.0, 0.9), (1.0, 0.9)]) == [(0.0, "firing")]


def test_pending_alert_that_clears_is_dropped_without_an_event() -> None:
    """A pending alert whose condition stops holding vanishes silently; the clock restarts."""
    engine = RuleEngine([make_rule(**{"for": "5s"})])
    events = run(engine, [(0.0, 0.9), (3.0, 0.5), (4.0, 0.9), (8.0, 0.9), (9.0, 0.9)])
    assert events == [(0.0, "pending"), (4.0, "pending"), (9.0, "firing")]
    assert [a.state for a in engine.active()] == ["firing"]


def test_condition_false_resolves_a_firing_alert() -> None:
    """Without clear or keep_firing_for, the first false evaluation resolves the alert."""
    engine = RuleEngine([make_rule()])
    assert run(engine, [(0.0, 0.9), (1.0, 0.8), (2.0, 0.9)]) == [
        (0.0, "firing"),
        (1.0, "resolved"),
        (2.0, "firing"),
    ]


def test_hysteresis_keeps_flapping_input_from_flapping_the_alert() -> None:
    """Fire above 0.8, resolve only at 0.75 or below: input wobbling around 0.8 fires once."""
    engine = RuleEngine([make_rule(clear=0.75)])
    wobble = [0.81, 0.79, 0.82, 0.78, 0.8, 0.76, 0.85, 0.77]
    events = run(engine, [(float(t), v) for t, v in enumerate(wobble)])
    assert events == [(0.0, "firing")]
    assert run(engine, [(10.0, 0.75)]) == [(10.0, "resolved")]


def test_without_hysteresis_the_same_input_flaps() -> None:
    """The counterpart: with no clear, the wobbling input fires and resolves every time."""
    engine = RuleEngine([make_rule()])
    wobble = [0.81, 0.79, 0.82, 0.78]
    assert [k for _, k in run(engine, [(float(t), v) for t, v in enumerate(wobble)])] == [
        "firing",
        "resolved",
        "firing",
        "resolved",
    ]


def test_hysteresis_works_downward_for_lower_than_rules() -> None:
    """For op '<' the alert stays firing until the value rises to clear or above."""
    rule = make_rule(measure="server_free_connections", op="<=", threshold=0, clear=2)
    engine = RuleEngine([rule])
    series = [0, 1, 2, 0, 3]
    events = [
        (float(t), e.kind)
        for t, v in enumerate(series)
        for e in engine.evaluate(float(t), {"server_free_connections": {POOL: v}})
    ]
    assert events == [(0.0, "firing"), (4.0, "resolved")]


def test_keep_firing_for_holds_the_alert_after_the_condition_clears() -> None:
    """keep_firing_for 10s counts from the first false evaluation (t=1): resolved at t=11."""
    engine = RuleEngine([make_rule(keep_firing_for="10s")])
    steps = [(0.0, 0.9), (1.0, 0.5), (5.0, 0.5), (10.9, 0.5), (11.0, 0.5)]
    assert run(engine, steps) == [(0.0, "firing"), (11.0, "resolved")]


def test_keep_firing_for_restarts_when_the_condition_returns() -> None:
    """A true evaluation during keep_firing_for resets it (false again from t=9: t=19)."""
    engine = RuleEngine([make_rule(keep_firing_for="10s")])
    steps = [(0.0, 0.9), (5.0, 0.5), (8.0, 0.9), (9.0, 0.5), (18.9, 0.5), (19.0, 0.5)]
    assert run(engine, steps) == [(0.0, "firing"), (19.0, "resolved")]


def test_label_sets_have_independent_state() -> None:
    """Two pools of one rule go pending, fire and resolve each on their own clock."""
    engine = RuleEngine([make_rule(**{"for": "2s"})])
    timeline = {
        0.0: {POOL: 0.9, OTHER_POOL: 0.1},
        1.0: {POOL: 0.9, OTHER_POOL: 0.9},
        2.0: {POOL: 0.9, OTHER_POOL: 0.9},
        3.0: {POOL: 0.1, OTHER_POOL: 0.9},
    }
    events = [
        (now, e.kind, e.labels["pool"])
        for now, vals in timeline.items()
        for e in engine.evaluate(now, {"pool_saturation": vals})
    ]
    assert events == [
        (0.0, "pending", "orders"),
        (1.0, "pending", "main"),
        (2.0, "firing", "orders"),
        (3.0, "firing", "main"),
        (3.0, "resolved", "orders"),
    ]


# --- no data ------------------------------------------------------------------------------


def test_no_data_never_fires() -> None:
    """A missing measure, a missing label set or a NaN value never starts an alert."""
    engine = RuleEngine([make_rule(op="<", threshold=1)])  # 'missing' would read as 0 < 1
    assert engine.evaluate(0.0, {}) == []
    assert engine.evaluate(1.0, {"pool_saturation": {}}) == []
    assert engine.evaluate(2.0, {"pool_saturation": {POOL: float("nan")}}) == []
    assert engine.evaluate(3.0, {"pool_wait_p95_seconds": {POOL: 0.0}}) == []
    assert engine.active() == []


def test_missing_data_holds_a_firing_alert_until_stale_then_resolves() -> None:
    """Data gone for less than stale_after changes nothing; once stale the alert resolves."""
    engine = RuleEngine([make_rule()], stale_after=5.0)
    steps = [(0.0, 0.9), (1.0, None), (4.0, None), (5.0, 0.9), (9.0, None), (10.0, None)]
    assert run(engine, steps) == [(0.0, "firing"), (10.0, "resolved")]


def test_missing_data_holds_a_pending_alert_and_drops_it_silently_once_stale() -> None:
    """A pending alert keeps its start through a short gap and fires on time; a stale one drops."""
    engine = RuleEngine([make_rule(**{"for": "3s"})], stale_after=5.0)
    assert run(engine, [(0.0, 0.9), (1.0, None), (3.0, 0.9)]) == [(0.0, "pending"), (3.0, "firing")]
    engine = RuleEngine([make_rule(**{"for": "30s"})], stale_after=5.0)
    assert run(engine, [(0.0, 0.9), (5.0, None)]) == [(0.0, "pending")]
    assert engine.active() == []


# --- what an event carries ----------------------------------------------------------------


def test_events_carry_labels_value_threshold_times_and_rendered_text() -> None:
    """Labels merge series, rule labels (which win), alertname and severity; texts render."""
    rule = make_rule(
        **{"for": "2s"},
        severity="critical",
        labels={"team": "checkout", "pool": "overridden"},
        summary="{{ $labels.target }}: {{ $value | humanizePercentage }} > {{ $threshold }}",
        description="team {{ $labels.team }}",
        runbook="page {{ $labels.team }}",
    )
    engine = RuleEngine([rule])
    pending = engine.evaluate(10.0, at(0.9))[0]
    firing = engine.evaluate(12.0, at(0.95))[0]
    resolved = engine.evaluate(13.0, at(0.5))[0]
    assert firing.labels == {
        "alertname": "TestSaturated",
        "pool": "overridden",
        "severity": "critical",
        "target": "orders-api",
        "team": "checkout",
    }
    assert list(firing.labels) == sorted(firing.labels)
    assert (pending.started_at, firing.started_at, resolved.started_at) == (10.0, 12.0, 12.0)
    assert (firing.at, firing.value, firing.threshold) == (12.0, 0.95, 0.8)
    assert firing.summary == "orders-api: 95% > 0.8"
    assert (firing.description, firing.runbook) == ("team checkout", "page checkout")
    assert resolved.value == 0.5
    assert pending.fingerprint == firing.fingerprint == resolved.fingerprint
    assert firing.fingerprint == fingerprint(firing.labels)


def test_active_lists_pending_and_firing_alerts_most_severe_first() -> None:
    """active() shows every alert not resolved: critical before warning, then oldest first."""
    rules = [
        make_rule(name="WarnOld", severity="warning"),
        make_rule(name="CritPending", severity="critical", **{"for": "1m"}),
        make_rule(name="WarnNew", severity="warning", threshold=0.95),
    ]
    engine = RuleEngine(rules)
    engine.evaluate(0.0, at(0.9))
    engine.evaluate(1.0, at(0.99))
    assert [(a.rule, a.state) for a in engine.active()] == [
        ("CritPending", "pending"),
        ("WarnOld", "firing"),
        ("WarnNew", "firing"),
    ]
    first = engine.active()[1]
    assert (first.active_at, first.fired_at, first.value) == (0.0, 0.0, 0.99)


def test_disabled_rule_is_not_evaluated() -> None:
    """enabled: false keeps the rule out of the engine."""
    engine = RuleEngine([make_rule(enabled=False)])
    assert engine.rules == ()
    assert engine.evaluate(0.0, at(0.9)) == []


def test_duplicate_rule_names_are_refused() -> None:
    """Two enabled rules with one name would share alerts; the engine refuses them."""
    with pytest.raises(ConfigError, match="TestSaturated defined twice"):
        RuleEngine([make_rule(), make_rule(threshold=0.9)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=60))
def test_events_always_alternate_firing_and_resolved(values: list[float | None]) -> None:
    """For any input, per alert: no two firings without a resolve, no resolve unfired."""
    engine = RuleEngine([make_rule(clear=0.7, **{"for": "2s"})], stale_after=3.0)
    firing = False
    for now, value in enumerate(values):
        for event in engine.evaluate(float(now), at(value)):
            if event.kind == "firing":
                assert not firing
                firing = True
            elif event.kind == "resolved":
                assert firing
                firing = False
    assert firing == any(a.state == "firing" for a in engine.active())


# --- templates and fingerprints -----------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        ("{{ $value }}", 0.8, "0.8"),
        ("{{$value}}", 42.0, "42"),
        ("{{ $threshold }}", 0.0, "0"),
        ("{{ $value | humanizePercentage }}", 0.9278, "92.78%"),
        ("{{ $value | humanize }}", 1234567.0, "1.235M"),
        ("{{ $value | humanize }}", 0.1, "100m"),
        ("{{ $value | humanizeDuration }}", 90.0, "1m 30s"),
        ("{{ $value | humanizeDuration }}", 93784.0, "1d 2h 3m 4s"),
        ("{{ $value | humanizeDuration }}", 2.5, "2.5s"),
        ("{{ $value | humanizeDuration }}", 0.25, "250ms"),
        ("{{ $value | humanizeDuration }}", float("inf"), "+Inf"),
        ('{{ $value | printf "%.2f" }}/s', 1 / 6, "0.17/s"),
        ("{{ $labels.pool }} / {{ $labels.missing }}.", 1.0, "orders / ."),
    ],
)
def test_templates_render_like_prometheus(template: str, value: float, expected: str) -> None:
    """Labels, value and threshold expand with Prometheus' formats; a missing label is empty."""
    assert render_template(template, {"pool": "orders"}, value, 0.0) == expected


@pytest.mark.parametrize(
    "template",
    [
        "{{ .Labels.pool }}",
        "{{ $value | js }}",
        "{{ range $i := until 10 }}{{ end }}",
        "{{ $labels.pool ",
        "{{ $labels.pool }} and {{ $valu }}",
    ],
)
def test_a_template_beyond_the_supported_subset_is_refused_on_load(template: str) -> None:
    """Nothing but labels, value and threshold with the listed pipes: no code runs, ever."""
    with pytest.raises(ConfigError) as info:
        load_rules(overrides=[{"name": "PoolwardenPoolSaturated", "summary": template}])
    message = str(info.value)
    assert message.startswith("rules[0] PoolwardenPoolSaturated: summary: ")
    assert "\n" not in message


def test_fingerprint_matches_alertmanagers_and_ignores_order() -> None:
    """The fingerprint is Alertmanager's (REFERENCE §5.7 example) whatever the label order."""
    labels = {
        "alertname": "PoolwardenPostgresConnectionsHigh",
        "instance": "db1:9187",
        "job": "postgres",
        "severity": "warning",
    }
    assert fingerprint(labels) == "aa022814fdad8913"
    assert fingerprint(dict(reversed(labels.items()))) == "aa022814fdad8913"
    assert fingerprint({}) == "cbf29ce484222325"
    assert fingerprint({**labels, "job": "pg"}) != fingerprint(labels)


# --- state round trip ---------------------------------------------------------------------


def test_state_round_trip_resumes_without_a_duplicate_event() -> None:
    """A restored engine neither re-fires a firing alert nor restarts a pending one's clock."""
    rules = [make_rule(**{"for": "5s"}), make_rule(name="Other", threshold=0.5)]
    first = RuleEngine(rules)
    first.evaluate(0.0, at(0.9))
    first.evaluate(3.0, at(0.9))
    state = first.snapshot_state()
    assert yaml.safe_load(yaml.safe_dump(state)) == state  # plain data

    second = RuleEngine(rules)
    second.restore_state(state)
    assert second.active() == first.active()
    assert [e.kind for e in second.evaluate(4.0, at(0.9))] == []
    assert [(e.rule, e.kind) for e in second.evaluate(5.0, at(0.9))] == [
        ("TestSaturated", "firing")
    ]
    assert [(e.rule, e.kind) for e in second.evaluate(6.0, at(0.1))] == [
        ("TestSaturated", "resolved"),
        ("Other", "resolved"),
    ]


def test_restore_with_now_restarts_the_staleness_clock() -> None:
    """After a restart the first evaluation without data does not resolve what was firing."""
    engine = RuleEngine([make_rule()], stale_after=5.0)
    engine.evaluate(0.0, at(0.9))
    state = engine.snapshot_state()
    stale = RuleEngine([make_rule()], stale_after=5.0)
    stale.restore_state(state)
    assert [e.kind for e in stale.evaluate(60.0, {})] == ["resolved"]
    resumed = RuleEngine([make_rule()], stale_after=5.0)
    resumed.restore_state(state, now=60.0)
    assert resumed.evaluate(61.0, {}) == []
    assert [a.state for a in resumed.active()] == ["firing"]


def test_restore_drops_unknown_rules_and_refuses_foreign_data() -> None:
    """State of a rule no longer configured is dropped; data of another shape is a ValueError."""
    engine = RuleEngine([make_rule()])
    engine.evaluate(0.0, at(0.9))
    renamed = RuleEngine([make_rule(name="Renamed")])
    renamed.restore_state(engine.snapshot_state())
    assert renamed.active() == []
    with pytest.raises(ValueError, match="version 1"):
        renamed.restore_state({"alerts": []})
    with pytest.raises(ValueError, match="malformed"):
        renamed.restore_state({"version": 1, "alerts": [{"rule": "Renamed"}]})


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("0", 0.0, "0s"),
        ("0s", 0.0, "0s"),
        ("5s", 5.0, "5s"),
        ("90s", 90.0, "1m30s"),
        ("2m", 120.0, "2m"),
        ("1h30m", 5400.0, "1h30m"),
        ("500ms", 0.5, "500ms"),
        ("1d", 86400.0, "24h"),
    ],
)
def test_durations_parse_and_format_as_prometheus(
    text: str, seconds: float, canonical: str
) -> None:
    """Prometheus duration strings become seconds and back."""
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == canonical


@pytest.mark.parametrize("text", ["", "5", "5 s", "1.5s", "-5s", "5sec", "1m1h"])
def test_malformed_durations_are_refused(text: str) -> None:
    """Numbers without a unit, fractions, negatives and out-of-order units are not durations."""
    with pytest.raises(ValueError, match="write it with a unit"):
        parse_duration(text)


# --- overrides ----------------------------------------------------------------------------


def by_name(rules: tuple[Rule, ...]) -> dict[str, Rule]:
    return {rule.name: rule for rule in rules}


def test_an_override_changes_only_the_fields_it_gives() -> None:
    """threshold, for and severity change; every other field keeps the pack's value."""
    pack = by_name(load_rules())
    rules = by_name(
        load_rules(
            overrides=[
                {
                    "name": "PoolwardenPoolWaitHigh",
                    "threshold": 0.25,
                    "clear": 0.2,
                    "for": "30s",
                    "severity": "critical",
                }
            ]
        )
    )
    changed, original = rules["PoolwardenPoolWaitHigh"], pack["PoolwardenPoolWaitHigh"]
    assert (changed.threshold, changed.clear, changed.for_, changed.severity) == (
        0.25,
        0.2,
        30.0,
        "critical",
    )
    same = ("measure", "op", "summary", "runbook", "promql", "promql_for", "promql_labels")
    assert {f: getattr(changed, f) for f in same} == {f: getattr(original, f) for f in same}
    assert list(rules) == list(pack)
    assert prometheus_rule(changed)["expr"].endswith("> 0.25")


def test_an_override_can_disable_a_rule() -> None:
    """enabled: false loads the rule disabled, and the engine leaves it out."""
    rules = by_name(load_rules(overrides=[{"name": "PoolwardenApiLatencyHigh", "enabled": False}]))
    assert rules["PoolwardenApiLatencyHigh"].enabled is False
    engine = RuleEngine(rules.values())
    assert "PoolwardenApiLatencyHigh" not in {r.name for r in engine.rules}
    assert len(engine.rules) == len(rules) - 1


def test_a_new_name_adds_a_rule_with_the_measures_promql() -> None:
    """A rule of a new name on a known measure is added after the pack's, PromQL included."""
    new = {
        "name": "OrdersPoolWaitCritical",
        "measure": "pool_wait_p95_seconds",
        "op": ">",
        "threshold": 0.5,
        "for": "20s",
        "severity": "critical",
        "labels": {"team": "checkout"},
    }
    rules = load_rules(overrides=[new])
    added = rules[-1]
    assert added.name == "OrdersPoolWaitCritical"
    assert added.promql == by_name(rules)["PoolwardenPoolWaitHigh"].promql
    assert added.summary == "OrdersPoolWaitCritical: pool_wait_p95_seconds is {{ $value }}"
    exported = prometheus_rule(added)
    assert exported["labels"] == {"team": "checkout", "severity": "critical"}
    assert exported["for"] == "20s"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"name": "PoolwardenPoolWaitHigh", "threshold": "high"},
            "rules[0] PoolwardenPoolWaitHigh: threshold: expected a number, got 'high'; "
            "write it like 'threshold: 0.25'",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "threshold": True},
            "rules[0] PoolwardenPoolWaitHigh: threshold: expected a number, got a boolean (true)",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "enabled": "no"},
            "rules[0] PoolwardenPoolWaitHigh: enabled: expected true or false, got 'no'",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "for": "5 seconds"},
            "rules[0] PoolwardenPoolWaitHigh: for: '5 seconds' is not a duration; write it "
            "with a unit, like '5s', '2m' or '1h30m'",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "for": 5},
            "rules[0] PoolwardenPoolWaitHigh: for: expected a duration, got an integer (5); "
            "write it with a unit",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "severity": "page"},
            "rules[0] PoolwardenPoolWaitHigh: severity: 'page' is not allowed; use one of "
            "'info', 'warning' or 'critical'",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "treshold": 1},
            "rules[0] PoolwardenPoolWaitHigh: treshold: unknown field; did you mean 'threshold'?",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "labels": {"team": 7}},
            "rules[0] PoolwardenPoolWaitHigh: labels.team: expected a string, got an integer (7)",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "labels": {"severity": "page"}},
            "rules[0] PoolwardenPoolWaitHigh: labels: 'severity' is set by poolwarden",
        ),
        (
            {"name": "PoolwardenPoolWaitHigh", "clear": 0.2},
            "rules[0] PoolwardenPoolWaitHigh: clear: clear 0.2 must be at or below threshold "
            "0.1 for op '>'",
        ),
        (
            {"name": "PoolwardenDatabaseUnreachable", "clear": 1},
            "rules[0] PoolwardenDatabaseUnreachable: clear: clear needs op >, >=, < or <=",
        ),
        (
            {"name": "OrdersHigh", "measure": "pool_wiat_p95_seconds", "op": ">", "threshold": 1},
            "rules[0] OrdersHigh: measure: unknown measure 'pool_wiat_p95_seconds'; did you "
            "mean 'pool_wait_p95_seconds'? use one of api_error_ratio,",
        ),
        (
            {"name": "OrdersHigh", "measure": "pool_saturation", "threshold": 1},
            "rules[0] OrdersHigh: op: required for a new rule; add it, like \"op: '>'\"",
        ),
        (
            {"name": "orders_high", "measure": "pool_saturation", "op": ">", "threshold": 1},
            "rules[0] orders_high: name: 'orders_high' is not PascalCase",
        ),
        (
            {"threshold": 1},
            "rules[0]: name: required; name the rule to change or to add",
        ),
        (
            "PoolwardenPoolWaitHigh",
            "rules[0]: expected a mapping, got a string",
        ),
    ],
)
def test_bad_overrides_raise_one_line_naming_the_rule_the_field_and_the_fix(
    entry: object, expected: str
) -> None:
    """Every mistake in an override is one ConfigError line: rule, field, problem, fix."""
    with pytest.raises(ConfigError) as info:
        load_rules(overrides=[entry])
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message
    assert "[type=" not in message


def test_a_rule_named_twice_in_the_overrides_is_refused() -> None:
    """Two entries for one rule are ambiguous; the message points at both."""
    with pytest.raises(ConfigError) as info:
        load_rules(
            overrides=[
                {"name": "PoolwardenPoolWaitHigh", "threshold": 1},
                {"name": "PoolwardenPoolWaitHigh", "severity": "critical"},
            ],
            source="poolwarden.yaml: rules",
        )
    assert str(info.value) == (
        "poolwarden.yaml: rules[1] PoolwardenPoolWaitHigh: name: also used by "
        "poolwarden.yaml: rules[0]; merge the two entries"
    )


# --- the built-in pack --------------------------------------------------------------------

# DESIGN.md "Built-in rules", in its order.
DESIGN_RULES = [
    "PoolwardenPoolSaturated",  # pool saturated
    "PoolwardenPoolWaitHigh",  # pool wait high
    "PoolwardenPoolAcquireFailures",  # acquire timeouts/rejections
    "PoolwardenServerConnectionsHigh",  # near usable limit, 80 % warning
    "PoolwardenServerConnectionsCritical",  # near usable limit, 95 % critical
    "PoolwardenServerConnectionsExhaustionPredicted",  # linear fit
    "PoolwardenServerConnectionsRefused",  # SQLSTATE 53300
    "PoolwardenIdleInTransactionTooLong",
    "PoolwardenLongRunningQuery",
    "PoolwardenConnectionLeakSuspected",
    "PoolwardenApiErrorRateHigh",
    "PoolwardenApiLatencyHigh",
    "PoolwardenBudgetOversubscribed",
    "PoolwardenDatabaseUnreachable",
    "PoolwardenTargetDown",  # issue 4 point 9: a scrape target that hangs
    "PoolwardenPgbouncerClientsWaiting",
    "PoolwardenPgbouncerMaxWaitHigh",
]


def test_the_pack_has_every_rule_design_md_lists() -> None:
    """Each built-in rule of DESIGN.md is in the pack, enabled, and nothing else is."""
    rules = by_name(load_rules())
    assert sorted(rules) == sorted(DESIGN_RULES)
    assert all(rule.enabled for rule in rules.values())
    high, critical = (
        rules["PoolwardenServerConnectionsHigh"],
        rules["PoolwardenServerConnectionsCritical"],
    )
    assert (high.threshold, high.severity) == (0.8, "warning")
    assert (critical.threshold, critical.severity) == (0.95, "critical")


def test_every_pack_rule_is_complete() -> None:
    """Each rule has a summary, a description, a runbook and PromQL; for: is seconds."""
    for rule in load_rules():
        assert all((rule.summary, rule.description, rule.runbook)), rule.name
        assert rule.promql.strip(), rule.name
        assert rule.promql_for is not None, rule.name
        assert rule.for_ <= 30, rule.name  # in-process alerts come within seconds


def test_the_pack_describes_exactly_the_known_measures() -> None:
    """The pack's measure table and KNOWN_MEASURES agree, and every measure is used."""
    data = yaml.safe_load(PACK.read_text(encoding="utf-8"))
    assert set(data["measures"]) == KNOWN_MEASURES
    assert {rule.measure for rule in load_rules()} == KNOWN_MEASURES


def test_pack_templates_use_only_labels_the_measure_has() -> None:
    """A template may name only its measure's labels or the rule's: a typo would render empty."""
    measures = yaml.safe_load(PACK.read_text(encoding="utf-8"))["measures"]
    for rule in load_rules():
        allowed = {*measures[rule.measure]["labels"], *rule.labels}
        texts = rule.summary + rule.description + rule.runbook
        used = set(re.findall(r"\$labels\.(\w+)", texts))
        assert used <= allowed, (rule.name, used - allowed)
        assert set(rule.promql_labels) <= set(measures[rule.measure]["labels"]), rule.name


def test_pack_rules_render_with_real_looking_values() -> None:
    """Each pack rule fires on a value past its threshold and renders without braces left."""
    rules = load_rules()
    measures = yaml.safe_load(PACK.read_text(encoding="utf-8"))["measures"]
    for rule in rules:
        labels = LabelSet({name: f"x-{name}" for name in measures[rule.measure]["labels"]})
        value = {">": rule.threshold + 1, ">=": rule.threshold, "<": rule.threshold - 1}.get(
            rule.op, rule.threshold
        )
        engine = RuleEngine([rule.model_copy(update={"for_": 0.0})])
        [event] = engine.evaluate(0.0, {rule.measure: {labels: value}})
        assert event.kind == "firing", rule.name
        assert "{{" not in event.summary + event.description + event.runbook, rule.name
        assert "x-" in event.summary, rule.name


# PromQL names the exports may read (REFERENCE.md §5, guard/metrics.py, OTel HTTP).
KNOWN_METRICS = {
    "up",  # Prometheus' own, per scrape target
    "pg_up",
    "pg_stat_activity_count",
    "pg_stat_activity_max_tx_duration",
    "pg_settings_max_connections",
    "pg_settings_superuser_reserved_connections",
    "pg_settings_reserved_connections",
    "pgbouncer_pools_client_waiting_connections",
    "pgbouncer_pools_client_maxwait_seconds",
    "db_client_connection_count",
    "db_client_connection_max",
    "db_client_connection_pending_requests",
    "db_client_connection_timeouts_total",
    "db_client_connection_wait_time_seconds_bucket",
    "poolwarden_pool_rejections_total",
    "poolwarden_pool_leaks_total",
    "http_server_request_duration_seconds_count",
    "http_server_request_duration_seconds_bucket",
}
METRIC_PREFIXES = ("pg_", "pgbouncer_", "db_client_", "poolwarden_", "http_server_")


def test_pack_promql_is_balanced_and_reads_only_known_metrics() -> None:
    """Brackets balance, strings close, and every metric name is a real exporter's."""
    pairs = {")": "(", "]": "[", "}": "{"}
    for rule in load_rules():
        expr = prometheus_rule(rule)["expr"]
        assert expr.count('"') % 2 == 0, rule.name
        unquoted = re.sub(r'"[^"]*"', '""', expr)
        stack: list[str] = []
        for char in unquoted:
            if char in "([{":
                stack.append(char)
            elif char in pairs:
                assert stack, rule.name
                assert stack.pop() == pairs[char], rule.name
        assert not stack, rule.name
        names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", re.sub(r"\{[^}]*\}", "", unquoted)))
        metrics = {n for n in names if n.startswith(METRIC_PREFIXES) or n == "up"}
        assert metrics, rule.name
        assert metrics <= KNOWN_METRICS, (rule.name, metrics - KNOWN_METRICS)
        assert expr.endswith(f"{rule.op} {rule.threshold:g}"), rule.name


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian 'prometheus') not installed"
)
def test_promtool_accepts_the_pack_as_a_rule_file(tmp_path: Path) -> None:
    """`promtool check rules` accepts every rule: PromQL, durations and annotation templates."""
    path = tmp_path / "poolwarden_rules.yml"
    group = {"name": "poolwarden", "rules": [prometheus_rule(r) for r in load_rules()]}
    path.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False), encoding="utf-8")
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(group['rules'])} rules found" in result.stdout


def test_prometheus_rule_writes_thresholds_out_and_renames_labels() -> None:
    """The export form has no $threshold and speaks Prometheus' label names."""
    rule = by_name(load_rules())["PoolwardenServerConnectionsHigh"]
    exported = prometheus_rule(rule)
    assert exported["alert"] == "PoolwardenServerConnectionsHigh"
    assert exported["for"] == "2m"
    assert exported["labels"] == {"severity": "warning"}
    assert exported["expr"].startswith("(sum by (job, instance) (pg_stat_activity_count)")
    assert exported["expr"].endswith(") >= 0.8")
    annotations = exported["annotations"]
    assert "(threshold 80%)" in annotations["description"]
    assert "$threshold" not in str(annotations)
    assert "{{ $labels.instance }}" in annotations["summary"]
    assert "$labels.database" not in str(annotations)


def test_docs_describe_every_rule_and_measure() -> None:
    """docs/rules.md names each rule and measure and shows each rule's current PromQL."""
    docs = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    missing = [n for n in [*DESIGN_RULES, *sorted(KNOWN_MEASURES)] if f"`{n}`" not in docs]
    assert not missing
    stale = [r.name for r in load_rules() if prometheus_rule(r)["expr"] not in docs]
    assert not stale


def test_alert_event_is_a_frozen_plain_value() -> None:
    """Events are frozen dataclasses (safe to hand to the store, notifier and dashboard)."""
    [event] = RuleEngine([make_rule()]).evaluate(0.0, at(0.9))
    assert isinstance(event, AlertEvent)
    with pytest.raises(AttributeError):
        event.kind = "resolved"  # type: ignore[misc]
