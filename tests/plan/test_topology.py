"""Loading topology files: library defaults, ini files, and one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolwarden.errors import ConfigError, DsnError
from poolwarden.plan.topology import load_topology

HERE = Path(__file__).parent / "topologies"


def _error(name: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_topology(HERE / name)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_library_defaults_apply_when_knobs_are_omitted(tmp_path: Path) -> None:
    """Omitted knobs take REFERENCE §2's defaults: psycopg 4, SQLAlchemy 5+10, asyncpg 10."""
    path = tmp_path / "t.yaml"
    path.write_text(
        "services:\n  - {name: a, library: psycopg}\n  - {name: b, library: sqlalchemy}\n"
        "  - {name: c, library: asyncpg}\n"
    )
    a, b, c = (s.limits for s in load_topology(path).services)
    assert (a.max_connections, a.acquire_timeout, a.max_waiting) == (4, 30.0, None)
    assert (b.max_connections, b.acquire_timeout, b.idle_bound) == (15, 30.0, None)
    assert (c.max_connections, c.acquire_timeout, c.idle_bound) == (10, None, 300.0)


def test_guard_caps_the_pool_and_bounds_the_wait(tmp_path: Path) -> None:
    """A guard block caps connections at its limit and bounds the queue and the wait."""
    path = tmp_path / "t.yaml"
    path.write_text(
        "services:\n  - name: a\n    library: asyncpg\n    pool: {max_size: 20}\n"
        "    guard: {limit: 8, max_waiting: 16, timeout: 0.5}\n"
    )
    limits = load_topology(path).services[0].limits
    assert (limits.max_connections, limits.max_waiting, limits.acquire_timeout) == (8, 16, 0.5)


def test_ini_file_is_read_relative_to_the_topology() -> None:
    """pgbouncer.ini's [pgbouncer] and [databases] sections fill the PgBouncer settings."""
    bouncer = load_topology(HERE / "pgbouncer_exceeds.yaml").pgbouncer
    assert bouncer is not None
    assert bouncer.settings.default_pool_size == 20
    assert bouncer.settings.pool_mode == "transaction"
    assert sorted(bouncer.settings.databases) == ["audit", "billing", "orders"]


def test_malformed_yaml_names_file_and_line() -> None:
    """Broken YAML gives one line with the file, the line and column, and the fix."""
    message = _error("bad_yaml.yaml")
    assert "bad_yaml.yaml: line 3, column 9: invalid YAML" in message


def test_wrong_type_names_field_and_fix() -> None:
    """A string where a number belongs names the field and says to write a number."""
    message = _error("bad_type.yaml")
    assert "bad_type.yaml: server.settings.max_connections: expected a whole number" in message


def test_unknown_key_suggests_the_right_one() -> None:
    """A misspelt key names its path and suggests the close match."""
    message = _error("unknown_key.yaml")
    assert "services[0].replica: unknown key; did you mean 'replicas'?" in message


def test_knob_of_another_library_is_refused() -> None:
    """A SQLAlchemy knob on a psycopg service is refused, listing psycopg's knobs."""
    message = _error("wrong_knob.yaml")
    assert "services[0]: pool.pool_size is not a psycopg pool setting" in message


def test_bad_ini_value_names_the_line() -> None:
    """A non-number in pgbouncer.ini names the ini file, the line and the key."""
    message = _error("bad_ini.yaml")
    assert "bad.ini: line 3: default_pool_size = 'twenty' is not a whole number" in message


def test_bad_ini_syntax_names_the_line() -> None:
    """An ini without a section header names the ini file and line 1."""
    message = _error("bad_ini_syntax.yaml")
    assert "bad_syntax.ini: line 1: invalid ini" in message


def test_bad_dsn_is_a_dsn_error(tmp_path: Path) -> None:
    """An unparsable server DSN raises DsnError naming server.dsn, without the DSN."""
    path = tmp_path / "t.yaml"
    path.write_text("server: {dsn: 'mysql://u:secret@db/x'}\n")
    with pytest.raises(DsnError) as info:
        load_topology(path)
    assert "server.dsn: scheme 'mysql://' is not PostgreSQL" in str(info.value)
    assert "secret" not in str(info.value)


def test_missing_file_says_so(tmp_path: Path) -> None:
    """A missing topology file is one line naming the path."""
    with pytest.raises(ConfigError, match="no such file; pass the topology file"):
        load_topology(tmp_path / "absent.yaml")
