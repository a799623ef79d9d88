"""A database that is not serving (restarting, full, connection lost) answers 503, not 500.

`install()` registers `database_unavailable_handler` for psycopg's ``OperationalError``:
an error whose SQLSTATE says the server is not serving right now (class 08, 57P01-57P03,
53300), or a connection lost mid-query, becomes ``503`` + ``Retry-After`` - a client may
retry it - while a wrong query stays a 500. Real FastAPI on uvicorn, real PostgreSQL.
"""

from __future__ import annotations

import socket
import threading
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from tests.fixtures.apps import wait_until
from tests.fixtures.pg import PgServer
from tests.fixtures.uvicorn_server import serve

from poolwarden.guard import guard
from poolwarden.guard.asgi import database_unavailable, install


def _app(pg: PgServer, name: str, *, own_handler: bool = False) -> FastAPI:
    """An app whose /sleep runs a long query and /divide a wrong one, on a guarded pool."""
    pool = guard(
        AsyncConnectionPool(pg.dsn, min_size=1, max_size=2, open=False,
                            kwargs={"application_name": name, "autocommit": True}),
        name=name, registry=CollectorRegistry(),
    )  # fmt: skip

    async def lifespan(app: FastAPI) -> Any:
        async with pool:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/sleep")
    async def sleep() -> dict[str, str]:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(10)")
        return {"status": "ok"}

    @app.get("/divide")
    async def divide() -> dict[str, str]:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1/0")
        return {"status": "ok"}

    if own_handler:

        async def mine(request: Request, exc: Exception) -> Response:
            return JSONResponse({"error": "mine"}, status_code=500)

        app.add_exception_handler(psycopg.OperationalError, mine)
    install(app)
    return app


def _terminate_when_busy(pg: PgServer, name: str) -> threading.Thread:
    """Terminate `name`'s session once it runs pg_sleep (what a server restart does to it)."""

    def run() -> None:
        def busy() -> bool:
            with pg.connect() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND query LIKE 'SELECT pg_sleep%%' AND state = 'active'", (name,)
                ).fetchone()  # fmt: skip
            return bool(row and row[0])

        if wait_until(busy, timeout=10):
            with pg.connect() as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s", (name,)
                )  # fmt: skip

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_session_terminated_mid_query_answers_503_with_retry_after(pg: PgServer) -> None:
    """pg_terminate_backend (57P01, as in a restart) under a request: 503, Retry-After: 2."""
    name = f"pw-unavail-{uuid.uuid4().hex[:8]}"
    with serve(_app(pg, name)) as server:
        killer = _terminate_when_busy(pg, name)
        response = httpx.get(f"{server.url}/sleep", timeout=15)
        killer.join(timeout=10)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json() == {"error": "database_unavailable", "retry_after": 2}


def test_a_wrong_query_still_answers_500(pg: PgServer) -> None:
    """Division by zero is the query's fault, not an unavailable server: 500."""
    name = f"pw-unavail-{uuid.uuid4().hex[:8]}"
    with serve(_app(pg, name)) as server:
        response = httpx.get(f"{server.url}/divide", timeout=15)
    assert response.status_code == 500


def test_an_apps_own_handler_for_operational_error_is_kept(pg: PgServer) -> None:
    """install() does not replace a handler the app registered for OperationalError."""
    name = f"pw-unavail-{uuid.uuid4().hex[:8]}"
    with serve(_app(pg, name, own_handler=True)) as server:
        killer = _terminate_when_busy(pg, name)
        response = httpx.get(f"{server.url}/sleep", timeout=15)
        killer.join(timeout=10)
    assert (response.status_code, response.json()) == (500, {"error": "mine"})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_unavailable_tells_real_errors_apart(pg: PgServer) -> None:
    """Refused connect and terminated session: unavailable; a wrong query: not."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(f"postgresql://x@127.0.0.1:{_closed_port()}/x", connect_timeout=2)
    with pg.connect() as conn, pytest.raises(psycopg.Error) as wrong:
        conn.execute("SELECT 1/0")
    with psycopg.connect(pg.dsn, autocommit=True) as victim:
        with pg.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as terminated:
            victim.execute("SELECT 1")

    assert database_unavailable(refused.value)
    assert database_unavailable(terminated.value)
    assert not database_unavailable(wrong.value)
