"""Alerting rules: the rule model, the built-in pack and the pending/firing/resolved engine.

A `Rule` compares one named measure (`KNOWN_MEASURES`, listed with labels and units in
docs/rules.md) with a threshold. `load_rules()` reads the pack shipped as ``rules.yaml``
and merges the user's overrides and additions from ``poolwarden.yaml``; every problem is one
`ConfigError` line naming the rule, the field and the fix. `RuleEngine.evaluate(now,
values)` steps each (rule, label set) through inactive -> pending -> firing -> resolved and
returns the transitions as `AlertEvent`s. Pure: the caller passes the clock and the values;
the engine's state is plain data (`snapshot_state` / `restore_state`). The engine lives in
`_rule_engine`, durations and templates in `_rule_text`; their public names are here.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from poolwarden._config_errors import INVALID, describe_value, did_you_mean, invalid
from poolwarden.errors import ConfigError
from poolwarden.watch._rule_engine import Alert, AlertEvent, RuleEngine
from poolwarden.watch._rule_text import (
    DURATION_FIX,
    format_duration,
    format_number,
    parse_duration,
    prometheus_template,
    template_problem,
)

__all__ = [
    "Alert",
    "AlertEvent",
    "KNOWN_MEASURES",
    "Rule",
    "RuleEngine",
    "format_duration",
    "load_rules",
    "parse_duration",
    "prometheus_rule",
]

# The measures a rule may compare; poolwarden.watch.measures computes exactly these. Their
# labels, units and PromQL are in rules.yaml and docs/rules.md.
KNOWN_MEASURES: frozenset[str] = frozenset(
    {
        "api_error_ratio",
        "api_latency_p99_seconds",
        "budget_oversubscription_ratio",
        "database_up",
        "idle_in_transaction_max_seconds",
        "pgbouncer_clients_waiting",
        "pgbouncer_max_wait_seconds",
        "pool_acquire_failures_per_second",
        "pool_leaks_per_minute",
        "pool_saturation",
        "pool_wait_p95_seconds",
        "query_max_seconds",
        "server_connections_used_ratio",
        "server_free_connections",
        "server_seconds_to_exhaustion",
        "target_up",
    }
)

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt,
    "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip

# --- the rule model -----------------------------------------------------------------------


def _duration(value: object) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0.0
    if not isinstance(value, str):
        raise invalid(f"expected a duration, got {describe_value(value)}; {DURATION_FIX}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise invalid(str(exc)) from None


Duration = Annotated[float, BeforeValidator(_duration)]


def _template(text: str) -> str:
    problem = template_problem(text)
    if problem:
        raise invalid(problem)
    return text


Template = Annotated[str, AfterValidator(_template)]
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Rule(BaseModel):
    """One alerting rule: `measure` `op` `threshold` held for `for_`; docs/rules.md."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    name: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$")
    measure: str
    op: Op
    threshold: float = Field(allow_inf_nan=False)
    # Hysteresis: a firing alert stays firing while `value op clear` still holds.
    clear: float | None = Field(default=None, allow_inf_nan=False)
    for_: Duration = Field(default=0.0, alias="for")
    keep_firing_for: Duration = 0.0
    severity: Severity = "warning"
    summary: Template = ""
    description: Template = ""
    runbook: Template = ""
    labels: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    # For `poolwarden export`: the measure in PromQL (the comparison is added), the `for:`
    # of the exported rule (default `for`), and in-process label -> Prometheus label.
    promql: str = ""
    promql_for: Duration | None = None
    promql_labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_summary(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("summary"):
            summary = f"{data.get('name')}: {data.get('measure')} is {{{{ $value }}}}"
            data = {**data, "summary": summary}
        return data

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, measure: str) -> str:
        if measure not in KNOWN_MEASURES:
            known = sorted(KNOWN_MEASURES)
            hint = did_you_mean(measure, known)
            raise invalid(f"unknown measure {measure!r}; {hint}use one of {', '.join(known)}")
        return measure

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if name in ("alertname", "severity"):
                raise invalid(f"{name!r} is set by poolwarden; remove it (use severity: ...)")
            if _LABEL_NAME.fullmatch(name) is None:
                raise invalid(f"label name {name!r} is not valid; use letters, digits and '_'")
        return labels

    @model_validator(mode="after")
    def _clear_side(self) -> Rule:
        if self.clear is None:
            return self
        if self.op in ("==", "!="):
            raise invalid("clear needs op >, >=, < or <=; remove clear", path="clear")
        upward = self.op in (">", ">=")
        if (self.clear > self.threshold) if upward else (self.clear < self.threshold):
            side = "at or below" if upward else "at or above"
            raise invalid(
                f"clear {self.clear:g} must be {side} threshold {self.threshold:g} for op "
                f"{self.op!r}, or the alert would resolve while the condition still holds",
                path="clear",
            )
        return self

    def holds(self, value: float, *, firing: bool = False) -> bool:
        """Return whether `value` meets the condition (against `clear` once firing)."""
        limit = self.clear if firing and self.clear is not None else self.threshold
        return _OPS[self.op](value, limit)

    @property
    def expr(self) -> str:
        """The PromQL alerting expression: the measure's PromQL compared with the threshold."""
        simple = re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*(\{[^{}]*\})?", self.promql.strip())
        left = self.promql.strip() if simple else f"({self.promql.strip()})"
        return f"{left} {self.op} {format_number(self.threshold)}"


def prometheus_rule(rule: Rule) -> dict[str, Any]:
    """Return `rule` as a Prometheus alerting rule (``alert``, ``expr``, ``for``, ...).

    ``$threshold`` is written out as a literal and labels are renamed by `promql_labels`,
    so the annotations are valid Prometheus templates.
    """
    if not rule.promql.strip():
        raise ConfigError(f"rule {rule.name}: promql: empty; add the measure's PromQL")

    out: dict[str, Any] = {"alert": rule.name, "expr": rule.expr}
    out["for"] = format_duration(rule.for_ if rule.promql_for is None else rule.promql_for)
    if rule.keep_firing_for:
        out["keep_firing_for"] = format_duration(rule.keep_firing_for)
    out["labels"] = {**rule.labels, "severity": rule.severity}
    texts = {"summary": rule.summary, "description": rule.description, "runbook": rule.runbook}
    out["annotations"] = {
        key: prometheus_template(text, rule.threshold, rule.promql_labels)
        for key, text in texts.items()
        if text
    }
    return out


# --- loading the pack and the overrides ---------------------------------------------------


class _MeasureSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    unit: str
    labels: list[str]
    help: str
    promql: str
    promql_labels: dict[str, str] = Field(default_factory=dict)


def load_rules(
    pack: str | None = None, overrides: Sequence[object] | None = None, *, source: str = "rules"
) -> tuple[Rule, ...]:
    """Return the rules of `pack` (YAML text; default the built-in) merged with `overrides`.

    An override whose `name` is a pack rule replaces the fields it gives (``threshold``,
    ``for``, ``enabled: false``...); a new name adds a rule. `source` names the overrides
    in messages (e.g. ``"poolwarden.yaml: rules"``). Raises `ConfigError`, one line.
    """
    text = pack if pack is not None else _builtin_pack()
    where = "rule pack" if pack is not None else "built-in rule pack"
    measures, entries = _parse_pack(text, where)
    named = {str(e["name"]): (f"{where}: rules[{i}] {e['name']}", e) for i, e in entries}
    for name, located in _overrides(overrides or (), source, named).items():
        named[name] = located
    return tuple(_build(at, entry, measures) for at, entry in named.values())


def _builtin_pack() -> str:
    return resources.files("poolwarden.watch").joinpath("rules.yaml").read_text("utf-8")


def _parse_pack(
    text: str, where: str
) -> tuple[dict[str, _MeasureSpec], list[tuple[int, dict[str, Any]]]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({type(exc).__name__}); fix the syntax") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{where}: expected a mapping with 'measures' and a 'rules' list")
    measures: dict[str, _MeasureSpec] = {}
    specs = data.get("measures") or {}
    if not isinstance(specs, dict):
        raise ConfigError(f"{where}: measures: expected a mapping of measure name to its spec")
    for name, spec in specs.items():
        try:
            measures[str(name)] = _MeasureSpec.model_validate(spec)
        except ValidationError as exc:
            raise ConfigError(f"{where}: measures.{name}: {_describe(exc)}") from None
    entries = list(enumerate(data["rules"]))
    for i, entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where}: rules[{i}]: expected a mapping with a name")
    return measures, entries


def _overrides(
    entries: Iterable[object], source: str, pack: Mapping[str, tuple[str, dict[str, Any]]]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Merge each entry into the pack rule of the same name, or take it as a new rule."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{source}[{i}]: expected a mapping, got {describe_value(entry)}; write "
                "'- name: PoolwardenPoolWaitHigh' followed by the fields to change"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{source}[{i}]: name: required; name the rule to change or to add, like "
                "'name: PoolwardenPoolWaitHigh' (see docs/rules.md)"
            )
        if name in first:
            raise ConfigError(
                f"{source}[{i}] {name}: name: also used by {source}[{first[name]}]; "
                "merge the two entries"
            )
        first[name] = i
        base = pack[name][1] if name in pack else {}
        out[name] = (f"{source}[{i}] {name}", {**base, **entry})
    return out


def _build(where: str, entry: dict[str, Any], measures: Mapping[str, _MeasureSpec]) -> Rule:
    measure = entry.get("measure")
    spec = measures.get(measure) if isinstance(measure, str) else None
    if spec is not None:
        entry = {"promql": spec.promql, "promql_labels": spec.promql_labels, **entry}
    try:
        return Rule.model_validate(entry)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from None


_FIELD_EXAMPLES = {
    "name": "name: PoolwardenOrdersWaitHigh",
    "measure": "measure: pool_wait_p95_seconds",
    "op": "op: '>'",
    "threshold": "threshold: 0.25",
    "clear": "clear: 0.2",
    "for": "for: 10s",
    "keep_firing_for": "keep_firing_for: 30s",
    "promql_for": "promql_for: 2m",
    "severity": "severity: warning",
    "summary": "summary: 'Orders pool wait is {{ $value | humanizeDuration }}'",
    "labels": "labels: {team: checkout}",
    "enabled": "enabled: false",
}
_EXPECTED = {
    "float_type": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "list_type": "a list",
}


def _describe(exc: ValidationError) -> str:
    """Return "field: problem; fix" for the first error, counting the others."""
    errors = exc.errors(include_url=False)
    text = _describe_one(errors[0])
    return text + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def _describe_one(error: ErrorDetails) -> str:
    loc, kind, value = error["loc"], error["type"], error["input"]
    ctx = error.get("ctx") or {}
    path = ".".join(str(part) for part in loc)
    field = str(loc[0]) if loc else ""
    example = _FIELD_EXAMPLES.get(field, f"{field}: ...")
    if kind == INVALID:
        return f"{ctx.get('path') or path}: {ctx['detail']}"
    if kind == "missing":
        return f"{path}: required for a new rule; add it, like {example!r}"
    if kind == "extra_forbidden":
        fields = [f.alias or name for name, f in Rule.model_fields.items()]
        return f"{path}: unknown field; {did_you_mean(field, fields)}fields: {', '.join(fields)}"
    if kind == "literal_error":
        return f"{path}: {_show(value)} is not allowed; use one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"{path}: {_show(value)} is not PascalCase; write it like 'PoolwardenOrdersWaitHigh'"
    expected = _EXPECTED.get(kind, "another value")
    return f"{path}: expected {expected}, got {_show(value)}; write it like {example!r}"


def _show(value: object) -> str:
    return repr(value[:40]) if isinstance(value, str) else describe_value(value)
