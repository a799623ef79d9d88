"""Session fixtures: real PostgreSQL servers (see tests/fixtures/pg.py).

`pg` is one server for the whole session (TCP on 127.0.0.1 and a unix socket);
`pg_factory(max_connections=20, reserved_connections=2, ...)` starts a private server with
the settings a test needs; `pgbouncer_factory(default_pool_size=2, ...)` starts a real
PgBouncer in front of `pg` (tests/fixtures/pgbouncer.py). Nothing is mocked, and nothing
skips for lack of a server: the fixtures start one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.pg import PgServer, start_server
from tests.fixtures.pgbouncer import PgBouncerFactory


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """One embedded PostgreSQL for the session, max_connections 100."""
    server = start_server(tmp_path_factory.mktemp("pg") / "data", max_connections=100)
    yield server
    server.server.stop()


@pytest.fixture(scope="session")
def pg_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PgServer]]:
    """Start private servers with custom settings; all are stopped at the end of the session."""
    started: list[PgServer] = []

    def factory(**settings: str | int | float | bool) -> PgServer:
        server = start_server(tmp_path_factory.mktemp("pgf") / "data", **settings)
        started.append(server)
        return server

    yield factory
    for server in started:
        with contextlib.suppress(Exception):
            server.server.stop()


@pytest.fixture
def pgbouncer_factory(
    pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgBouncerFactory]:
    """Start real PgBouncers in front of `pg`; all are stopped when the test ends."""
    factory = PgBouncerFactory(pg, tmp_path_factory.mktemp("pgbouncer"))
    yield factory
    factory.close()
