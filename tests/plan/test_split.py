"""Splitting the budget: pure arithmetic on plain topologies, and `poolwarden plan
--topology` on a private embedded server printing and reporting the split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fixtures.pg import PgServer

from poolwarden._cli_plan import register
from poolwarden.cli import app, main
from poolwarden.errors import ConfigError
from poolwarden.guard.budget import DEFAULT_HEADROOM
from poolwarden.plan import BudgetSplit, Topology, split_budget

register(app)


def _service(name: str, replicas: int, processes: int, max_size: int) -> dict[str, Any]:
    return {
        "name": name, "replicas": replicas, "processes": processes, "library": "psycopg",
        "pool": {"min_size": 1, "max_size": max_size},
    }  # fmt: skip


def _topology(*services: dict[str, Any], others: int = 0) -> Topology:
    return Topology.model_validate(
        {"services": list(services), "other_clients": [{"name": "cron", "connections": others}]}
    )


def test_two_services_share_the_room_by_current_demand() -> None:
    """Two services with different replicas get pool maxes in proportion to their current
    max, the fleet stays within usable - others - headroom, and the guard limits add up to
    at most the server's best active count."""
    topology = _topology(_service("api", 4, 2, 10), _service("jobs", 1, 1, 20), others=2)
    split = split_budget(topology, server_active=12, usable=97)
    assert isinstance(split, BudgetSplit)
    assert split.available == 97 - 2 - DEFAULT_HEADROOM
    api, jobs = split.services
    assert (api.processes, jobs.processes) == (8, 1)
    # Exact shares: 92 x 10 / 100 = 9.2 per api process, 92 x 20 / 100 = 18.4 for jobs.
    assert (api.pool_max, jobs.pool_max) == (9, 19)
    assert split.connections == 8 * 9 + 19 <= split.available
    # Active: 12 x 10 / 100 = 1.2 per api process, 12 x 20 / 100 = 2.4 for jobs.
    assert (api.limit, jobs.limit) == (1, 3)
    assert split.active == 8 + 3 <= 12


def test_explain_gives_the_arithmetic_one_line_per_service() -> None:
    """explain() is a budget line then one line per service with its multiplication."""
    topology = _topology(_service("api", 4, 2, 10), _service("jobs", 1, 1, 20), others=2)
    lines = split_budget(topology, server_active=12, usable=97).explain().splitlines()
    assert len(lines) == 3
    assert "97 usable - 2 held by other clients - 3 headroom = 92 available" in lines[0]
    assert lines[1].startswith("'api': 4 replicas x 2 processes = 8; pool max 10 -> 9")
    assert "8 x 9 = 72 connections" in lines[1]
    assert "guard limit 1 (8 x 1 = 8 active)" in lines[1]
    assert lines[2].startswith("'jobs': 1 replica x 1 process = 1")


def test_a_fleet_that_cannot_fit_one_per_process_is_one_config_error_line() -> None:
    """When the processes outnumber the available slots, ConfigError says so in one line,
    with the arithmetic and the max_connections that would fit."""
    topology = _topology(_service("api", 10, 4, 5), others=5)
    with pytest.raises(ConfigError) as info:
        split_budget(topology, server_active=8, usable=40)
    message = str(info.value)
    assert "\n" not in message
    assert "40 processes need at least one connection each" in message
    assert "40 usable - 5 held by other clients - 3 headroom = 32 available" in message
    assert "raise max_connections to 48" in message


def test_more_processes_than_the_best_active_count_get_limit_one() -> None:
    """Each process keeps a guard limit of at least 1, even when that exceeds the pick."""
    split = split_budget(_topology(_service("api", 6, 1, 4)), server_active=3, usable=97)
    assert split.services[0].limit == 1
    assert split.active == 6


@settings(max_examples=200, deadline=None)
@given(
    fleet=st.lists(
        st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(1, 50)), min_size=1,
        max_size=5,
    ),
    usable=st.integers(0, 500),
    others=st.integers(0, 20),
    server_active=st.integers(1, 200),
)  # fmt: skip
def test_rounding_never_exceeds_the_available_slots(
    fleet: list[tuple[int, int, int]], usable: int, others: int, server_active: int
) -> None:
    """Whenever one connection per process fits, every pool max and limit is >= 1, the
    fleet's connections stay within usable - others - headroom, each limit is at most its
    pool max, and the limits exceed the pick only when one per process already does."""
    services = [_service(f"s{i}", r, p, m) for i, (r, p, m) in enumerate(fleet)]
    topology = _topology(*services, others=others)
    processes = sum(r * p for r, p, _ in fleet)
    if processes > usable - others - DEFAULT_HEADROOM:
        with pytest.raises(ConfigError):
            split_budget(topology, server_active=server_active, usable=usable)
        return
    split = split_budget(topology, server_active=server_active, usable=usable)
    assert split.connections <= split.available
    assert all(1 <= s.limit <= s.pool_max for s in split.services)
    assert split.active <= max(server_active, processes)


@pytest.mark.slow
def test_plan_with_a_topology_prints_and_reports_the_split(
    pg_factory: Callable[..., PgServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short plan with --topology exits 0, prints the split, and puts it in the JSON
    output, plan.json and plan.md, the limits following the pick."""
    server = pg_factory(max_connections=80)
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        "server:\n  settings: {max_connections: 60}\n"
        "services:\n"
        "  - {name: api, replicas: 2, processes: 2, library: psycopg,"
        " pool: {min_size: 1, max_size: 10}}\n"
        "  - {name: jobs, library: sqlalchemy, pool: {pool_size: 5, max_overflow: 0}}\n"
        "other_clients:\n  - {name: cron, connections: 2}\n"
    )
    out = tmp_path / "out"
    args = ["plan", "--dsn", server.dsn, "--max-size", "8", "--seconds", "1", "--scale", "1",
            "--out", str(out), "--topology", str(topology)]  # fmt: skip
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    split = doc["split"]
    assert split["available"] == 60 - 3 - 2 - DEFAULT_HEADROOM
    assert split["server_active"] == doc["pick"]["size"]
    assert [s["service"] for s in split["services"]] == ["api", "jobs"]
    assert split["connections"] <= split["available"]
    assert json.loads((out / "plan.json").read_text())["split"] == split
    assert "## Budget split" in (out / "plan.md").read_text()


def test_plan_refuses_a_fleet_that_cannot_fit_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A topology whose processes outnumber the slots exits 2 with one line, without
    measuring (no server is needed)."""
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        "server:\n  settings: {max_connections: 10}\n"
        "services:\n  - {name: api, replicas: 20, library: asyncpg}\n"
    )
    assert main(["plan", "--topology", str(topology), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "20 processes need at least one connection each" in err
