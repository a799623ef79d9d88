"""`poolwarden watch`: the watch loop on the command line.

`register(app)` adds the command. It builds a `poolwarden.watch.loop.Watcher` from
``poolwarden.yaml`` and the flags, prints its events (one rich line each, or one JSON
object per line with ``--json``) and exits: ``--once`` runs one tick with every rule's
``for:`` taken as 0 and exits 1 when a critical alert fires, 0 otherwise; the loop runs
until SIGINT or SIGTERM and exits 0. Bad input raises `ConfigError` (exit 2 in `cli.main`).
Reference: docs/watch.md.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console

from poolwarden._dsn import normalize_dsn, redact_dsn, resolve_dsn
from poolwarden._http import redact_url
from poolwarden.config import Config, TargetConfig, load_config
from poolwarden.embedded import EmbeddedServer
from poolwarden.errors import ConfigError
from poolwarden.watch.loop import Watcher, WatchEvent, once_rules
from poolwarden.watch.notify import Notifier
from poolwarden.watch.observation import TargetInfo
from poolwarden.watch.rules import load_rules
from poolwarden.watch.store import Store
from poolwarden.watch.webhook import WebhookNotifier

__all__ = ["register", "watch_cmd"]

EXIT_OK, EXIT_CRITICAL = 0, 1


def register(app: typer.Typer) -> None:
    """Add the `watch` command to `app` (once; a second call changes nothing)."""
    if not any(command.name == "watch" for command in app.registered_commands):
        app.command("watch")(watch_cmd)


def watch_cmd(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="poolwarden.yaml: what to watch.")
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            help="A database to watch, named 'default' [default: "
            "$POOLWARDEN_DSN, $DATABASE_URL, else the embedded one].",
        ),
    ] = None,
    target: Annotated[
        list[str] | None, typer.Option("--target", help="An app's /metrics URL (repeatable).")
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option("--interval", min=0.01, help="Seconds between ticks [default: 1]."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One tick, for: taken as 0; exit 1 on critical.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    store: Annotated[
        str | None, typer.Option("--store", help="SQLAlchemy URL of the incident store.")
    ] = None,
    max_ticks: Annotated[int | None, typer.Option("--max-ticks", min=1, hidden=True)] = None,
    web: Annotated[
        str | None,
        typer.Option("--web", metavar="HOST:PORT", help="Serve the dashboard (loopback)."),
    ] = None,
    web_token: Annotated[
        str | None,
        typer.Option(
            "--web-token",
            envvar="POOLWARDEN_WEB_TOKEN",
            help="Bearer token the dashboard requires; needed off loopback.",
        ),
    ] = None,
) -> int:
    """Watch the databases, PgBouncers and apps; alert and name the root cause."""
    dashboard = _dashboard_settings(web, web_token, once)
    cfg = load_config(config) if config is not None else Config()
    source = f"{config}: rules" if config is not None else "rules"
    rules = load_rules(overrides=cfg.rules, source=source)
    watcher = Watcher(
        store=Store(store or cfg.watch.store),
        rules=once_rules(rules) if once else rules,
        databases=_databases(cfg, dsn, config),
        pgbouncers={name: pgb.dsn for name, pgb in cfg.pgbouncers.items()},
        targets=_targets(cfg, target or []),
        notifiers=_notifiers(cfg),
        interval=interval if interval is not None else cfg.watch.interval,
        probe_timeout=cfg.watch.probe_timeout,
        on_event=_printer(json_, cfg.notify.console),
    )
    try:
        watcher.start()
        if once:
            watcher.tick()
            firing = [a for a in watcher.engine.active() if a.state == "firing"]
            return EXIT_CRITICAL if any(a.severity == "critical" for a in firing) else EXIT_OK
        with _stop_on_signals() as stop, _dashboard(watcher, dashboard):
            watcher.run(max_ticks=max_ticks, stop=stop)
        return EXIT_OK
    finally:
        watcher.close()
        watcher.store.close()


def _dashboard_settings(
    web: str | None, token: str | None, once: bool
) -> tuple[str, int, str | None] | None:
    """Return (host, port, token) for --web, checked before anything starts; None without."""
    if web is None:
        return None
    if once:
        raise ConfigError("--web serves the dashboard of the loop; drop --once or --web")
    try:
        from poolwarden.web.app import parse_bind, web_token
    except ImportError:
        raise ConfigError(
            "--web needs Starlette and uvicorn: pip install 'poolwarden[asgi]'"
        ) from None
    host, port = parse_bind(web)
    return host, port, web_token(host, token)


@contextmanager
def _dashboard(watcher: Watcher, settings: tuple[str, int, str | None] | None) -> Iterator[None]:
    """Serve the dashboard over `watcher` for the block (nothing when `settings` is None)."""
    if settings is None:
        yield
        return
    from poolwarden.web.app import create_app, serving

    host, port, token = settings
    with serving(create_app(watcher, token=token), host, port) as url:
        Console(stderr=True, highlight=False).print(f"dashboard: {url}/", markup=False)
        yield


def _databases(cfg: Config, dsn: str | None, path: Path | None) -> dict[str, str]:
    """Return name -> DSN: the file's databases, plus --dsn (or the default) as 'default'."""
    found = {
        name: normalize_dsn(db.dsn, origin=f"{path}: databases.{name}.dsn")
        for name, db in cfg.databases.items()
    }
    if dsn is not None or not found:
        resolved = resolve_dsn(dsn)
        found["default"] = resolved.dsn or EmbeddedServer().ensure_running()
    return found


def _targets(cfg: Config, urls: list[str]) -> list[TargetInfo]:
    """Return the file's targets and each --target URL, named by its host:port."""
    found = [TargetInfo(t.name, t.url, t.database) for t in cfg.targets]
    for url in urls:
        try:
            TargetConfig(name="cli", url=url)
        except ValidationError as exc:
            detail = (exc.errors()[0].get("ctx") or {}).get("detail", "not a valid URL")
            raise ConfigError(f"--target {redact_url(url)!r}: {detail}") from None
        name = urlsplit(url.strip()).netloc.rpartition("@")[2]
        found.append(TargetInfo(name, url.strip()))
    return found


def _notifiers(cfg: Config) -> dict[str, Notifier]:
    return {
        f"webhook-{index}": WebhookNotifier(
            hook.url, timeout=hook.timeout, retries=hook.retries, hmac_secret=hook.hmac_secret
        )
        for index, hook in enumerate(cfg.notify.webhooks, start=1)
    }


_CONSOLE_KINDS = {"alert_fired", "alert_resolved", "root_cause", "incident_resolved"}
_STYLES = {"alert_fired": "bold red", "alert_resolved": "green", "probe_failed": "yellow"}


def _printer(as_json: bool, console_alerts: bool) -> Callable[[WatchEvent], None]:
    """Return the event callback: JSON lines, or one rich line per event worth reading."""
    out = Console(highlight=False, soft_wrap=True)

    def emit(event: WatchEvent) -> None:
        if as_json:
            record = {"event": event.kind, "at": event.at, "text": event.text, **event.data}
            # Belt and braces: nothing that looks like a DSN password leaves the process.
            print(redact_dsn(json.dumps(_finite(record))), flush=True)
            return
        if event.kind == "tick" or (event.kind in _CONSOLE_KINDS and not console_alerts):
            return
        if event.kind == "notification" and event.data.get("ok"):
            return
        out.print(_line(event), style=_STYLES.get(event.kind), markup=False)

    return emit


def _line(event: WatchEvent) -> str:
    label = event.kind.replace("_", " ").upper()
    text = f"{label}: {event.text}"
    if event.kind == "alert_fired":
        text = f"FIRING {event.data['severity']} {event.data['rule']}: {event.text}"
        if event.data.get("culprit"):
            text += f"; root cause {event.data['root_cause']}: {event.data['culprit']}"
    elif event.kind == "alert_resolved":
        text = f"RESOLVED {event.data['rule']}: {event.text}"
    if event.data.get("incident_id"):
        text += f" [incident {event.data['incident_id']}]"
    return redact_dsn(" ".join(text.split()))


def _finite(value: Any) -> Any:
    """Return `value` with inf/NaN floats as strings: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Yield an event that SIGINT or SIGTERM sets, so the loop ends cleanly (exit 0)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
