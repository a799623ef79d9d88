"""The drill's reference API service: an orders API on a psycopg pool, guard off or on.

``create_app(AppConfig(dsn))`` builds the FastAPI app; `AppProcess.start(config)` runs it
as one replica in its own process (``python -m poolwarden.drill._demo_main --port N``, the
config in the ``POOLWARDEN_DEMOAPP`` environment variable so the DSN's password never shows
in ``ps``). ``/metrics`` exports ``http_server_request_duration_seconds`` (OTel HTTP names,
every final status, the guard's 503 and unhandled 500s included) and the pool's
``db_client_connection_*`` gauges, guarded or not. ``POST /_drill/fault`` switches on the
app-side bugs the drill replays: connection leaks and transactions left open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poolwarden._dsn import redact_dsn
from poolwarden.drill import _demo_schema as sql
from poolwarden.drill._demo_schema import Database, Fault, create_order, create_schema, is_number
from poolwarden.errors import ConfigError
from poolwarden.guard import asgi

__all__ = ["AppConfig", "AppProcess", "create_app", "create_schema"]

ENV_VAR = "POOLWARDEN_DEMOAPP"
_START_TIMEOUT = 20.0
# OTel's advised buckets for http.server.request.duration (seconds).
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNTIMED_PATHS = frozenset({"/metrics", "/healthz"})
_INT4_MAX, _INT8_MAX = 2**31 - 1, 2**63 - 1  # the columns' ranges: larger ids are a 422


@dataclass(frozen=True, slots=True)
class AppConfig:
    """One replica's settings; the drill passes it to the child process as JSON."""

    dsn: str
    name: str = "orders-api"
    pool_min: int = 2
    pool_max: int = 10
    pool_timeout: float = 5.0
    guard: bool = False
    guard_timeout: float = 1.0
    replicas: int = 1
    leak_threshold: float | None = None
    pool_max_lifetime: float = 3600.0  # psycopg_pool closes a connection this old on return
    # What a real handler does while it holds its connection besides querying (rendering,
    # a call to another service): the requests' demand for connections.
    work_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.dsn or not self.name:
            raise ConfigError("demo app: dsn and name must not be empty")
        if not 0 <= self.pool_min <= self.pool_max or self.pool_max < 1:
            raise ConfigError(
                f"demo app {self.name!r}: pool_min={self.pool_min} pool_max={self.pool_max}; "
                "need 0 <= pool_min <= pool_max and pool_max >= 1"
            )
        for key in ("pool_timeout", "guard_timeout", "leak_threshold", "pool_max_lifetime"):
            value = getattr(self, key)
            if value is not None and not (is_number(value) and value > 0):
                raise ConfigError(f"demo app {self.name!r}: {key}={value!r} must be positive")
        if not (is_number(self.work_ms) and 0 <= self.work_ms <= 60_000):
            raise ConfigError(f"demo app {self.name!r}: work_ms={self.work_ms!r} must be 0-60000")
        if self.replicas < 1:
            raise ConfigError(f"demo app {self.name!r}: replicas={self.replicas} must be >= 1")

    def __repr__(self) -> str:
        # The DSN may hold a password; a repr ends up in logs and tracebacks.
        fields = dataclasses.asdict(self) | {"dsn": redact_dsn(self.dsn)}
        return "AppConfig(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    def to_json(self) -> str:
        """Return the config as a JSON object (the DSN included: never log it)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AppConfig:
        """Parse `to_json`'s output; raise `ConfigError` naming the bad field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"demo app config: not JSON ({exc.msg} at {exc.pos})") from None
        if not isinstance(data, dict):
            raise ConfigError("demo app config: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"demo app config: unknown field {unknown[0]!r}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"demo app config: {exc}") from None


# -- HTTP ------------------------------------------------------------------------------------


class HttpMetricsMiddleware:
    """Time every request into `histogram` by method, route template and final status.

    Pure ASGI and added last, so it sits outside every other middleware: it sees the
    guard's 503 and the status of each handled error; an exception escaping before the
    response started is counted as the 500 the server will send.
    """

    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app and observe the request's duration once it is done."""
        if scope["type"] != "http" or scope["path"] in _UNTIMED_PATHS:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            method = scope["method"] if scope["method"] in _HTTP_METHODS else "_OTHER"
            # The template, not the path: one series per route, whatever the ids.
            route = getattr(scope.get("route"), "path", "")
            self.histogram.labels(method, route, str(status)).observe(time.perf_counter() - started)


class OrderItem(BaseModel):
    """One line of a new order."""

    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(ge=1, le=1000)
    price_cents: int = Field(ge=0, le=10_000_000)


class NewOrder(BaseModel):
    """The body of ``POST /orders``."""

    customer_id: int = Field(ge=1, le=_INT4_MAX)
    items: list[OrderItem] = Field(min_length=1, max_length=100)


def _order(row: tuple[Any, ...]) -> dict[str, Any]:
    oid, customer_id, status, total_cents, created_at = row
    return {
        "id": oid, "customer_id": customer_id, "status": status,
        "total_cents": total_cents, "created_at": created_at.isoformat(),
    }  # fmt: skip


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _order_routes(app: FastAPI, db: Database) -> None:
    @app.get("/orders")
    async def list_orders(
        customer_id: Annotated[int | None, Query(ge=1, le=_INT4_MAX)] = None,
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
    ) -> dict[str, Any]:
        params = {"customer_id": customer_id, "status": status, "limit": limit}
        async with db.connection() as conn:
            rows = await (await conn.execute(sql.LIST_ORDERS, params)).fetchall()
        return {"orders": [_order(row) for row in rows]}

    @app.get("/orders/{order_id}", response_model=None)
    async def get_order(
        order_id: Annotated[int, Path(ge=1, le=_INT8_MAX)],
    ) -> dict[str, Any] | JSONResponse:
        async with db.connection() as conn:
            row = await (await conn.execute(sql.GET_ORDER, (order_id,))).fetchone()
            items = await (await conn.execute(sql.GET_ITEMS, (order_id,))).fetchall()
        if row is None:
            return _error(404, f"order {order_id} not found")
        lines = [{"sku": s, "qty": q, "price_cents": p} for s, q, p in items]
        return _order(row) | {"items": lines}

    @app.post("/orders", status_code=201, response_model=None)
    async def post_order(order: NewOrder) -> dict[str, Any] | JSONResponse:
        lines = [(item.sku, item.qty, item.price_cents) for item in order.items]
        order_id = await create_order(db, order.customer_id, lines)
        if order_id is None:
            return _error(404, f"customer {order.customer_id} not found")
        return {"id": order_id}

    @app.get("/reports/revenue")
    async def revenue(days: Annotated[int, Query(ge=1, le=3650)] = 30) -> dict[str, Any]:
        async with db.connection() as conn:
            if db.fault.kind == "slow_report":
                # The report's plan regressed: the server runs it for `seconds` (waiting, so
                # a 2-core drill box keeps its CPU for the load and the watch).
                await conn.execute(sql.SLOW_REPORT, (db.fault.seconds,))
            rows = await (await conn.execute(sql.REVENUE, (days,))).fetchall()
        by_day = [
            {"day": d.isoformat(), "status": s, "orders": n, "revenue_cents": int(r)}
            for d, s, n, r in rows
        ]
        return {
            "days": days, "orders": sum(n for _, _, n, _ in rows),
            "revenue_cents": sum(int(r) for *_, r in rows), "rows": by_day,
        }  # fmt: skip


def _service_routes(app: FastAPI, db: Database) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}  # no database: a replica must start while the server refuses

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(db.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/_drill/fault", include_in_schema=False, response_model=None)
    async def set_fault(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            fault = Fault.parse(json.loads(await request.body()))
        except json.JSONDecodeError:
            return _error(400, 'fault: the body is not JSON; send {"kind": "leak", "rate": 0.5}')
        except ValueError as exc:
            return _error(400, f"fault: {exc}")
        db.set_fault(fault)
        return dataclasses.asdict(fault) | {"leaked": len(db.leaked)}


def _error_handlers(app: FastAPI, db: Database) -> None:
    async def pool_timeout(request: Request, exc: Exception) -> Response:
        state = (db.source or db.guarded.guard).pool_state()
        return _error(
            500,
            f"pool {db.config.name!r}: no connection within {db.config.pool_timeout:g} s "
            f"({state.used} used, {state.idle} idle, max {state.max}, {state.pending} "
            "waiting); put the guard in front to refuse fast with 503 instead of waiting",
        )

    async def database_error(request: Request, exc: Exception) -> Response:
        if db.config.guard and asgi.database_unavailable(exc):
            return asgi.unavailable_response(exc)  # restarting or full: retry, don't page
        reason = redact_dsn((str(exc).strip().splitlines() or ["no message"])[0])
        return _error(500, f"pool {db.config.name!r}: database error: {reason}; check the server")

    # Starlette picks a handler by the exception's MRO: the guard's PoolSaturated (also a
    # PoolTimeout) still reaches the 503 handler that asgi.install registers.
    app.add_exception_handler(PoolTimeout, pool_timeout)
    app.add_exception_handler(psycopg.OperationalError, database_error)


def create_app(config: AppConfig, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the orders API for `config`, its metrics in `registry` (default: a new one)."""
    registry = CollectorRegistry() if registry is None else registry
    db = Database(config, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open()
        try:
            yield
        finally:
            await db.close()

    app = FastAPI(title=f"poolwarden demo: {config.name}", lifespan=lifespan)
    app.state.db = db
    _order_routes(app, db)
    _service_routes(app, db)
    _error_handlers(app, db)
    if config.guard:
        asgi.install(app, registry=registry)
    histogram = Histogram(
        "http_server_request_duration_seconds", "Duration of HTTP server requests.",
        ["http_request_method", "http_route", "http_response_status_code"],
        registry=registry, buckets=_HTTP_BUCKETS,
    )  # fmt: skip
    app.add_middleware(HttpMetricsMiddleware, histogram=histogram)  # added last: outermost
    return app


# AppProcess lives in its own module (the process plumbing); it is part of this API.
from poolwarden.drill._demo_process import AppProcess  # noqa: E402
