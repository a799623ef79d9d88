"""The audit: one topology per finding, a clean one, the CLI's exit codes and a live read."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.fixtures.pg import PgServer

from poolwarden._cli_audit import register
from poolwarden.cli import app, main
from poolwarden.plan.audit import AuditFinding, audit, read_live_settings
from poolwarden.plan.topology import load_topology

HERE = Path(__file__).parent / "topologies"
register(app)


def _findings(name: str) -> list[AuditFinding]:
    topology = load_topology(HERE / name)
    server, bouncer = read_live_settings(topology)
    return audit(topology, server, bouncer)


def _one(name: str, code: str) -> AuditFinding:
    matches = [f for f in _findings(name) if f.code == code]
    assert len(matches) == 1, [f.code for f in _findings(name)]
    return matches[0]


def test_clean_topology_has_no_error_or_warning() -> None:
    """A fleet that fits, with timeouts and bounded queues set, has no findings at all."""
    assert _findings("clean.yaml") == []


def test_fleet_above_usable_is_an_error() -> None:
    """4 x 3 x (5 + 10) = 180 > 97 usable: an error with the numbers and a share that fits."""
    f = _one("fleet_exceeds.yaml", "fleet-exceeds-server")
    assert f.severity == "error"
    assert f.evidence["total"] == 180
    assert f.evidence["usable_connections"] == 97
    assert f.evidence["service:web"] == 180
    assert "lower web's pool_size + max_overflow to 8 per process" in f.fix
    assert "raise max_connections to 183" in f.fix


def test_pgbouncer_pools_above_server_are_an_error() -> None:
    """3 databases x 2 users x 20 = 120 server connections > 97 usable, fix default_pool_size."""
    f = _one("pgbouncer_exceeds.yaml", "pgbouncer-exceeds-server")
    assert f.severity == "error"
    assert f.evidence["pgbouncer_server_connections"] == 120
    assert f.evidence["pairs"] == 6
    assert "set default_pool_size to 16" in f.fix
    fleet = _one("pgbouncer_exceeds.yaml", "fleet-exceeds-server")
    assert fleet.evidence["clients_through_pgbouncer"] == 10  # the server sees 120, not 10


def test_pgbouncer_pool_over_max_db_connections_is_a_warning() -> None:
    """pool 30 per pair over max_db_connections 10 warns and names both numbers."""
    f = _one("pgbouncer_db_limit.yaml", "pgbouncer-pool-over-db-limit")
    assert f.severity == "warning"
    assert (f.evidence["pairs_total"], f.evidence["max_db_connections"]) == (30, 10)
    assert "to 10, or raise max_db_connections to 30" in f.fix


def test_clients_over_max_client_conn_is_an_error() -> None:
    """10 x 4 x 5 = 200 clients through PgBouncer with max_client_conn 100 is an error."""
    f = _one("pgbouncer_clients.yaml", "pgbouncer-client-limit")
    assert f.severity == "error"
    assert (f.evidence["clients_through_pgbouncer"], f.evidence["max_client_conn"]) == (200, 100)
    assert "raise max_client_conn to 200" in f.fix


def test_pool_far_above_cores_rule_warns() -> None:
    """2 cores make the best size 5; a pool of 40 is 8x it and warns."""
    f = _one("oversized.yaml", "pool-oversized")
    assert (f.evidence["pool_max"], f.evidence["best_pool_size"], f.evidence["factor"]) == (
        40, 5, 8.0,
    )  # fmt: skip
    assert "set batch's max_size to about 5" in f.fix


def test_acquire_timeout_not_below_request_timeout_warns() -> None:
    """psycopg timeout 30 s against a 10 s request warns, suggesting 2.5 s."""
    f = _one("waits.yaml", "acquire-timeout-not-below-request")
    assert (f.evidence["acquire_timeout"], f.evidence["request_timeout"]) == (30.0, 10.0)
    assert f.fix == "set timeout to 2.5 (below 10s)"


def test_unbounded_waits_are_reported_per_library() -> None:
    """asyncpg without timeout and psycopg max_waiting 0 warn; SQLAlchemy gets a note."""
    found = {(f.code, f.evidence["service"]): f for f in _findings("waits.yaml")}
    assert found["unbounded-acquire", "no-acquire-timeout"].severity == "warning"
    queue = found["unbounded-queue", "no-queue-bound"]
    assert queue.severity == "warning"
    assert queue.fix == "set max_waiting to about 8 (2 x max_size)"
    orm = found["unbounded-queue", "orm"]
    assert orm.severity == "info"
    assert "poolwarden.guard" in orm.fix


def test_unlimited_overflow_is_an_error() -> None:
    """SQLAlchemy max_overflow -1 has no limit: an error."""
    f = _one("unbounded_pool.yaml", "pool-unbounded")
    assert f.severity == "error"
    assert f.evidence["max_overflow"] == -1


def test_missing_server_timeouts_warn() -> None:
    """statement_timeout and idle_in_transaction_session_timeout at 0 each warn."""
    codes = {f.code: f for f in _findings("no_timeouts.yaml")}
    assert codes["no-statement-timeout"].evidence == {"statement_timeout_ms": 0}
    assert "idle_in_transaction_session_timeout = '60s'" in (
        codes["no-idle-in-transaction-timeout"].fix
    )


def test_work_mem_times_connections_above_memory_warns() -> None:
    """4 GB + 400 x 64 MB = 29696 MB > 16384 MB warns, suggesting work_mem 30MB."""
    f = _one("work_mem.yaml", "work-mem-over-memory")
    assert (f.evidence["need_mb"], f.evidence["memory_mb"]) == (29696, 16384)
    assert f.fix.startswith("lower work_mem to 30MB")


def test_pool_lifetimes_against_idle_timeouts_warn() -> None:
    """Pools and PgBouncer keeping idle connections past the idle timeouts each warn."""
    found = _findings("lifetimes.yaml")
    pools = {f.evidence["service"]: f for f in found if f.code == "pool-outlives-idle-timeout"}
    assert sorted(pools) == ["behind-bouncer", "orm"]  # asyncpg closes them at 30 s < 60 s
    assert pools["orm"].fix == "set pool_recycle below 60s (e.g. 54) and enable pool_pre_ping"
    assert pools["behind-bouncer"].evidence["client_idle_timeout"] == 120.0
    bouncer = _one("lifetimes.yaml", "pgbouncer-outlives-idle-timeout")
    assert (bouncer.evidence["server_idle_timeout"], bouncer.evidence["idle_session_timeout_s"]) == (
        600.0, 60.0,
    )  # fmt: skip


def test_too_few_free_slots_for_admin_warns() -> None:
    """90 + 6 of 97 usable leaves 1 slot of the 3 wanted for admin access."""
    f = _one("admin_slots.yaml", "no-admin-slots")
    assert (f.evidence["free"], f.evidence["admin_headroom"]) == (1, 3)
    assert f.fix == "lower the pools by 2 connections or raise max_connections to 102"


def test_memory_not_declared_is_a_note(tmp_path: Path) -> None:
    """Without server.memory_gb the work_mem check becomes a note asking for it."""
    path = tmp_path / "t.yaml"
    path.write_text("server: {settings: {statement_timeout: 1s, "
                    "idle_in_transaction_session_timeout: 1s}}\n")  # fmt: skip
    [f] = audit(load_topology(path), load_topology(path).server.declared())
    assert (f.severity, f.code) == ("info", "memory-unknown")


def _cli(*args: str) -> int:
    return main(["audit", *args])


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 for the clean topology, 0 with warnings only, 1 with an error finding."""
    assert _cli(str(HERE / "clean.yaml")) == 0
    assert _cli(str(HERE / "oversized.yaml")) == 0
    assert _cli(str(HERE / "fleet_exceeds.yaml")) == 1
    assert "[fleet-exceeds-server]" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad_yaml.yaml", "bad_yaml.yaml: line 3, column 9"),
        ("bad_type.yaml", "bad_type.yaml: server.settings.max_connections"),
        ("bad_ini.yaml", "bad.ini: line 3: default_pool_size"),
    ],
)
def test_cli_bad_input_is_exit_2_and_one_line(
    name: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed topology, wrong type or bad ini: exit 2, one line naming file and field."""
    assert _cli(str(HERE / name)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert expected in err
    assert "Traceback" not in err


def test_cli_json_and_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the findings as JSON; --format md prints a Markdown report."""
    assert _cli(str(HERE / "admin_slots.yaml"), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["code"] for f in doc["findings"]] == ["no-admin-slots"]
    assert _cli(str(HERE / "admin_slots.yaml"), "--format", "md") == 0
    assert "### `no-admin-slots`" in capsys.readouterr().out


def test_cli_reads_live_settings_with_dsn(
    pg_factory: Callable[..., PgServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dsn reads max_connections 20 (17 usable) live: a fleet of 18 is an error naming both."""
    server = pg_factory(max_connections=20)
    code = _cli(str(HERE / "live_fleet.yaml"), "--dsn", server.dsn, "--json")
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["settings_source"] == "live"
    [fleet] = [f for f in doc["findings"] if f["code"] == "fleet-exceeds-server"]
    assert (fleet["evidence"]["total"], fleet["evidence"]["usable_connections"]) == (18, 17)
