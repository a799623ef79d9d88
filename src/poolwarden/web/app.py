"""The dashboard of ``poolwarden watch --web HOST:PORT``: a Starlette app over a `Watcher`.

`create_app(watcher, token=None)` serves the page (``/``, plain HTML, CSS and JS shipped
in ``static/``), a JSON API (``/api/state``, ``/api/series``, ``/api/incidents/{id}``)
and ``/metrics``, what is watched re-exported as Prometheus text by a `WatchCollector` on
a fresh registry. Everything is read from `Watcher.state()` and `Watcher.read_series()`,
immutable snapshots taken under the watcher's lock: the loop thread is never raced. With a
token, every route wants ``Authorization: Bearer <token>`` (401 otherwise); `web_token`
refuses a non-loopback bind without one. No response carries a DSN password.
Reference: docs/dashboard.md.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError
from poolwarden.watch.loop import Watcher
from poolwarden.watch.series import SeriesStore
from poolwarden.web._metrics import WatchCollector
from poolwarden.web._state import incident_json, record_dashboard, state_json

__all__ = ["BearerAuth", "create_app", "is_loopback", "parse_bind", "serving", "web_token"]

_STATIC = ("index.html", "dashboard.js", "dashboard.css")
_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript", "css": "text/css"}
# The page loads nothing from elsewhere: no CDN, no inline script.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


# --- binding and the token ------------------------------------------------------------------


def parse_bind(text: str) -> tuple[str, int]:
    """Return (host, port) from ``HOST:PORT`` (``[::1]:8080`` for IPv6); ConfigError if bad."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--web {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere: not loopback


def web_token(host: str, token: str | None) -> str | None:
    """Return the token to require (None: none); ConfigError for a public bind without one."""
    token = (token or "").strip() or None
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--web {host}: not a loopback address, so a token is required; "
            "pass --web-token or set POOLWARDEN_WEB_TOKEN"
        )
    return token


class BearerAuth:
    """ASGI middleware: answer 401 unless ``Authorization: Bearer <token>`` matches."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self._token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            # compare_digest: the time taken does not tell how much of the token matched.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self._token):
                body = {"error": "unauthorized: send 'Authorization: Bearer <token>'"}
                headers = {"WWW-Authenticate": 'Bearer realm="poolwarden"'}
                await JSONResponse(body, 401, headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- the app --------------------------------------------------------------------------------


def create_app(watcher: Watcher, *, token: str | None = None) -> ASGIApp:
    """Return the dashboard app over `watcher` (adds `record_dashboard` to its recorders)."""
    watcher.add_recorder(record_dashboard)
    static = {name: resources.files(__package__).joinpath("static", name).read_bytes()
              for name in _STATIC}  # fmt: skip
    registry = CollectorRegistry()
    registry.register(WatchCollector(watcher))

    def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in static:
            return JSONResponse({"error": f"no static file {name!r}"}, 404)
        return Response(static[name], media_type=_TYPES[name.rpartition(".")[2]], headers=_HEADERS)

    def state(request: Request) -> Response:
        return _json(state_json(watcher.state(), watcher))

    def series(request: Request) -> Response:
        query = request.query_params
        try:
            seconds = float(query.get("seconds", "300"))
            labels = _labels(query.get("labels", ""))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        if not 0 < seconds <= watcher.series.max_age_s:
            limit = f"{watcher.series.max_age_s:g}"
            return JSONResponse({"error": f"seconds must be in (0, {limit}]"}, 400)
        name = query.get("name", "")
        obs = watcher.state().observation  # taken first: read_series holds the lock
        now = obs.at if obs is not None else 0.0
        found = watcher.read_series(lambda s: _windows(s, name, labels, seconds, now))
        return _json({"name": name, "seconds": seconds, "series": found})

    def incident(request: Request) -> Response:
        wanted = request.path_params["id"]
        snap = watcher.state()
        found = next(
            (i for i in (*snap.open_incidents, *snap.recent_incidents) if i.id == wanted), None
        )
        found = found or watcher.store.get_incident(wanted)  # the store is thread-safe
        if found is None:
            return JSONResponse({"error": f"no incident {wanted!r}"}, 404)
        return _json(incident_json(found))

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # Plain functions: Starlette runs them in its thread pool, off the event loop.
    app: ASGIApp = Starlette(
        routes=[
            Route("/", page),
            Route("/static/{name}", page),
            Route("/api/state", state),
            Route("/api/series", series),
            Route("/api/incidents/{id}", incident),
            Route("/metrics", metrics),
        ]
    )
    return BearerAuth(app, token) if token else app


def _json(data: Any) -> Response:
    """Return `data` as JSON: inf/NaN as null, and any DSN password redacted on the way out."""
    text = json.dumps(_finite(data), separators=(",", ":"))
    return Response(redact_dsn(text), media_type="application/json", headers=_HEADERS)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _labels(text: str) -> dict[str, str]:
    """Parse ``k=v,k=v`` into a label matcher."""
    pairs = [p for p in text.split(",") if p.strip()]
    if any("=" not in p for p in pairs):
        raise ValueError(f"labels={text!r}: expected name=value,name=value")
    return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}


def _windows(
    store: SeriesStore, name: str, match: Mapping[str, str], seconds: float, now: float
) -> Any:
    """Copy the windows of `name` whose labels hold `match` (runs under the watcher's lock)."""
    if not name:
        return [{"name": n} for n in store.names()]
    if now <= 0:
        return []  # no tick yet
    return [
        {
            "labels": dict(labels),
            "points": [list(p) for p in store.window(name, labels, seconds, now)],
        }
        for labels in store.label_sets(name)
        if all(labels.get(k) == v for k, v in match.items())
    ]


# --- serving ----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(app: ASGIApp, host: str, port: int, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a daemon thread for the block; yield its URL.

    ConfigError (one line) when the address cannot be bound or the server does not start
    within `timeout`; on exit the server is asked to stop and waited for (bounded).
    """
    import uvicorn  # the `asgi` extra; imported here so the module loads without it

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=3)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="poolwarden-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise ConfigError(f"--web {host}:{port}: could not serve there (address in use?)")
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True  # open keep-alive connections: cut them short
            thread.join(timeout)
