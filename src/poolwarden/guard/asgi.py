"""ASGI middleware: a refused connection becomes ``503`` with ``Retry-After``; ``/metrics``.

``install(app)`` wires both halves into a Starlette or FastAPI app::

    app = FastAPI(lifespan=lifespan)
    install(app, registry=registry)

- ``PoolwardenMiddleware`` is a pure ASGI middleware (no ``BaseHTTPMiddleware``, so
  streaming and cancellation behave as without it). A `PoolSaturated` raised before the
  response started is answered ``503 Service Unavailable`` with ``Retry-After`` and a small
  JSON body; one raised after the response started is re-raised, since the status line is
  already on the wire. ``GET metrics_path`` answers the Prometheus text exposition.
- ``pool_saturated_handler`` is the same answer as a Starlette exception handler. Starlette
  sends unhandled exceptions to ``ServerErrorMiddleware``, the outermost layer, which
  answers 500 *before* re-raising: a middleware wrapped around the whole app from outside
  would come too late. The handler runs inside ``ExceptionMiddleware``, next to the route,
  so the 503 wins wherever the middleware sits.

The body never carries the exception's message: it names the pool, the reason and the
hint, never a DSN, a query or a connection parameter. Reference: docs/guard.md.
"""

from __future__ import annotations

import logging
import math

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poolwarden.errors import ConfigError, PoolSaturated

__all__ = [
    "PoolwardenMiddleware",
    "database_unavailable",
    "database_unavailable_handler",
    "install",
    "pool_saturated_handler",
    "saturated_response",
    "unavailable_response",
]

_log = logging.getLogger("poolwarden.guard")

# Used when an exception carries no usable hint (NaN, negative, infinite).
_DEFAULT_RETRY_AFTER = 1.0


def saturated_response(exc: PoolSaturated) -> Response:
    """Return the ``503`` answer to `exc`: ``Retry-After`` in whole seconds and a JSON body.

    ``Retry-After`` only takes whole seconds (RFC 9110), so the hint is rounded up and is at
    least 1; the body keeps the exact hint in seconds for clients that can use it.
    """
    hint = exc.retry_after
    if not (isinstance(hint, int | float) and math.isfinite(hint) and hint >= 0):
        hint = _DEFAULT_RETRY_AFTER
    body = {
        "error": "pool_saturated",
        "pool": str(exc.pool),
        "reason": str(exc.reason),
        "retry_after": round(float(hint), 3),
    }
    headers = {"Retry-After": str(max(1, math.ceil(hint))), "Cache-Control": "no-store"}
    return JSONResponse(body, status_code=503, headers=headers)


async def pool_saturated_handler(request: Request, exc: Exception) -> Response:
    """Answer a `PoolSaturated` with ``503``; register it for `PoolSaturated` in Starlette."""
    if not isinstance(exc, PoolSaturated):
        raise exc  # registered for another class by mistake: let Starlette report it
    _log.debug("pool %r refused %s %s: %s", exc.pool, request.method, request.url.path, exc.reason)
    return saturated_response(exc)


# SQLSTATEs that say "the server is not serving right now", not "your query is wrong":
# admin/crash shutdown, starting up, too many connections, and every connection exception.
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database is unavailable (restarting, full, connection lost).

    Reads psycopg's and asyncpg's ``sqlstate`` (class 08 and 57P01-57P03, 53300), also
    through SQLAlchemy's ``orig``; a psycopg ``OperationalError`` without a SQLSTATE is a
    connection lost mid-query. Libraries are recognised by module name, not imported.
    """
    for err in (exc, getattr(exc, "orig", None), exc.__cause__):
        if err is None:
            continue
        state = getattr(err, "sqlstate", None)
        if isinstance(state, str) and (state in _UNAVAILABLE_STATES or state.startswith("08")):
            return True
        kind = type(err)
        if kind.__module__.startswith("psycopg") and kind.__name__ == "OperationalError":
            return state is None
    return False


def unavailable_response(exc: BaseException, retry_after: int = 2) -> Response:
    """Return ``503`` + ``Retry-After`` for a database that is not serving (see above).

    Like the saturated answer, the body carries no exception text (it may hold a host).
    """
    body = {"error": "database_unavailable", "retry_after": retry_after}
    headers = {"Retry-After": str(retry_after), "Cache-Control": "no-store"}
    return JSONResponse(body, status_code=503, headers=headers)


async def database_unavailable_handler(request: Request, exc: Exception) -> Response:
    """Answer a database-unavailable error with ``503``; re-raise any other error (500)."""
    if not database_unavailable(exc):
        raise exc
    _log.debug("database unavailable for %s %s: %s", request.method, request.url.path, exc)
    return unavailable_response(exc)


def _saturation(exc: BaseException) -> PoolSaturated | None:
    """Return the `PoolSaturated` behind `exc`, also from a group made only of them.

    A handler that queries in parallel (``asyncio.TaskGroup``) raises an
    ``ExceptionGroup`` when every branch was refused; that is still a saturated pool.
    """
    if isinstance(exc, PoolSaturated):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(PoolSaturated)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, PoolSaturated) else None
    return None


def _route_path(scope: Scope) -> str:
    """Return the path below the app's mount point (``root_path``), as Starlette routes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


class PoolwardenMiddleware:
    """Turn `PoolSaturated` into ``503`` + ``Retry-After``; serve ``GET metrics_path``.

    `metrics_path` set to None serves no metrics; `registry` is the prometheus_client
    registry to expose (default: the global ``REGISTRY``, where ``guard()`` registers pools
    unless given another). Lifespan and websocket traffic pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics_path: str | None = "/metrics",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if metrics_path is not None and not metrics_path.startswith("/"):
            raise ConfigError(
                f"PoolwardenMiddleware: metrics_path={metrics_path!r} must start with '/' "
                "(or be None to serve no metrics)"
            )
        self.app = app
        self.metrics_path = metrics_path
        self.registry = REGISTRY if registry is None else registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer 503 for a refused connection, or serve the metrics."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._is_metrics(scope):
            await self._metrics()(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            saturated = _saturation(exc)
            # Once the status line is out a 503 cannot be sent; the server must see the
            # error to close the connection instead of ending a truncated body cleanly.
            if started or (saturated is None and not database_unavailable(exc)):
                raise
            if saturated is None:
                _log.debug("database unavailable for %s: %s", scope["path"], exc)
                await unavailable_response(exc)(scope, receive, send)
                return
            _log.debug("pool %r refused %s: %s", saturated.pool, scope["path"], saturated.reason)
            await saturated_response(saturated)(scope, receive, send)

    def _is_metrics(self, scope: Scope) -> bool:
        return (
            self.metrics_path is not None
            and scope.get("method") in ("GET", "HEAD")
            and _route_path(scope) == self.metrics_path
        )

    def _metrics(self) -> Response:
        # Collected on the event loop, as prometheus_client's own ASGI app does: the guard's
        # collector only reads counters and the pools' in-memory stats.
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def install(
    app: Starlette,
    *,
    metrics_path: str | None = "/metrics",
    registry: CollectorRegistry | None = None,
    unavailable: bool = True,
) -> None:
    """Add `PoolwardenMiddleware` and the `PoolSaturated` handler to a Starlette/FastAPI app.

    With `unavailable` (the default) a psycopg ``OperationalError`` that says the database
    is not serving (restarting, full, connection lost) is answered ``503`` + ``Retry-After``
    too, unless the app has its own handler for that class.

    Call before the app starts serving (Starlette refuses middleware afterwards).
    """
    app.add_middleware(PoolwardenMiddleware, metrics_path=metrics_path, registry=registry)
    app.add_exception_handler(PoolSaturated, pool_saturated_handler)
    if unavailable:
        import psycopg

        # An app's own handler for the class stays: it may call database_unavailable().
        if psycopg.OperationalError not in app.exception_handlers:
            app.add_exception_handler(psycopg.OperationalError, database_unavailable_handler)
