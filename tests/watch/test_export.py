"""`poolwarden export`: the rule file and its unit tests pass promtool; the dashboard is sound."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poolwarden.errors import ConfigError
from poolwarden.guard.metrics import GuardCollector, PoolMetrics, PoolState
from poolwarden.watch.export import (
    _AREA_OF,
    DASHBOARD_FILE,
    EXPORT_KINDS,
    RULES_FILE,
    TESTS_FILE,
    export_files,
    grafana_dashboard,
    prometheus_rules,
    promtool_tests,
    rule_groups,
    untested_rules,
)
from poolwarden.watch.rules import KNOWN_MEASURES, load_rules, prometheus_rule

INSTALL = "apt-get update -qq && apt-get install -y -qq prometheus"
CLI = (
    "import sys; from poolwarden.cli import app, main; "
    "from poolwarden._cli_export import register; register(app); sys.exit(main(sys.argv[1:]))"
)
# What postgres_exporter and pgbouncer_exporter export (REFERENCE §5.1, §5.2), the
# OpenTelemetry HTTP server histogram, and Prometheus' own ALERTS and up series.
EXPORTER_METRICS = {
    "pg_up",
    "pg_stat_activity_count",
    "pg_stat_activity_max_tx_duration",
    "pg_settings_max_connections",
    "pg_settings_superuser_reserved_connections",
    "pg_settings_reserved_connections",
    "pgbouncer_pools_client_waiting_connections",
    "pgbouncer_pools_client_maxwait_seconds",
    "http_server_request_duration_seconds_bucket",
    "http_server_request_duration_seconds_count",
    "ALERTS",
    "up",
}
PROMQL_WORDS = {
    "sum", "max", "min", "or", "and", "unless", "rate", "increase", "deriv",
    "histogram_quantile", "bool",
}  # fmt: skip


class _Pool:
    """A guarded pool's metrics source holding plain numbers (no database needed)."""

    name = "orders"

    def __init__(self) -> None:
        self.metrics = PoolMetrics()

    def pool_state(self) -> PoolState:
        return PoolState(used=1, idle=1, max=4, idle_max=4, idle_min=0, pending=0)

    def pending_requests(self) -> int:
        return 0

    def current_limit(self) -> int:
        return 4


@pytest.fixture(scope="module")
def guard_metrics() -> set[str]:
    """The sample names the guard's collector really exposes, read from its text format."""
    source, registry, collector = _Pool(), CollectorRegistry(), GuardCollector()
    collector.add(source)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary; missing is a failure, as CI installs it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool not found on PATH; install Debian's prometheus: {INSTALL}")
    return path


def run_promtool(
    promtool: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run promtool with a bounded timeout."""
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def write(directory: Path, files: dict[str, str]) -> None:
    """Write each export file into `directory`."""
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers outside strings, labels and ranges."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words - PROMQL_WORDS if not re.fullmatch(r"[0-9e]+", w)}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `poolwarden ARGS` with the export command registered, as a real process."""
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120, check=False
    )


# --- the rule file ------------------------------------------------------------------------


def test_every_known_measure_belongs_to_one_area() -> None:
    """A rule on any measure lands in a group: the area map covers KNOWN_MEASURES exactly."""
    assert set(_AREA_OF) == set(KNOWN_MEASURES)
    assert set(_AREA_OF.values()) == {"server", "pool", "pgbouncer", "api"}


def test_rule_file_groups_the_pack_by_area_with_recording_rules_first() -> None:
    """Groups server, pool, pgbouncer, api; each alerting rule once, as prometheus_rule builds it."""
    groups = rule_groups()
    assert [g["name"] for g in groups] == [
        "poolwarden-server", "poolwarden-pool", "poolwarden-pgbouncer", "poolwarden-api",
    ]  # fmt: skip
    server = groups[0]["rules"]
    assert [r.get("record") for r in server[:2]] == [
        "instance:pg_usable_connections:max",
        "instance:pg_stat_activity_count:sum",
    ]
    alerting = [r for g in groups for r in g["rules"] if "alert" in r]
    pack = load_rules()
    assert sorted(r["alert"] for r in alerting) == sorted(r.name for r in pack)
    by_name = {r["alert"]: r for r in alerting}
    for rule in pack:
        assert by_name[rule.name] == prometheus_rule(rule)
        group = next(g for g in groups if by_name[rule.name] in g["rules"])
        assert group["name"] == f"poolwarden-{_AREA_OF[rule.measure]}"


def test_rule_file_text_loads_back_to_the_same_groups() -> None:
    """The YAML text (header comments, block PromQL) parses to exactly `rule_groups()`."""
    text = prometheus_rules()
    assert text.startswith("# poolwarden's alerting rules for Prometheus")
    assert yaml.safe_load(text) == {"groups": rule_groups()}


def test_disabled_rules_are_left_out_of_the_rule_file_and_the_tests() -> None:
    """`enabled: false` keeps a rule out of both exports."""
    rules = load_rules(overrides=[{"name": "PoolwardenApiLatencyHigh", "enabled": False}])
    assert "PoolwardenApiLatencyHigh" not in prometheus_rules(rules)
    assert "PoolwardenApiLatencyHigh" not in promtool_tests(rules)
    assert "PoolwardenApiErrorRateHigh" in promtool_tests(rules)


def test_promtool_check_rules_accepts_the_rule_file(promtool: str, tmp_path: Path) -> None:
    """`promtool check rules` accepts the export: 2 recording rules plus every alerting rule."""
    write(tmp_path, export_files("prometheus-rules"))
    result = run_promtool(promtool, "check", "rules", str(tmp_path / RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules()) + 2} rules found" in result.stdout


# --- the promtool unit tests --------------------------------------------------------------


def test_promtool_test_rules_passes_on_the_export(promtool: str, tmp_path: Path) -> None:
    """Every rule fires on its case's series, with exact labels and annotations, and not before."""
    write(tmp_path, export_files("promtool-tests"))
    result = run_promtool(promtool, "test", "rules", str(tmp_path / TESTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alerting_rule_has_quiet_checks_and_one_firing_alert() -> None:
    """Per rule: checks with no alert, then one alert with rule and series labels, all annotations."""
    document = yaml.safe_load(promtool_tests())
    assert document["rule_files"] == [RULES_FILE]
    checks: dict[str, list[dict[str, Any]]] = {}
    for test in document["tests"]:
        for check in test.get("alert_rule_test", []):
            checks.setdefault(check["alertname"], []).append(check)
    for rule in load_rules():
        mine = checks[rule.name]
        assert any(c["exp_alerts"] == [] for c in mine), rule.name
        (firing,) = [c for c in mine if c["exp_alerts"]]
        (alert,) = firing["exp_alerts"]
        assert alert["exp_labels"]["severity"] == rule.severity
        assert "alertname" not in alert["exp_labels"]
        assert set(alert["exp_annotations"]) == set(prometheus_rule(rule)["annotations"])
        assert "{{" not in json.dumps(alert["exp_annotations"]), rule.name


def test_promtool_fails_when_an_expected_annotation_is_wrong(promtool: str, tmp_path: Path) -> None:
    """The unit tests have teeth: one changed word in one expected summary fails the run."""
    files = export_files("promtool-tests")
    document = yaml.safe_load(files[TESTS_FILE])
    saturated = next(
        t for t in document["tests"] if t["name"].startswith("PoolwardenPoolSaturated")
    )
    alert = saturated["alert_rule_test"][-1]["exp_alerts"][0]
    assert "120%" in alert["exp_annotations"]["summary"]
    alert["exp_annotations"]["summary"] = alert["exp_annotations"]["summary"].replace(
        "120%", "121%"
    )
    write(tmp_path, {**files, TESTS_FILE: yaml.safe_dump(document, sort_keys=False)})
    result = run_promtool(promtool, "test", "rules", str(tmp_path / TESTS_FILE))
    assert result.returncode != 0
    assert "PoolwardenPoolSaturated" in result.stdout + result.stderr


def test_case_input_series_use_real_exporter_and_guard_metric_names(
    guard_metrics: set[str],
) -> None:
    """Every input series is named as postgres_exporter, pgbouncer_exporter or the guard names it."""
    document = yaml.safe_load(promtool_tests())
    names = {
        series["series"].split("{", 1)[0]
        for test in document["tests"]
        for series in test["input_series"]
    }
    assert names <= EXPORTER_METRICS | guard_metrics, names - EXPORTER_METRICS - guard_metrics


def test_every_built_in_rule_is_tested() -> None:
    """The pack is covered in full: no rule lacks a case or has outgrown it."""
    assert untested_rules() == {}
    assert "NOT TESTED" not in promtool_tests()


def test_a_rule_without_a_promtool_case_is_left_out_and_named() -> None:
    """A rule added in poolwarden.yaml is exported, and the test file's header says it is untested."""
    extra = {"name": "OrdersWaitCritical", "measure": "pool_wait_p95_seconds", "op": ">",
             "threshold": 0.5}  # fmt: skip
    rules = load_rules(overrides=[extra])
    assert "OrdersWaitCritical" in prometheus_rules(rules)
    assert untested_rules(rules) == {"OrdersWaitCritical": "promtool_cases.yaml has no case for it"}
    text = promtool_tests(rules)
    assert "# NOT TESTED: OrdersWaitCritical: promtool_cases.yaml has no case for it.\n" in text
    checked = {
        c["alertname"] for t in yaml.safe_load(text)["tests"] for c in t.get("alert_rule_test", [])
    }
    assert checked == {r.name for r in load_rules()}


def test_a_rule_whose_threshold_or_for_changed_is_left_out_and_named() -> None:
    """A case tells the built-in rule's story: a moved threshold or `for:` drops that test."""
    why = "its expr or for: differ from the built-in rule its promtool case was written for"
    rules = load_rules(
        overrides=[
            {"name": "PoolwardenPoolSaturated", "threshold": 2.0},
            {"name": "PoolwardenPoolWaitHigh", "promql_for": "10m"},
            {"name": "PoolwardenLongRunningQuery", "severity": "critical", "summary": "slow"},
        ]
    )
    assert untested_rules(rules) == {
        "PoolwardenPoolSaturated": why,
        "PoolwardenPoolWaitHigh": why,
    }
    assert f"# NOT TESTED: PoolwardenPoolSaturated: {why}." in promtool_tests(rules)


def test_annotations_follow_the_rule_templates_not_the_case_file() -> None:
    """A changed summary is rendered into the expected alert with the case's labels and value."""
    summary = "{{ $labels.pool }} at {{ $value | humanizePercentage }} of max"
    rules = load_rules(overrides=[{"name": "PoolwardenPoolSaturated", "summary": summary}])
    document = yaml.safe_load(promtool_tests(rules))
    test = next(t for t in document["tests"] if t["name"].startswith("PoolwardenPoolSaturated"))
    alert = test["alert_rule_test"][-1]["exp_alerts"][0]
    assert alert["exp_annotations"]["summary"] == "orders at 120% of max"


# --- the Grafana dashboard ----------------------------------------------------------------


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels, rows included."""
    return list(grafana_dashboard()["panels"])


def test_dashboard_is_an_importable_model_with_a_prometheus_input() -> None:
    """schemaVersion 39, a DS_PROMETHEUS input, a stable uid, and it serialises to JSON."""
    dashboard = grafana_dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "poolwarden-connections"
    assert dashboard["id"] is None
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS", "datasource", "prometheus",
    )  # fmt: skip
    assert json.loads(export_files("grafana-dashboard")[DASHBOARD_FILE]) == dashboard


def test_dashboard_panels_have_ids_positions_datasource_and_queries() -> None:
    """Unique ids, non-overlapping gridPos within 24 columns, datasource and refId'd exprs."""
    ids, cells = set(), set()
    for panel in panels():
        assert panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
        covered = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not covered & cells, panel["title"]
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"]


def test_dashboard_reads_only_known_metric_names(guard_metrics: set[str]) -> None:
    """Every expr reads exporter, guard or ALERTS names, and every $variable is defined."""
    variables = {v["name"] for v in grafana_dashboard()["templating"]["list"]}
    for panel in panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            unknown = metric_names(expr) - EXPORTER_METRICS - guard_metrics
            assert not unknown, (panel["title"], unknown)
            used = set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used - variables)


def test_dashboard_shows_what_the_postmortem_asks_for() -> None:
    """Connections by application and state, slots, pool states, wait p95, refusals, leaks,
    PgBouncer waits and the firing alerts are each on some panel."""
    exprs = " ".join(t["expr"] for p in panels() for t in p.get("targets", []))
    wanted = [
        "sum by (instance, application_name, state) (pg_stat_activity_count",
        "pg_settings_superuser_reserved_connections",
        "db_client_connection_count", "db_client_connection_pending_requests",
        "db_client_connection_max", "poolwarden_pool_limit",
        "histogram_quantile(0.95, sum by (pool_name, le) (rate(db_client_connection_wait_time_seconds_bucket",
        "sum by (pool_name, reason) (rate(poolwarden_pool_rejections_total",
        "poolwarden_pool_leaks_total", "pgbouncer_pools_client_waiting_connections",
        "pgbouncer_pools_client_maxwait_seconds", 'ALERTS{alertname=~"Poolwarden.*"',
    ]  # fmt: skip
    assert [w for w in wanted if w not in exprs] == []
    assert any(p["type"] == "table" and "alerts" in p["title"] for p in panels())


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses every dashboard query (variables filled in) as a recording rule."""
    records = []
    for panel in panels():
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m")
            expr = re.sub(r"\$\w+", ".*", expr)
            records.append(
                {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the command line ---------------------------------------------------------------------


def test_cli_prints_the_export_to_stdout_without_out() -> None:
    """Without --out the export goes to stdout unchanged; promtool-tests prints the test file."""
    rules = run_cli("export", "prometheus-rules")
    assert rules.returncode == 0, rules.stderr
    assert rules.stdout == prometheus_rules()
    tests = run_cli("export", "promtool-tests")
    assert tests.stdout == promtool_tests()


def test_cli_promtool_tests_out_dir_writes_both_files_and_promtool_passes(
    promtool: str, tmp_path: Path
) -> None:
    """--out DIR (created) receives the rule file and the test file that names it relatively."""
    out = tmp_path / "rules"
    result = run_cli("export", "promtool-tests", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([RULES_FILE, TESTS_FILE])
    assert result.stdout.splitlines() == [f"wrote {out / RULES_FILE}", f"wrote {out / TESTS_FILE}"]
    passed = run_promtool(promtool, "test", "rules", TESTS_FILE, cwd=out)
    assert passed.returncode == 0, passed.stdout + passed.stderr


def test_cli_single_file_out_writes_the_file_or_into_a_directory(tmp_path: Path) -> None:
    """--out FILE writes that file; --out DIR writes the default name inside; --json lists paths."""
    target = tmp_path / "dash.json"
    assert run_cli("export", "grafana-dashboard", "--out", str(target)).returncode == 0
    assert json.loads(target.read_text()) == grafana_dashboard()
    listed = run_cli("export", "prometheus-rules", "--out", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {
        "kind": "prometheus-rules", "written": [str(tmp_path / RULES_FILE)],
    }  # fmt: skip
    assert (tmp_path / RULES_FILE).read_text() == prometheus_rules()


def test_cli_unknown_kind_exits_2_with_one_line_naming_the_kinds() -> None:
    """A wrong kind is one line on stderr listing the three kinds, exit 2, nothing on stdout."""
    result = run_cli("export", "prometheus-rule")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("poolwarden: error: unknown export 'prometheus-rule'; did you mean")
    assert all(kind in line for kind in EXPORT_KINDS)


def test_cli_unwritable_out_exits_2_and_leaves_nothing(tmp_path: Path) -> None:
    """An --out under a regular file fails as one line, exit 2; no temporary file is left."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("keep")
    result = run_cli("export", "prometheus-rules", "--out", str(blocker / "rules.yml"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    where = blocker / "rules.yml"
    assert line == (
        f"poolwarden: error: --out {where}: cannot write (Not a directory); choose a writable path"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]
    assert blocker.read_text() == "keep"


def test_cli_promtool_tests_writes_neither_file_when_one_cannot_be_placed(tmp_path: Path) -> None:
    """With the test file's name taken by a directory, exit 2 and the rule file is not written."""
    (tmp_path / TESTS_FILE).mkdir()
    result = run_cli("export", "promtool-tests", "--out", str(tmp_path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert f"{tmp_path / TESTS_FILE} is a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [TESTS_FILE]


def test_cli_promtool_tests_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    """promtool-tests writes two files, so --out naming a file is one line, exit 2, file kept."""
    existing = tmp_path / "rules.yml"
    existing.write_text("keep")
    result = run_cli("export", "promtool-tests", "--out", str(existing))
    assert result.returncode == 2
    assert "give a directory" in result.stderr
    assert existing.read_text() == "keep"


def test_cli_config_rules_change_the_export_and_untested_ones_are_noted(
    promtool: str, tmp_path: Path
) -> None:
    """-c poolwarden.yaml: its rules reach both files; rules the cases cannot cover are noted."""
    config = tmp_path / "poolwarden.yaml"
    config.write_text(
        "rules:\n"
        "  - name: PoolwardenPoolWaitHigh\n    threshold: 0.2\n"
        "  - name: PoolwardenPgbouncerMaxWaitHigh\n    severity: critical\n"
        "  - name: OrdersWaitCritical\n    measure: pool_wait_p95_seconds\n"
        "    op: '>'\n    threshold: 0.5\n    severity: critical\n"
    )
    out = tmp_path / "out"
    result = run_cli("export", "promtool-tests", "-c", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "poolwarden: note: no promtool test for PoolwardenPoolWaitHigh: its expr or for: "
        "differ from the built-in rule its promtool case was written for",
        "poolwarden: note: no promtool test for OrdersWaitCritical: "
        "promtool_cases.yaml has no case for it",
    ]
    exported = yaml.safe_load((out / RULES_FILE).read_text())
    alerting = {r["alert"]: r for g in exported["groups"] for r in g["rules"] if "alert" in r}
    assert alerting["PoolwardenPoolWaitHigh"]["expr"].endswith(" > 0.2")
    assert "OrdersWaitCritical" in alerting
    tests = (out / TESTS_FILE).read_text()
    assert "severity: critical" in tests.split("PoolwardenPgbouncerMaxWaitHigh:", 1)[1]
    passed = run_promtool(promtool, "test", "rules", TESTS_FILE, cwd=out)
    assert passed.returncode == 0, passed.stdout + passed.stderr


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    """A rule override with a bad field is the config's one-line error, exit 2, no output."""
    config = tmp_path / "poolwarden.yaml"
    config.write_text("rules:\n  - name: PoolwardenPoolWaitHigh\n    threshold: high\n")
    result = run_cli("export", "prometheus-rules", "-c", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"poolwarden: error: {config}: rules[0] PoolwardenPoolWaitHigh: threshold"
    )


# --- the docs -----------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def test_docs_prometheus_config_loads_the_exported_rules(promtool: str, tmp_path: Path) -> None:
    """The prometheus.yml of docs/export.md passes `promtool check config` with the export beside it."""
    blocks = re.findall(r"```yaml\n(# prometheus.yml\n.*?)```", DOCS.read_text(), re.DOTALL)
    assert len(blocks) == 1
    (tmp_path / "prometheus.yml").write_text(blocks[0])
    write(tmp_path, export_files("prometheus-rules"))
    result = run_promtool(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_say_what_every_rule_needs() -> None:
    """docs/export.md names every rule of the pack in its group table and its needs table."""
    text = DOCS.read_text()
    for rule in load_rules():
        assert text.count(f"`{rule.name}`") >= 2, rule.name


def test_register_adds_the_command_once() -> None:
    """Calling register twice leaves a single `export` command."""
    import typer

    from poolwarden._cli_export import register

    app = typer.Typer()
    register(app)
    register(app)
    assert [c.name for c in app.registered_commands] == ["export"]


def test_export_files_names_each_kinds_files() -> None:
    """Each kind maps to its files: the rule file, both files, or the dashboard JSON."""
    assert list(export_files("prometheus-rules")) == [RULES_FILE]
    assert list(export_files("promtool-tests")) == [RULES_FILE, TESTS_FILE]
    assert list(export_files("grafana-dashboard")) == [DASHBOARD_FILE]
    with pytest.raises(ConfigError, match="choose one of prometheus-rules, promtool-tests"):
        export_files("dashboard")
