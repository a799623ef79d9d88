"""The command line, run as a real subprocess against real servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.pg import PgServer, free_port

SECRET = "hunter2-do-not-print"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m poolwarden ARGS` with a clean DSN environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("POOLWARDEN_DSN", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "poolwarden", *args],
        capture_output=True, text=True, env={**base, **(env or {})}, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An isolated user data dir, so the default embedded server lives in tmp_path."""
    return {"XDG_DATA_HOME": str(tmp_path / "xdg")}


def test_db_start_then_status_json_reports_max_connections_and_usable(home: dict[str, str]) -> None:
    """The README's first commands: db start --max-connections 40, status --json, db stop."""
    try:
        started = run("db", "start", "--max-connections", "40", env=home)
        assert started.returncode == 0, started.stderr
        status = run("status", "--json", env=home)
        assert status.returncode == 0, status.stderr
        snap = json.loads(status.stdout)
        assert snap["max_connections"] == 40
        assert snap["usable_connections"] == 37
        assert snap["client_connections"] >= 1
        db_status = json.loads(run("db", "status", "--json", env=home).stdout)
        assert db_status["running"] is True
        assert db_status["data_dir"].startswith(home["XDG_DATA_HOME"])
        url = run("db", "url", env=home).stdout.strip()
        assert url == f"postgresql://postgres@127.0.0.1:{db_status['port']}/postgres"
    finally:
        stopped = run("db", "stop", env=home)
    assert stopped.returncode == 0
    assert stopped.stdout.strip() == "stopped"
    assert json.loads(run("db", "status", "--json", env=home).stdout)["running"] is False


def test_status_starts_the_embedded_server_on_demand(home: dict[str, str]) -> None:
    """With no DSN anywhere, status starts the embedded server and reads it."""
    try:
        result = run("status", env=home)
        assert result.returncode == 0, result.stderr
        assert re.match(r"^\d+ / \d+ usable connections \(\d+ %\) — ", result.stdout)
        assert "poolwarden-probe" in result.stdout
    finally:
        run("db", "stop", env=home)


def test_status_text_shows_headline_and_table_by_application(pg: PgServer) -> None:
    """The headline counts idle-in-transaction sessions; the table lists each application."""
    with psycopg.connect(pg.dsn, application_name="cli-orders") as conn:
        conn.execute("SELECT 1")  # leaves the session idle in transaction
        result = run("status", "--dsn", pg.dsn)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert re.fullmatch(
        r"\d+ / 97 usable connections \(\d+ %\) — \d+ idle in transaction, oldest \d+(ms|s)", first
    ), first
    assert "cli-orders" in result.stdout


def test_status_reads_database_url_from_the_environment(pg: PgServer) -> None:
    """DATABASE_URL is used when neither --dsn nor POOLWARDEN_DSN is set."""
    result = run("status", "--json", env={"DATABASE_URL": pg.dsn})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == f"postgres@127.0.0.1:{pg.port}/postgres"


def test_status_reads_the_database_from_a_config_file(pg: PgServer, tmp_path: Path) -> None:
    """-c FILE picks the config's only database; --database picks one of several."""
    config = tmp_path / "poolwarden.yaml"
    config.write_text(f"databases:\n  main:\n    dsn: {pg.dsn}\n  other:\n    dsn: {pg.dsn}\n")
    result = run("status", "--json", "-c", str(config), "--database", "main")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["max_connections"] == 100


def test_json_output_never_contains_the_password(pg: PgServer) -> None:
    """A DSN with a real password works, and the password appears nowhere in the output."""
    with pg.connect() as admin:
        admin.execute("DROP ROLE IF EXISTS cli_secret")
        admin.execute(f"CREATE ROLE cli_secret LOGIN PASSWORD '{SECRET}'")
        admin.execute("GRANT pg_monitor TO cli_secret")
    result = run("status", "--json", "--dsn", pg.url(user="cli_secret", password=SECRET))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"].startswith("cli_secret@")
    assert SECRET not in result.stdout + result.stderr


def _bad_inputs(pg: PgServer, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    with pg.connect() as admin:
        admin.execute("DROP ROLE IF EXISTS cli_role")
        admin.execute("CREATE ROLE cli_role LOGIN PASSWORD 'the-right-one'")
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("databases: [\n  main\n")
    wrong_type = tmp_path / "wrong_type.yaml"
    wrong_type.write_text("databases:\n  main:\n    dsn: 42\n")
    return {
        "bad DSN syntax": (["status", "--dsn", f"host=h password={SECRET} oops"], "cannot parse DSN"),
        "unreachable": (["status", "--dsn", f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/db"], "Connection refused"),
        "wrong password": (["status", "--dsn", pg.url(user="cli_role", password=SECRET)], "authentication failed"),
        "missing database": (["status", "--dsn", pg.url(dbname="no_such_db")], "'no_such_db' does not exist"),
        "missing config": (["status", "-c", str(tmp_path / "absent.yaml")], "absent.yaml: no such file"),
        "malformed YAML": (["status", "-c", str(malformed)], "malformed.yaml"),
        "wrong type": (["status", "-c", str(wrong_type)], "databases.main.dsn"),
        "max-connections 0": (["db", "start", "--max-connections", "0", "--dir", str(tmp_path / "d")], "--max-connections"),
        "port out of range": (["db", "start", "--port", "70000", "--dir", str(tmp_path / "d")], "--port"),
        "unknown flag": (["status", "--bogus"], "--bogus"),
    }  # fmt: skip


BAD_INPUT_CASES = [
    "bad DSN syntax",
    "unreachable",
    "wrong password",
    "missing database",
    "missing config",
    "malformed YAML",
    "wrong type",
    "max-connections 0",
    "port out of range",
    "unknown flag",
]


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_gives_one_line_and_exit_code_2(case: str, pg: PgServer, tmp_path: Path) -> None:
    """Each bad input: exit 2, one line on stderr naming the problem, no traceback, no secret."""
    args, expected = _bad_inputs(pg, tmp_path)[case]
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("poolwarden: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert result.stdout == ""
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_help_lists_the_verbs() -> None:
    """A bare `poolwarden` prints help (exit 0) naming db and status."""
    result = run()
    assert result.returncode == 0
    assert "status" in result.stdout
    assert "db" in result.stdout


def test_factory_servers_honour_low_max_connections(pg_factory: Callable[..., PgServer]) -> None:
    """A server started with max_connections=20 reports 17 usable slots through the CLI."""
    server = pg_factory(max_connections=20)
    result = run("status", "--json", "--dsn", server.dsn)
    assert json.loads(result.stdout)["usable_connections"] == 17
