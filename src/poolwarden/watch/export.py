"""Export the rule pack to Prometheus, promtool and Grafana (`poolwarden export`).

`prometheus_rules()` is a Prometheus rule file: a group per area (server, pool, pgbouncer,
api), recording rules for the usable connection slots, and each enabled rule as
`prometheus_rule` writes it. `promtool_tests()` is a promtool unit-test file proving that
each alerting rule fires on the series it is meant for and stays quiet before; the input
series live in ``promtool_cases.yaml``, one reviewed story per rule. `grafana_dashboard()`
is a Grafana dashboard over the same metric names. `export_files(kind)` names the files
each export writes. Pure: nothing here touches the disk or prints. docs/export.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from poolwarden._config_errors import did_you_mean
from poolwarden.errors import ConfigError
from poolwarden.watch._rule_text import render_template
from poolwarden.watch.rules import Rule, load_rules, prometheus_rule

__all__ = [
    "DASHBOARD_FILE",
    "EXPORT_KINDS",
    "RULES_FILE",
    "TESTS_FILE",
    "export_files",
    "grafana_dashboard",
    "prometheus_rules",
    "promtool_tests",
    "rule_groups",
    "untested_rules",
]

RULES_FILE: Final = "poolwarden_rules.yml"
TESTS_FILE: Final = "poolwarden_rules_test.yml"
DASHBOARD_FILE: Final = "poolwarden_dashboard.json"
EXPORT_KINDS: Final = ("prometheus-rules", "promtool-tests", "grafana-dashboard")

# Every measure belongs to one area, and so does every rule on it; KNOWN_MEASURES is closed.
_MEASURES_OF: Final = {
    "server": (
        "server_connections_used_ratio", "server_free_connections",
        "server_seconds_to_exhaustion", "idle_in_transaction_max_seconds", "query_max_seconds",
        "database_up", "budget_oversubscription_ratio",
    ),
    "pool": (
        "pool_saturation", "pool_wait_p95_seconds", "pool_acquire_failures_per_second",
        "pool_leaks_per_minute",
    ),
    "pgbouncer": ("pgbouncer_clients_waiting", "pgbouncer_max_wait_seconds"),
    "api": ("api_error_ratio", "api_latency_p99_seconds", "target_up"),
}  # fmt: skip
_AREA_OF: Final = {m: area for area, measures in _MEASURES_OF.items() for m in measures}


# The usable slots of an ordinary role (REFERENCE §4): pg_settings_reserved_connections
# exists only on PostgreSQL >= 16, hence the `or ... * 0` fallback.
def _usable(matcher: str = "") -> str:
    sel = f"{{{matcher}}}" if matcher else ""
    by = "max by (job, instance)"
    return (
        f"{by} (pg_settings_max_connections{sel})\n"
        f"- {by} (pg_settings_superuser_reserved_connections{sel})\n"
        f"- (\n  {by} (pg_settings_reserved_connections{sel})\n"
        f"  or {by} (pg_settings_superuser_reserved_connections{sel}) * 0\n)\n"
    )


_RECORDING: Final[dict[str, tuple[dict[str, str], ...]]] = {
    "server": (
        {"record": "instance:pg_usable_connections:max", "expr": _usable()},
        {
            "record": "instance:pg_stat_activity_count:sum",
            "expr": "sum by (job, instance) (pg_stat_activity_count)",
        },
    ),
}
_HEADER: Final = """\
# poolwarden's alerting rules for Prometheus (`poolwarden export prometheus-rules`).
# They read postgres_exporter (pg_*), pgbouncer_exporter (pgbouncer_*), the guard's pool
# metrics (db_client_connection_*, poolwarden_pool_*) and OpenTelemetry HTTP server
# metrics (http_server_*). docs/export.md says which rule needs which exporter.
"""


# --- the rule file ------------------------------------------------------------------------


def _enabled(rules: Sequence[Rule] | None) -> list[Rule]:
    return [r for r in (load_rules() if rules is None else rules) if r.enabled]


def rule_groups(rules: Sequence[Rule] | None = None) -> list[dict[str, Any]]:
    """Return the rule file's groups: recording rules, then the area's enabled rules."""
    enabled = _enabled(rules)
    groups = []
    for area in _MEASURES_OF:
        alerting = [prometheus_rule(r) for r in enabled if _AREA_OF[r.measure] == area]
        members = [*_RECORDING.get(area, ()), *alerting]
        if members:
            groups.append({"name": f"poolwarden-{area}", "rules": members})
    return groups


def prometheus_rules(rules: Sequence[Rule] | None = None) -> str:
    """Return a Prometheus rule file (YAML) with `rules` (default: the built-in pack)."""
    return _HEADER + _dump_yaml({"groups": rule_groups(rules)})


def _block_style(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # Multi-line PromQL reads best as a literal block, as in hand-written rule files; other
    # text stays on one line (PyYAML would fold PromQL mid-expression).
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, _block_style)


def _dump_yaml(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


# --- the promtool unit tests --------------------------------------------------------------


class _Case(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    why: str
    input_series: list[dict[str, str]]
    quiet_at: list[str] = Field(min_length=1)
    fires_at: str
    labels: dict[str, str]
    value: float


class _Sample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    labels: dict[str, str]
    value: float


class _Recording(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    input_series: list[dict[str, str]]
    eval_time: str
    expect: dict[str, list[_Sample]]


class _Cases(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    interval: str
    rules: dict[str, _Case]
    recording: _Recording


@cache
def _cases() -> _Cases:
    text = resources.files("poolwarden.watch").joinpath("promtool_cases.yaml").read_text("utf-8")
    try:
        return _Cases.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"promtool_cases.yaml: {where}: {error['msg']}") from None


def untested_rules(rules: Sequence[Rule] | None = None) -> dict[str, str]:
    """Return the enabled rules `promtool_tests` cannot cover, name -> why.

    The cases in ``promtool_cases.yaml`` were written for the built-in rules: a rule is
    covered when it has a case and its exported ``expr``, ``for`` and ``keep_firing_for``
    are the built-in rule's (summaries, labels and severity may change; the expected alert
    is rendered from the rule). A rule added in poolwarden.yaml, or one whose threshold,
    PromQL or ``for`` changed, is not.
    """
    cases, builtin, out = _cases(), _builtin_timing(), {}
    for rule in _enabled(rules):
        if rule.name not in cases.rules:
            out[rule.name] = "promtool_cases.yaml has no case for it"
        elif _timing(rule) != builtin.get(rule.name):
            out[rule.name] = (
                "its expr or for: differ from the built-in rule its promtool case was written for"
            )
    return out


def _timing(rule: Rule) -> tuple[object, ...]:
    """What decides when an exported rule fires: its expression and durations."""
    exported = prometheus_rule(rule)
    return exported["expr"], exported["for"], exported.get("keep_firing_for")


@cache
def _builtin_timing() -> dict[str, tuple[object, ...]]:
    return {rule.name: _timing(rule) for rule in load_rules()}


def promtool_tests(rules: Sequence[Rule] | None = None, *, rule_file: str = RULES_FILE) -> str:
    """Return a promtool unit-test file for the rule file `rule_file` holding `rules`.

    Each enabled rule gets its case from ``promtool_cases.yaml``: no alert at the quiet
    times, exactly one alert at `fires_at` with its labels and rendered annotations. Rules
    it cannot cover (`untested_rules`) are named in the file's header comment.
    """
    cases, untested = _cases(), untested_rules(rules)
    covered = [r for r in _enabled(rules) if r.name not in untested]
    tests = [
        _recording_test(cases),
        *(_rule_test(r, cases.rules[r.name], cases.interval) for r in covered),
    ]
    document = {"rule_files": [rule_file], "evaluation_interval": cases.interval, "tests": tests}
    header = f"# promtool unit tests for {rule_file}: `promtool test rules {TESTS_FILE}`.\n"
    header += "".join(f"# NOT TESTED: {name}: {why}.\n" for name, why in untested.items())
    return header + _dump_yaml(document)


def _recording_test(cases: _Cases) -> dict[str, Any]:
    recording = cases.recording
    exprs = [
        {
            "expr": record,
            "eval_time": recording.eval_time,
            "exp_samples": [
                {"labels": _series(record, s.labels), "value": _number(s.value)} for s in samples
            ],
        }
        for record, samples in recording.expect.items()
    ]
    return {
        "name": "recording rules",
        "interval": cases.interval,
        "input_series": recording.input_series,
        "promql_expr_test": exprs,
    }


def _rule_test(rule: Rule, case: _Case, interval: str) -> dict[str, Any]:
    exported = prometheus_rule(rule)
    alert = {
        "exp_labels": {**case.labels, **exported["labels"]},
        "exp_annotations": {
            key: render_template(text, case.labels, case.value, rule.threshold)
            for key, text in exported["annotations"].items()
        },
    }
    checks: list[dict[str, Any]] = [
        {"eval_time": t, "alertname": rule.name, "exp_alerts": []} for t in case.quiet_at
    ]
    checks.append({"eval_time": case.fires_at, "alertname": rule.name, "exp_alerts": [alert]})
    return {
        "name": f"{rule.name}: {' '.join(case.why.split())}",
        "interval": interval,
        "input_series": case.input_series,
        "alert_rule_test": checks,
    }


def _number(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def _series(name: str, labels: dict[str, str]) -> str:
    pairs = ",".join(f"{k}={json.dumps(v)}" for k, v in labels.items())
    return f"{name}{{{pairs}}}"


# --- the Grafana dashboard ----------------------------------------------------------------

_DS: Final = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
_PG: Final = 'instance=~"$postgres"'
_POOL: Final = 'pool_name=~"$pool"'
_BOUNCER: Final = 'instance=~"$pgbouncer"'


# (title, unit, stacked, [(expr, legend)]) per panel; a str starts a row. Two panels a row.
_PANELS: Final[tuple[str | tuple[str, str, bool, tuple[tuple[str, str], ...]], ...]] = (
    "PostgreSQL server",
    ("Server connections by application and state", "short", True, (
        (f"sum by (instance, application_name, state) (pg_stat_activity_count{{{_PG}}})",
         "{{application_name}} {{state}} ({{instance}})"),
    )),
    ("Used vs usable connection slots", "short", False, (
        (f"sum by (instance) (pg_stat_activity_count{{{_PG}}})", "used ({{instance}})"),
        (" ".join(_usable(_PG).split()), "usable ({{instance}})"),
        (f"max by (instance) (pg_settings_max_connections{{{_PG}}})",
         "max_connections ({{instance}})"),
    )),
    ("Oldest transaction by application and state", "s", False, (
        (f'max by (instance, application_name, state) (pg_stat_activity_max_tx_duration{{{_PG},state=~"active|idle in transaction.*"}})',
         "{{application_name}} {{state}} ({{instance}})"),
    )),
    ("Server up (postgres_exporter pg_up)", "short", False, (
        (f"min by (instance) (pg_up{{{_PG}}})", "{{instance}}"),
    )),
    "Pools (guard)",
    ("Pool connections: used, idle, waiting and limits", "short", False, (
        (f"sum by (pool_name, state) (db_client_connection_count{{{_POOL}}})",
         "{{pool_name}} {{state}}"),
        (f"sum by (pool_name) (db_client_connection_pending_requests{{{_POOL}}})",
         "{{pool_name}} waiting"),
        (f"sum by (pool_name) (db_client_connection_max{{{_POOL}}})", "{{pool_name}} max"),
        (f"sum by (pool_name) (poolwarden_pool_limit{{{_POOL}}})", "{{pool_name}} guard limit"),
    )),
    ("Wait for a connection, p95", "s", False, (
        (f"histogram_quantile(0.95, sum by (pool_name, le) (rate(db_client_connection_wait_time_seconds_bucket{{{_POOL}}}[$__rate_interval])))",
         "{{pool_name}} p95"),
    )),
    ("Refused requests by reason, and pool timeouts", "reqps", True, (
        (f"sum by (pool_name, reason) (rate(poolwarden_pool_rejections_total{{{_POOL}}}[$__rate_interval]))",
         "{{pool_name}} {{reason}}"),
        (f"sum by (pool_name) (rate(db_client_connection_timeouts_total{{{_POOL}}}[$__rate_interval]))",
         "{{pool_name}} timeouts"),
    )),
    ("Connections held past the leak threshold (per 5m)", "short", False, (
        (f"sum by (pool_name) (increase(poolwarden_pool_leaks_total{{{_POOL}}}[5m]))",
         "{{pool_name}}"),
    )),
    "PgBouncer",
    ("Clients waiting for a server connection", "short", True, (
        (f"sum by (instance, database, user) (pgbouncer_pools_client_waiting_connections{{{_BOUNCER}}})",
         "{{database}}/{{user}} ({{instance}})"),
    )),
    ("Longest client wait (maxwait)", "s", False, (
        (f"max by (instance, database, user) (pgbouncer_pools_client_maxwait_seconds{{{_BOUNCER}}})",
         "{{database}}/{{user}} ({{instance}})"),
    )),
    "poolwarden alerts",
)  # fmt: skip
_VARIABLES: Final = (
    ("postgres", "PostgreSQL", "label_values(pg_settings_max_connections, instance)"),
    ("pool", "Pool", "label_values(db_client_connection_max, pool_name)"),
    ("pgbouncer", "PgBouncer", "label_values(pgbouncer_pools_client_waiting_connections, instance)"),
)  # fmt: skip


def grafana_dashboard() -> dict[str, Any]:
    """Return the Grafana dashboard (JSON model, schemaVersion 39) over the exported metrics.

    Import it with a Prometheus data source for the ``DS_PROMETHEUS`` input.
    """
    panels, y = _panels()
    panels.append(_alerts_panel(len(panels) + 1, y))
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes postgres_exporter, "
                "pgbouncer_exporter and the guarded apps, and evaluates poolwarden's rules",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
        ],
        "annotations": {"list": []},
        "description": "poolwarden: who holds PostgreSQL's connection slots, how the "
        "guarded pools and PgBouncer queue, and which poolwarden alerts fire.",
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["poolwarden", "postgresql", "pgbouncer", "connection-pool"],
        "templating": {"list": [_variable(*v) for v in _VARIABLES]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "poolwarden: connections and pools",
        "uid": "poolwarden-connections",
        "version": 1,
    }


def _panels() -> tuple[list[dict[str, Any]], int]:
    """Lay the panels out: a full-width row header, then panels two to a line."""
    out: list[dict[str, Any]] = []
    y, x = 0, 0
    for spec in _PANELS:
        if isinstance(spec, str):
            y += 8 if x else 0
            x = 0
            grid = {"h": 1, "w": 24, "x": 0, "y": y}
            out.append({"id": len(out) + 1, "type": "row", "title": spec, "collapsed": False,
                        "gridPos": grid, "panels": []})  # fmt: skip
            y += 1
            continue
        title, unit, stacked, queries = spec
        out.append(_timeseries(len(out) + 1, title, unit, stacked, queries, x, y))
        x, y = (12, y) if x == 0 else (0, y + 8)
    return out, y + (8 if x else 0)


def _timeseries(
    panel_id: int, title: str, unit: str, stacked: bool,
    queries: tuple[tuple[str, str], ...], x: int, y: int,
) -> dict[str, Any]:  # fmt: skip
    custom: dict[str, Any] = {
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "fillOpacity": 20 if stacked else 0,
        "showPoints": "never",
    }
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [
            {"datasource": _DS, "refId": chr(ord("A") + i), "expr": expr,
             "legendFormat": legend, "range": True, "editorMode": "code"}
            for i, (expr, legend) in enumerate(queries)
        ],
    }  # fmt: skip


def _alerts_panel(panel_id: int, y: int) -> dict[str, Any]:
    """A table of the poolwarden alerts Prometheus has firing now (its ALERTS series)."""
    hidden = {"Time": True, "Value": True, "__name__": True, "alertstate": True}
    return {
        "id": panel_id,
        "type": "table",
        "title": "poolwarden alerts firing now",
        "datasource": _DS,
        "gridPos": {"h": 8, "w": 24, "x": 0, "y": y},
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "sortBy": [{"displayName": "severity", "desc": False}]},
        "transformations": [{"id": "organize", "options": {"excludeByName": hidden}}],
        "targets": [
            {"datasource": _DS, "refId": "A", "instant": True, "range": False, "format": "table",
             "expr": 'ALERTS{alertname=~"Poolwarden.*",alertstate="firing"}', "editorMode": "code"}
        ],
    }  # fmt: skip


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": _DS, "query": query,
        "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {}, "options": [], "sort": 1, "hide": 0,
    }  # fmt: skip


# --- what each export writes --------------------------------------------------------------


def export_files(kind: str, rules: Sequence[Rule] | None = None) -> dict[str, str]:
    """Return the files export `kind` writes, name -> text (one of `EXPORT_KINDS`)."""
    if kind == "prometheus-rules":
        return {RULES_FILE: prometheus_rules(rules)}
    if kind == "promtool-tests":
        return {RULES_FILE: prometheus_rules(rules), TESTS_FILE: promtool_tests(rules)}
    if kind == "grafana-dashboard":
        return {DASHBOARD_FILE: json.dumps(grafana_dashboard(), indent=2) + "\n"}
    hint = did_you_mean(kind, list(EXPORT_KINDS))
    raise ConfigError(f"unknown export {kind!r}; {hint}choose one of {', '.join(EXPORT_KINDS)}")
