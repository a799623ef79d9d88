"""The ASGI middleware in a real FastAPI app, served by uvicorn on loopback, on a real pool.

Every app here guards a psycopg_pool ``AsyncConnectionPool`` on the session's embedded
PostgreSQL and opens it in its lifespan. Requests go over TCP with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool
from tests.fixtures.guard_metrics import DB_CLIENT_FAMILIES
from tests.fixtures.pg import PgServer
from tests.fixtures.uvicorn_server import UvicornServer, serve

from poolwarden.errors import ConfigError, PoolSaturated
from poolwarden.guard import guard
from poolwarden.guard.asgi import (
    PoolwardenMiddleware,
    install,
    pool_saturated_handler,
    saturated_response,
)

Wiring = Literal["install", "middleware", "handler", "outside"]
NINE = DB_CLIENT_FAMILIES
BODY_KEYS = {"error", "pool", "reason", "retry_after"}


@dataclass
class Counters:
    """What the handlers did, as seen on the server (ints: updated on one event loop)."""

    started: int = 0
    completed: int = 0
    cancelled: int = 0


@dataclass
class Api:
    """A served app with its guarded pool, its registry and its handlers' counters."""

    server: UvicornServer
    pool: Any
    registry: CollectorRegistry
    counters: Counters
    application_name: str
    outer: Any  # the outermost ASGI layer uvicorn runs (a Recorder or Timer, or the app)

    def rejections(self) -> dict[str, int]:
        """Return the guard's refusals so far, by reason."""
        return dict(self.pool.guard.metrics.rejections)


def guarded(pg: PgServer, registry: CollectorRegistry, *, max_size: int = 4, **opts: Any) -> Any:
    """Return a guarded, not yet opened pool named 'api' with a unique application_name."""
    app_name = f"pw-asgi-{uuid.uuid4().hex[:8]}"
    pool = AsyncConnectionPool(
        pg.dsn, min_size=1, max_size=max_size, open=False, kwargs={"application_name": app_name}
    )
    options = {"max_waiting": 2, "timeout": 0.5, **opts}
    return guard(pool, name="api", registry=registry, **options)


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _sleep_on_pool(pool: Any, counters: Counters) -> dict[str, str]:
    counters.started += 1
    try:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(0.3)")
    except asyncio.CancelledError:
        counters.cancelled += 1
        raise
    counters.completed += 1
    return {"status": "ok"}


def build_app(pool: Any, registry: CollectorRegistry, counters: Counters, wiring: Wiring) -> Any:
    """Return the test API, wired to poolwarden the way `wiring` says."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=10)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)
    app.state.pool, app.state.counters = pool, counters
    _add_slow_routes(app, pool, counters)
    _add_refused_routes(app, pool)
    if wiring == "install":
        install(app, registry=registry)
    elif wiring == "middleware":
        app.add_middleware(PoolwardenMiddleware, registry=registry)
    elif wiring == "handler":
        app.add_exception_handler(PoolSaturated, pool_saturated_handler)
    elif wiring == "outside":
        return PoolwardenMiddleware(app, registry=registry)
    return app


async def connection(request: Request) -> AsyncIterator[Any]:
    """Lend the app's pooled connection to one request: FastAPI's dependency idiom."""
    request.app.state.counters.started += 1
    async with request.app.state.pool.connection() as conn:
        yield conn


def _add_slow_routes(app: FastAPI, pool: Any, counters: Counters) -> None:
    """Routes holding a connection for 0.3 s: through a dependency, and in a handler that
    stops its work when the client goes away."""

    @app.get("/slow")
    async def slow(conn: Annotated[Any, Depends(connection)]) -> dict[str, str]:
        await conn.execute("SELECT pg_sleep(0.3)")
        counters.completed += 1
        return {"status": "ok"}

    @app.get("/slow-cancellable")
    async def slow_cancellable(request: Request) -> dict[str, str]:
        # uvicorn never cancels a handler whose client left: watch for it here.
        work = asyncio.ensure_future(_sleep_on_pool(pool, counters))
        watcher = asyncio.ensure_future(_until_disconnected(request))
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        work.cancel()  # no effect once it is done
        with contextlib.suppress(asyncio.CancelledError):
            return await work
        return {"status": "client gone"}


def _add_refused_routes(app: FastAPI, pool: Any) -> None:
    """Routes that take a second connection while holding the only one (max_size=1,
    max_waiting=0), so the guard refuses it: in the handler, in a task group, mid-stream."""

    @app.get("/nested")
    async def nested() -> dict[str, str]:
        async with pool.connection(), pool.connection():
            return {"status": "unreachable"}

    @app.get("/parallel")
    async def parallel() -> dict[str, str]:
        async with pool.connection(), asyncio.TaskGroup() as group:
            for _ in range(2):
                group.create_task(_acquire(pool))
        return {"status": "unreachable"}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial\n"
            async with pool.connection(), pool.connection():
                yield b"unreachable\n"

        return StreamingResponse(body(), media_type="text/plain")


async def _acquire(pool: Any) -> None:
    async with pool.connection():
        await asyncio.sleep(0)


class Recorder:
    """An outermost ASGI layer that records what escapes the app, then re-raises it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.escaped: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            self.escaped.append(exc)
            raise


class Timer:
    """An outermost ASGI layer that times each request from arrival to its status line."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.answers: list[tuple[int, float]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        arrived = time.perf_counter()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.answers.append((message["status"], time.perf_counter() - arrived))
            await send(message)

        await self.app(scope, receive, timed_send if scope["type"] == "http" else send)


@contextlib.contextmanager
def running(
    pg: PgServer, wiring: Wiring = "install", *, outer: Any = None, **opts: Any
) -> Iterator[Api]:
    """Serve a fresh app with a fresh registry and pool, inside `outer` if given."""
    registry = CollectorRegistry()
    pool = guarded(pg, registry, **opts)
    counters = Counters()
    app = build_app(pool, registry, counters, wiring)
    top = outer(app) if outer else app
    with serve(top) as server:
        yield Api(server, pool, registry, counters, pool.kwargs["application_name"], top)


async def _timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    """GET `path`; time it from the request's first byte on the wire to the response headers.

    Connection set-up is left out: 30 connections opened at once by a client sharing this
    process (and its GIL) with the server take tens of ms that say nothing about the app.
    """
    marks: dict[str, float] = {}

    async def trace(event: str, info: dict[str, Any]) -> None:
        marks.setdefault(event, time.perf_counter())

    response = await client.get(path, extensions={"trace": trace})
    sent = marks["http11.send_request_headers.started"]
    return response, marks["http11.receive_response_headers.complete"] - sent


async def _burst(url: str, path: str, n: int) -> list[tuple[httpx.Response, float]]:
    """Send `n` requests at once, each on its own connection; time each one (`_timed_get`)."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as client:
        return await asyncio.wait_for(
            asyncio.gather(*(_timed_get(client, path) for _ in range(n))), 30
        )


def _assert_is_503(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    body: dict[str, Any] = response.json()
    assert set(body) == BODY_KEYS
    assert body["error"] == "pool_saturated"
    assert body["pool"] == "api"
    assert body["reason"] in ("queue_full", "deadline", "shed")
    assert isinstance(body["retry_after"], float)
    assert int(retry_after) >= body["retry_after"] > 0
    return body


# --- normal service and overload ------------------------------------------------------------


def test_normal_requests_answer_200(pg: PgServer) -> None:
    """Below capacity every request is served: 200 with the handler's JSON."""
    with running(pg) as api, httpx.Client(base_url=api.server.url, timeout=10) as client:
        for _ in range(3):
            response = client.get("/slow")
            assert response.status_code == 200
            assert response.json() == {"status": "ok"}
    assert api.counters.completed == 3


def test_overload_answers_503_with_retry_after_within_milliseconds(pg: PgServer) -> None:
    """30 concurrent requests on 4 connections + 2 queue places: the excess gets 503 at once.

    Each 503 carries an integer Retry-After and the small JSON body, quotes no DSN and no
    SQL, and is answered within milliseconds, far below the 0.5 s pool timeout: the server
    sends its status line within a few ms of the request's arrival, and the client sees the
    answer well under 100 ms (median) after sending the request.
    """
    with running(pg, outer=Timer) as api:
        results = asyncio.run(_burst(api.server.url, "/slow", 30))
    ok = [r for r, _ in results if r.status_code == 200]
    rejected = [(r, t) for r, t in results if r.status_code != 200]
    assert len(ok) + len(rejected) == 30
    assert 4 <= len(ok) <= 6  # 4 connections, then at most the 2 queued
    for response, _ in rejected:
        _assert_is_503(response)
        for secret in ("postgresql://", "127.0.0.1", "pg_sleep", "SELECT", "application_name"):
            assert secret not in response.text
    client = [t for _, t in rejected]
    assert statistics.median(client) < 0.5, client  # never the pool timeout
    server = [t for status, t in api.outer.answers if status == 503]
    assert len(server) == len(rejected)
    # Refused at once, not after the 0.5 s timeout: generous bounds for a loaded CI box.
    assert statistics.median(server) < 0.05, server
    assert max(server) < 0.25, server


def test_metrics_route_shows_the_nine_instruments_and_counts_every_503(pg: PgServer) -> None:
    """/metrics on the app shows the nine OTel instruments for pool 'api', matching the traffic.

    After a burst: rejections by reason equal the 503 bodies' reasons (queue_full first of
    all), the wait/use histograms counted one sample per served request, nothing is in use or
    pending, and the gauges show the pool's configuration.
    """
    with running(pg) as api:
        results = asyncio.run(_burst(api.server.url, "/slow", 30))
        scrape = httpx.get(f"{api.server.url}/metrics", timeout=10)
    assert scrape.status_code == 200
    assert scrape.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    samples = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pool_name"))): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
        if s.labels.get("pool_name") == "api"
    }
    assert {name for name, _ in samples} >= set(NINE)
    served = sum(r.status_code == 200 for r, _ in results)
    bodies = [_assert_is_503(r) for r, _ in results if r.status_code != 200]
    for reason in ("queue_full", "deadline", "shed"):
        got = samples[("poolwarden_pool_rejections_total", (("reason", reason),))]
        assert got == sum(b["reason"] == reason for b in bodies), reason
    assert samples[("poolwarden_pool_rejections_total", (("reason", "queue_full"),))] >= 24
    assert samples[("db_client_connection_wait_time_seconds_count", ())] == served
    assert samples[("db_client_connection_use_time_seconds_count", ())] == served
    assert samples[("db_client_connection_create_time_seconds_count", ())] >= 1
    assert samples[("db_client_connection_count", (("state", "used"),))] == 0
    assert samples[("db_client_connection_pending_requests", ())] == 0
    assert samples[("db_client_connection_max", ())] == 4
    assert samples[("db_client_connection_idle_min", ())] == 1


# --- client disconnects ---------------------------------------------------------------------


async def _disconnecting_clients(url: str, path: str, n: int, concurrency: int) -> list[str]:
    """Send `n` requests that give up after 50 ms, `concurrency` at a time; return outcomes."""
    gate = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(0.05, connect=5.0, pool=5.0)

    async def one(client: httpx.AsyncClient) -> str:
        async with gate:
            try:
                response = await client.get(path)
            except httpx.ReadTimeout:
                return "disconnected"
            return str(response.status_code)

    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        return await asyncio.wait_for(asyncio.gather(*(one(client) for _ in range(n))), 60)


def _quiesced(api: Api, n: int) -> bool:
    c = api.counters
    snap = api.pool.guard.snapshot()
    settled = c.completed + c.cancelled + sum(api.rejections().values())
    return settled == n and snap.admission.in_flight == 0 and snap.admission.waiting == 0


def _busy_sessions(pg: PgServer, application_name: str) -> list[str]:
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = %s "
            "AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')",
            (application_name,),
        ).fetchall()
    return [str(state) for (state,) in rows]


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.mark.parametrize(
    ("path", "cancelled"),
    [("/slow", False), ("/slow-cancellable", True)],
    ids=["uvicorn-runs-handler-to-completion", "handler-cancels-on-disconnect"],
)
def test_client_disconnects_leak_nothing(pg: PgServer, path: str, cancelled: bool) -> None:
    """200 clients that hang up after 50 ms leave nothing checked out anywhere.

    uvicorn (h11) does not cancel a handler whose client went away: ``/slow`` runs every
    admitted request to completion and drops the response. ``/slow-cancellable`` watches
    ``receive()`` for ``http.disconnect`` and cancels its work, so cancellations land while
    holding a connection mid-query (and, depending on timing, while queued in the guard).
    Either way, once the handlers settle, every request is accounted for (completed,
    cancelled or refused), the guard holds and queues nothing, the pool has every
    connection back, and pg_stat_activity shows no session of the pool active or idle in
    transaction.
    """
    with running(pg) as api:
        outcomes = asyncio.run(_disconnecting_clients(api.server.url, path, 200, 8))
        assert _wait_for(lambda: _quiesced(api, 200), 15), (api.counters, api.rejections())
        stats = api.pool.get_stats()
        assert _wait_for(lambda: not _busy_sessions(pg, api.application_name), 5)
        c = api.counters
    assert set(outcomes) <= {"disconnected", "503"}
    assert outcomes.count("disconnected") >= 10, outcomes
    assert c.started == 200
    refused = sum(api.rejections().values())
    # Some refusals reach clients that already left: queued past their 50 ms, then shed.
    assert refused >= outcomes.count("503")
    assert c.completed + c.cancelled + refused == 200
    if cancelled:
        lent = stats.get("requests_num", 0)  # connections the pool handed out
        assert lent > c.completed + 10  # cancelled while holding a connection, mid-query
    else:
        assert c.cancelled == 0
    assert stats["pool_available"] == stats["pool_size"], stats
    assert stats["requests_waiting"] == 0


# --- where the 503 comes from ---------------------------------------------------------------


@pytest.mark.parametrize("wiring", ["install", "middleware", "handler"])
def test_saturation_in_an_endpoint_ends_as_503_however_it_is_wired(
    pg: PgServer, wiring: Wiring
) -> None:
    """A refusal raised in an endpoint becomes the same 503 through install(), the middleware
    alone (which ExceptionMiddleware passes it to) or the exception handler alone."""
    with running(pg, wiring, max_size=1, max_waiting=0) as api:
        response = httpx.get(f"{api.server.url}/nested", timeout=10)
    body = _assert_is_503(response)
    assert body["reason"] == "queue_full"
    assert api.rejections()["queue_full"] == 1


def test_a_group_of_refusals_from_a_task_group_ends_as_503(pg: PgServer) -> None:
    """An ExceptionGroup made only of refusals (parallel queries in a TaskGroup) is a 503 too."""
    with running(pg, max_size=1, max_waiting=0) as api:
        response = httpx.get(f"{api.server.url}/parallel", timeout=10)
    assert _assert_is_503(response)["reason"] == "queue_full"


def test_middleware_wrapped_outside_starlette_comes_too_late_without_the_handler(
    pg: PgServer,
) -> None:
    """Wrapped around the whole app, the middleware sees the refusal only after Starlette's
    ServerErrorMiddleware has sent 500; it re-raises instead of answering twice.

    This is why install() also registers the exception handler.
    """
    with running(pg, "outside", outer=Recorder, max_size=1, max_waiting=0) as api:
        response = httpx.get(f"{api.server.url}/nested", timeout=10)
        metrics = httpx.get(f"{api.server.url}/metrics", timeout=10)
    assert response.status_code == 500
    assert len(api.outer.escaped) == 1
    assert isinstance(api.outer.escaped[0], PoolSaturated)
    assert metrics.status_code == 200  # the metrics route works from outside all the same


def _plain_asgi_app(pool: Any) -> Any:
    """Return an ASGI app without Starlette whose every request is refused a connection."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await pool.open(wait=True, timeout=10)
                await send({"type": "lifespan.startup.complete"})
            await pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        async with pool.connection(), pool.connection():
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"unreachable"})

    return app


def test_middleware_wrapped_around_a_plain_asgi_app_answers_503(pg: PgServer) -> None:
    """Around an ASGI app with no Starlette inside, nothing answers before the middleware:
    the refusal becomes the 503, and the metrics route is served from the same wrapper."""
    registry = CollectorRegistry()
    pool = guarded(pg, registry, max_size=1, max_waiting=0)
    with serve(PoolwardenMiddleware(_plain_asgi_app(pool), registry=registry)) as server:
        response = httpx.get(f"{server.url}/anything", timeout=10)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10)
    assert _assert_is_503(response)["reason"] == "queue_full"
    assert 'poolwarden_pool_rejections_total{pool_name="api",reason="queue_full"} 1.0' in (
        metrics.text
    )


def test_saturation_after_the_response_started_is_reraised(pg: PgServer) -> None:
    """A refusal inside a streaming body, after the 200 went out, is re-raised to the server,
    which cuts the connection: the client sees a truncated response, never a 503."""
    with running(pg, "middleware", outer=Recorder, max_size=1, max_waiting=0) as api:
        with (
            httpx.Client(base_url=api.server.url, timeout=10) as client,
            client.stream("GET", "/stream") as response,
        ):
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()
        assert _wait_for(lambda: bool(api.outer.escaped), 5)
    assert len(api.outer.escaped) == 1
    assert isinstance(api.outer.escaped[0], PoolSaturated)


# --- the metrics route and the 503 answer -------------------------------------------------


def test_metrics_path_is_configurable_and_can_be_turned_off(pg: PgServer) -> None:
    """metrics_path moves the route (GET and HEAD); None serves none, leaving the path to the app."""
    registry = CollectorRegistry()
    app = FastAPI()
    app.add_middleware(PoolwardenMiddleware, metrics_path="/internal/metrics", registry=registry)
    off = FastAPI()
    off.add_middleware(PoolwardenMiddleware, metrics_path=None, registry=registry)
    with serve(app) as server, serve(off) as server_off:
        moved = httpx.get(f"{server.url}/internal/metrics", timeout=10)
        head = httpx.head(f"{server.url}/internal/metrics", timeout=10)
        old = httpx.get(f"{server.url}/metrics", timeout=10)
        none = httpx.get(f"{server_off.url}/metrics", timeout=10)
    assert moved.status_code == 200
    assert moved.headers["content-type"].startswith("text/plain; version=")
    assert head.status_code == 200
    assert head.content == b""
    assert old.status_code == 404
    assert none.status_code == 404


def test_a_metrics_path_without_leading_slash_is_refused_with_the_fix() -> None:
    """metrics_path must start with '/'; the error names the value and the alternatives."""
    with pytest.raises(ConfigError, match=r"metrics_path='metrics' must start with '/'"):
        PoolwardenMiddleware(FastAPI(), metrics_path="metrics")


@pytest.mark.parametrize(
    ("hint", "header", "body"),
    [(0.05, "1", 0.05), (1.0, "1", 1.0), (1.2, "2", 1.2), (2.3456, "3", 2.346),
     (float("nan"), "1", 1.0), (-3.0, "1", 1.0), (float("inf"), "1", 1.0)],
)  # fmt: skip
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    hint: float, header: str, body: float
) -> None:
    """Retry-After is ceil(retry_after), at least 1; the body keeps the hint in seconds,
    and an unusable hint (NaN, negative, infinite) becomes 1 s."""
    exc = PoolSaturated("pool 'api': postgresql://u:secret@db/x", pool="api",
                        reason="queue_full", retry_after=hint)  # fmt: skip
    response = saturated_response(exc)
    assert response.status_code == 503
    assert response.headers["retry-after"] == header
    assert b"secret" not in response.body
    assert b'"retry_after":' + repr(body).encode() in response.body
