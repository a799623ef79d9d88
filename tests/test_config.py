"""Tests for poolwarden.config: the poolwarden.yaml model and load_config's messages."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pydantic
import pytest

from poolwarden.config import (
    Config,
    DatabaseConfig,
    NotifyConfig,
    PgBouncerAdminConfig,
    TargetConfig,
    WatchConfig,
    WebhookConfig,
    load_config,
)
from poolwarden.errors import ConfigError, DsnError

PASSWORD = "hunter2-s3cret"

FULL = f"""\
# Two databases, one DSN in URL form and one in key=value form.
databases:
  main:
    dsn: "postgresql://app:{PASSWORD}@db.internal:5432/orders"
    labels:
      env: prod
  reporting:
    dsn: "host=replica.internal port=5433 dbname=orders user=report"
targets:
  - name: orders-api
    url: http://orders-api:8000/metrics
    database: main
    labels: {{team: checkout}}
  - name: reports.worker_1
    url: https://reports:9100/metrics
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poolwarden.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    """Load `path`, expecting a ConfigError; check the invariants every message keeps."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    assert PASSWORD not in message
    assert "[type=" not in message
    assert "Input should" not in message
    return message


def test_full_config_loads_every_field(tmp_path: Path) -> None:
    """A complete file loads into frozen models with every field as written."""
    config = load_config(write(tmp_path, FULL))

    assert config.databases == {
        "main": DatabaseConfig(
            dsn=f"postgresql://app:{PASSWORD}@db.internal:5432/orders", labels={"env": "prod"}
        ),
        "reporting": DatabaseConfig(
            dsn="host=replica.internal port=5433 dbname=orders user=report"
        ),
    }
    assert config.targets == [
        TargetConfig(
            name="orders-api",
            url="http://orders-api:8000/metrics",
            database="main",
            labels={"team": "checkout"},
        ),
        TargetConfig(name="reports.worker_1", url="https://reports:9100/metrics"),
    ]
    with pytest.raises(pydantic.ValidationError):
        config.targets[0].name = "other"


def test_path_may_be_a_string(tmp_path: Path) -> None:
    """load_config accepts a str path as well as a PathLike."""
    assert load_config(str(write(tmp_path, FULL))).targets[0].name == "orders-api"


@pytest.mark.parametrize("text", ["", "# nothing configured yet\n", "databases:\ntargets:\n"])
def test_empty_file_or_empty_sections_is_an_empty_config(tmp_path: Path, text: str) -> None:
    """An empty file, a comment-only file and sections left empty all mean no databases."""
    assert load_config(write(tmp_path, text)) == Config()
    assert Config().databases == {}
    assert Config().targets == []


def test_sqlalchemy_driver_suffix_is_accepted(tmp_path: Path) -> None:
    """A SQLAlchemy URL (postgresql+psycopg://) is a valid DSN and is kept as written."""
    path = write(tmp_path, "databases: {main: {dsn: 'postgresql+psycopg://app@db/app'}}\n")
    assert load_config(path).databases["main"].dsn == "postgresql+psycopg://app@db/app"


def test_env_var_references_in_dsn_are_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """${NAME} in a DSN is replaced by the environment variable's value at load time."""
    monkeypatch.setenv("PW_MAIN", PASSWORD)
    monkeypatch.setenv("DB_HOST", "db.internal")
    path = write(
        tmp_path, "databases:\n  main:\n    dsn: postgresql://app:${PW_MAIN}@${DB_HOST}/app\n"
    )
    assert load_config(path).databases["main"].dsn == f"postgresql://app:{PASSWORD}@db.internal/app"


def test_env_var_references_elsewhere_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only DSNs are expanded: a label value keeps its ${...} text."""
    monkeypatch.setenv("TEAM", "checkout")
    path = write(tmp_path, "databases: {main: {dsn: 'host=db', labels: {team: '${TEAM}'}}}\n")
    assert load_config(path).databases["main"].labels == {"team": "${TEAM}"}


def test_missing_env_var_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DSN referencing an unset variable fails naming the variable, the field and the fix."""
    monkeypatch.delenv("PW_MISSING", raising=False)
    path = write(tmp_path, "databases:\n  main: {dsn: 'postgresql://app:${PW_MISSING}@db/app'}\n")
    message = config_error(path)
    assert "databases.main.dsn: environment variable PW_MISSING is not set" in message
    assert "export it" in message


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"postgresql://app:${{{PASSWORD} x}}@db/app", "write ${NAME}"),
        (f"postgresql://app:${{{PASSWORD}@db/app", "without a closing '}'"),
    ],
    ids=["not-a-name", "unterminated"],
)
def test_malformed_env_reference_is_an_error(tmp_path: Path, dsn: str, expected: str) -> None:
    """A ${ that is not a well-formed ${NAME} fails without quoting the reference back."""
    message = config_error(write(tmp_path, f"databases:\n  main: {{dsn: '{dsn}'}}\n"))
    assert "databases.main.dsn: " in message
    assert expected in message


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    """A path that does not exist names the file and suggests -c PATH and the docs."""
    path = tmp_path / "poolwarden.yaml"
    assert config_error(path) == (
        f"{path}: no such file; pass -c PATH or create one (see docs/config.md)"
    )


def test_unreadable_file_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be read names the file, the reason and what to change."""
    path = write(tmp_path, FULL)

    # chmod 000 does not stop root, who runs the tests in containers; refuse at the source.
    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    message = config_error(path)
    assert "cannot read it (permission denied)" in message
    assert "make it readable" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as the config path is refused with a hint."""
    message = config_error(tmp_path)
    assert "is a directory; pass the YAML file with -c PATH" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 names the byte and asks for UTF-8."""
    path = tmp_path / "poolwarden.yaml"
    path.write_bytes(b"databases: {}\n# caf\xe9\n")
    message = config_error(path)
    assert "not UTF-8 text (byte 0xe9 at offset 19)" in message
    assert "save the file as UTF-8" in message


def test_malformed_yaml_gives_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error names the line and column and never quotes the line itself."""
    path = write(
        tmp_path,
        f"""\
        databases:
          main:
            dsn: 'postgresql://app:{PASSWORD}@db/app'
            labels: {{env: prod
        """,
    )
    message = config_error(path)
    assert ": line 5, column 1: invalid YAML: " in message
    assert "fix the YAML syntax there" in message


def test_yaml_control_character_gives_line(tmp_path: Path) -> None:
    """A control character the YAML reader rejects is reported with its line."""
    message = config_error(write(tmp_path, "databases: {}\ntargets: \x07\n"))
    assert ": line 2: invalid YAML: " in message


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    """A key repeated in one mapping is refused instead of silently dropping the first."""
    path = write(
        tmp_path,
        """\
        databases:
          main: {dsn: 'host=a'}
          main: {dsn: 'host=b'}
        """,
    )
    message = config_error(path)
    assert "line 3, column 3: invalid YAML: duplicate key 'main' (first at line 2)" in message
    assert "remove or rename one of them" in message


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """A '<<' merge followed by an explicit key is an override, not a duplicate."""
    path = write(
        tmp_path,
        """\
        databases:
          a: &base {dsn: 'host=a', labels: {env: prod}}
          b:
            <<: *base
            dsn: 'host=b'
        """,
    )
    assert load_config(path).databases["b"] == DatabaseConfig(dsn="host=b", labels={"env": "prod"})


@pytest.mark.parametrize(
    ("text", "what"),
    [("- main\n", "a list"), ("just text\n", "a string"), ("42\n", "an integer (42)")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, what: str) -> None:
    """A file whose top level is not a mapping says what it is and which keys to write."""
    message = config_error(write(tmp_path, text))
    assert message.endswith(
        f"the top level is {what}; write a mapping with the keys databases, targets, "
        "pgbouncers, watch, notify, rules"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "databse: {}\n",
            "databse: unknown key; did you mean 'databases'? allowed keys here: databases, targets",
        ),
        (
            "databases:\n  main: {dsn: 'host=db', dns: x}\n",
            "databases.main.dns: unknown key; did you mean 'dsn'? allowed keys here: dsn, labels",
        ),
        (
            "targets:\n  - {name: a, url: 'http://a/metrics', colour: red}\n",
            "targets[0].colour: unknown key; allowed keys here: name, url, database, labels",
        ),
    ],
    ids=["top-level", "database", "target"],
)
def test_unknown_key_is_named_with_the_allowed_keys(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A misspelt key is an error naming it, suggesting the closest and listing the rest."""
    assert expected in config_error(write(tmp_path, text))


def test_unknown_password_key_does_not_echo_its_value(tmp_path: Path) -> None:
    """An unknown key's value is never shown: it may well be a password."""
    path = write(tmp_path, f"databases:\n  main: {{dsn: 'host=db', password: '{PASSWORD}'}}\n")
    assert "databases.main.password: unknown key" in config_error(path)


def test_dsn_of_wrong_type_matches_the_documented_message(tmp_path: Path) -> None:
    """A number where the DSN belongs gives the exact message docs/config.md shows."""
    path = write(tmp_path, "databases:\n  main:\n    dsn: 42\n")
    assert config_error(path) == (
        f"{path}: databases.main.dsn: expected a string, got an integer (42); "
        "write the DSN as a quoted string"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"databases:\n  main: {{dsn: {{host: db, password: '{PASSWORD}'}}}}\n",
            "databases.main.dsn: expected a string, got a mapping; write the DSN as a quoted",
        ),
        (
            f"databases:\n  main: 'postgresql://app:{PASSWORD}@db/app'\n",
            "databases.main: expected a mapping, got a string; put the DSN under a dsn key",
        ),
        (
            "databases:\n  - main\n",
            "databases: expected a mapping, got a list; write one entry per database",
        ),
        (
            "targets: {name: a}\n",
            "targets: expected a list, got a mapping; write a list with one '- name: ...' item",
        ),
        (
            "targets:\n  - {name: a, url: 8000}\n",
            "targets[0].url: expected a string, got an integer (8000); write the URL as a quoted",
        ),
        (
            "databases:\n  main: {dsn: 'host=db', labels: {replica: yes}}\n",
            "databases.main.labels.replica: expected a string, got a boolean (true); write it as",
        ),
        (
            "databases:\n  1: {dsn: 'host=db'}\n",
            "databases: key 1 is not a string; write it in quotes, like '1'",
        ),
    ],
    ids=[
        "dsn-mapping",
        "database-string",
        "databases-list",
        "targets-mapping",
        "url-int",
        "label-bool",
        "int-name",
    ],
)
def test_wrong_type_names_the_field_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    """A value of the wrong type names the field, both types and the fix, never a string."""
    assert expected in config_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "databases:\n  main: {labels: {env: prod}}\n",
            "databases.main.dsn: required key is missing; add 'dsn: postgresql://",
        ),
        (
            "targets:\n  - {name: a}\n",
            "targets[0].url: required key is missing; add 'url: http://",
        ),
        (
            "targets:\n  - {name: a, url: 'http://a/metrics'}\n  - {url: 'http://b/metrics'}\n",
            "targets[1].name: required key is missing; add 'name: orders-api'",
        ),
    ],
    ids=["dsn", "url", "name"],
)
def test_missing_required_field(tmp_path: Path, text: str, expected: str) -> None:
    """A required key left out names its path and shows a line to add."""
    assert expected in config_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        (f"hots=db password={PASSWORD}", 'invalid connection option "hots"'),
        (f"postgresql://app:{PASSWORD}%zz@db/app", 'invalid percent-encoded token: "***"'),
        (f"postgresql://app:{PASSWORD}@[::1", 'in IPv6 host address in URI: "***"'),
        (f"postgresql://db/app?password={PASSWORD}%zz", 'invalid percent-encoded token: "***"'),
        (f'postgresql://app:{PASSWORD}"x@[::1', "syntax error"),
        ("host='db", "unterminated quoted string"),
        ("db.internal", 'missing "=" after "db.internal"'),
    ],
    ids=[
        "bad-option",
        "bad-percent",
        "bad-ipv6",
        "query-password",
        "quote",
        "unterminated",
        "bare-host",
    ],
)
def test_invalid_dsn_is_a_dsn_error_without_the_password(
    tmp_path: Path, dsn: str, reason: str
) -> None:
    """An unparsable DSN raises DsnError with libpq's reason, password tokens masked."""
    # JSON strings are YAML double-quoted scalars: any DSN survives the trip.
    path = write(tmp_path, f"databases:\n  main:\n    dsn: {json.dumps(dsn)}\n")
    with pytest.raises(DsnError):
        load_config(path)
    message = config_error(path)
    assert "databases.main.dsn: not a valid PostgreSQL DSN (" in message
    assert reason in message
    assert "write it like 'postgresql://app@db:5432/app' or 'host=db dbname=app'" in message


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"mysql://app:{PASSWORD}@db/app", "scheme 'mysql://' is not PostgreSQL"),
        ("  ", "the DSN is empty"),
    ],
)
def test_dsn_that_is_not_postgresql_or_empty(tmp_path: Path, dsn: str, expected: str) -> None:
    """A DSN for another database or an empty one is a DsnError saying what to write."""
    path = write(tmp_path, f"databases:\n  main: {{dsn: '{dsn}'}}\n")
    with pytest.raises(DsnError):
        load_config(path)
    assert f"databases.main.dsn: {expected}; write it like 'postgresql://" in config_error(path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://api/metrics", "scheme 'ftp://' is not http:// or https://"),
        ("api:8000/metrics", "not a URL: it has no http:// or https://"),
        ("http:///metrics", "the URL has no host"),
        ("http://api:99999/metrics", "the port is not a number from 0 to 65535"),
        ("http://[::1/metrics", "not a valid URL"),
    ],
)
def test_target_url_must_be_http_with_a_host(tmp_path: Path, url: str, expected: str) -> None:
    """A target URL that is not http(s) with a host names the problem and an example."""
    message = config_error(write(tmp_path, f"targets:\n  - {{name: api, url: '{url}'}}\n"))
    assert f"targets[0].url: {expected}; write the app's metrics endpoint, like 'http://" in message


def test_target_url_credentials_are_not_echoed(tmp_path: Path) -> None:
    """A bad target URL is not quoted back: it may carry basic-auth credentials."""
    path = write(tmp_path, f"targets:\n  - {{name: api, url: 'ftp://u:{PASSWORD}@api/'}}\n")
    assert "targets[0].url: " in config_error(path)


def test_unknown_database_reference(tmp_path: Path) -> None:
    """A target naming an undefined database suggests the closest and lists the defined ones."""
    path = write(
        tmp_path,
        """\
        databases:
          main: {dsn: 'host=db'}
          reporting: {dsn: 'host=replica'}
        targets:
          - {name: api, url: 'http://api/metrics', database: mian}
        """,
    )
    assert config_error(path) == (
        f"{path}: targets[0].database: unknown database 'mian'; did you mean 'main'? "
        "use one of main, reporting"
    )


def test_database_reference_without_any_databases(tmp_path: Path) -> None:
    """A target naming a database when none is defined says to define it."""
    path = write(tmp_path, "targets:\n  - {name: api, url: 'http://api/metrics', database: main}\n")
    assert "targets[0].database: unknown database 'main': no databases are defined" in (
        config_error(path)
    )


def test_duplicate_target_name(tmp_path: Path) -> None:
    """Two targets with one name fail at the second, pointing back at the first."""
    path = write(
        tmp_path,
        """\
        targets:
          - {name: api, url: 'http://a/metrics'}
          - {name: worker, url: 'http://w/metrics'}
          - {name: api, url: 'http://b/metrics'}
        """,
    )
    assert config_error(path) == (
        f"{path}: targets[2].name: duplicate target name 'api', also used by targets[0]; "
        "give each target a unique name"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "databases:\n  'main db': {dsn: 'host=db'}\n",
            "databases: key 'main db' may contain only letters, digits, '_', '.' and '-'; "
            "rename it, e.g. 'main_db'",
        ),
        (
            "targets:\n  - {name: 'orders/api', url: 'http://a/metrics'}\n",
            "targets[0].name: name 'orders/api' may contain only letters, digits, '_', '.' "
            "and '-'; rename it, e.g. 'orders_api'",
        ),
        (
            "targets:\n  - {name: '', url: 'http://a/metrics'}\n",
            "targets[0].name: name '' is empty; use a name like 'orders-api'",
        ),
    ],
    ids=["database", "target", "empty"],
)
def test_names_are_restricted(tmp_path: Path, text: str, expected: str) -> None:
    """Database and target names allow letters, digits, '_', '.', '-'; a fix is suggested."""
    assert expected in config_error(write(tmp_path, text))


def test_further_errors_are_counted(tmp_path: Path) -> None:
    """Only the first error is described; the others are counted as '(and N more)'."""
    path = write(
        tmp_path,
        """\
        databases:
          main: {dsn: 42}
        targets:
          - {name: api}
          - {name: worker, url: 'ftp://w/'}
        """,
    )
    message = config_error(path)
    assert "databases.main.dsn: expected a string" in message
    assert message.endswith(" (and 2 more)")


def test_models_built_in_code_validate_and_hide_the_dsn() -> None:
    """Building a model in Python validates it too, and pydantic's report omits the input."""
    with pytest.raises(pydantic.ValidationError) as info:
        DatabaseConfig(dsn=f"hots=db password={PASSWORD}")
    assert PASSWORD not in str(info.value)
    with pytest.raises(pydantic.ValidationError, match="duplicate target name 'a'"):
        Config(
            targets=[
                TargetConfig(name="a", url="http://a/"),
                TargetConfig(name="a", url="http://b/"),
            ]
        )


WATCH = """\
pgbouncers:
  edge:
    dsn: "postgresql://pgb_admin:${PGB_PASSWORD}@127.0.0.1:6432/pgbouncer"
watch:
  interval: 0.5
  store: sqlite:///tmp/pw.db
  probe_timeout: 1.5
notify:
  console: false
  webhooks:
    - url: http://127.0.0.1:9000/hook
      hmac_secret: "${HOOK_SECRET}"
      timeout: 2
      retries: 1
rules:
  - name: PoolwardenIdleInTransactionTooLong
    threshold: 1
"""


def test_watch_sections_load_with_env_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgbouncers, watch, notify and rules load; ${ENV} expands in PgBouncer DSNs and secrets."""
    monkeypatch.setenv("PGB_PASSWORD", PASSWORD)
    monkeypatch.setenv("HOOK_SECRET", "k3y")
    config = load_config(write(tmp_path, WATCH))

    assert config.pgbouncers == {
        "edge": PgBouncerAdminConfig(
            dsn=f"postgresql://pgb_admin:{PASSWORD}@127.0.0.1:6432/pgbouncer"
        )
    }
    assert config.watch == WatchConfig(interval=0.5, store="sqlite:///tmp/pw.db", probe_timeout=1.5)
    assert config.notify == NotifyConfig(
        console=False,
        webhooks=[
            WebhookConfig(url="http://127.0.0.1:9000/hook", hmac_secret="k3y", timeout=2, retries=1)
        ],
    )
    assert config.rules == [{"name": "PoolwardenIdleInTransactionTooLong", "threshold": 1}]


def test_watch_sections_default_when_absent(tmp_path: Path) -> None:
    """Without the watch sections: no PgBouncer, 1 s interval, default store, console on."""
    config = load_config(write(tmp_path, "databases: {}\nwatch:\nnotify:\n"))

    assert config.pgbouncers == {}
    assert config.watch == WatchConfig(interval=1.0, store=None, probe_timeout=2.0)
    assert config.notify == NotifyConfig(webhooks=[], console=True)
    assert config.rules == []


def test_missing_webhook_secret_variable_names_the_field(tmp_path: Path) -> None:
    """An unset variable in a webhook's hmac_secret names the field, not the value."""
    text = (
        "notify:\n  webhooks:\n    - url: http://127.0.0.1:9/h\n      hmac_secret: ${NOPE_PW_X}\n"
    )
    message = config_error(write(tmp_path, text))
    assert "notify.webhooks[0].hmac_secret: environment variable NOPE_PW_X is not set" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("watch:\n  interval: 0\n", "watch.interval: got an integer (0); give a number > 0"),
        ("watch:\n  intervall: 1\n", "watch.intervall: unknown key"),
        ("notify:\n  webhooks:\n    - url: ftp://x/\n", "notify.webhooks[0].url: scheme"),
        ("pgbouncers:\n  edge:\n    dsn: 'mysql://x'\n", "pgbouncers.edge.dsn: scheme"),
    ],
)
def test_bad_watch_fields_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    """A wrong watch, notify or pgbouncers field gives one line naming the field."""
    assert expected in config_error(write(tmp_path, text))
