"""Tests for the watch loop and `poolwarden watch`, against real servers and real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge
from tests.fixtures.metrics_server import serve_metrics
from tests.fixtures.pg import PgServer, free_port
from tests.fixtures.watchers import sessions

from poolwarden.errors import TargetTimeout
from poolwarden.probe.scrape import ScrapeResult
from poolwarden.watch.loop import Watcher, WatchEvent, once_rules
from poolwarden.watch.observation import TargetInfo
from poolwarden.watch.rules import load_rules
from poolwarden.watch.store import Store

LAUNCH = (
    "import sys; from poolwarden.cli import app, main; "
    "from poolwarden._cli_watch import register; register(app); sys.exit(main(sys.argv[1:]))"
)
PASSWORD = "s3cret-watch-pw"


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `poolwarden watch ARGS` in a subprocess, bounded by `timeout`."""
    argv = [sys.executable, "-c", LAUNCH, "watch", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def watcher(store_path: Path, collected: list[WatchEvent], **kwargs: Any) -> Watcher:
    kwargs.setdefault("rules", load_rules())
    w = Watcher(store=Store(f"sqlite:///{store_path}"), on_event=collected.append, **kwargs)
    w.start()
    return w


def fired(collected: list[WatchEvent], rule: str) -> list[WatchEvent]:
    return [e for e in collected if e.kind == "alert_fired" and e.data["rule"] == rule]


def test_once_on_a_healthy_server_exits_0_and_prints_no_alert(pg: PgServer, tmp_path: Path) -> None:
    """`watch --once --json` on a healthy server: exit 0, no alert, no password in the output."""
    dsn = pg.url(password=PASSWORD)
    result = cli("--once", "--json", "--dsn", dsn, "--store", f"sqlite:///{tmp_path}/s.db")

    assert result.returncode == 0, result.stderr
    kinds = [e["event"] for e in events(result.stdout)]
    assert "tick" in kinds
    assert "alert_fired" not in kinds
    assert PASSWORD not in result.stdout + result.stderr


def test_once_exits_1_when_a_critical_alert_fires(tmp_path: Path) -> None:
    """`--once` takes `for:` as 0: an unreachable database fires its critical alert at once."""
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/postgres"
    result = cli("--once", "--json", "--dsn", dsn, "--store", f"sqlite:///{tmp_path}/s.db")

    assert result.returncode == 1, result.stderr
    rules = [e["rule"] for e in events(result.stdout) if e["event"] == "alert_fired"]
    assert rules == ["PoolwardenDatabaseUnreachable"]
    assert PASSWORD not in result.stdout + result.stderr


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    """A --target that is not http(s) is bad input: exit 2, one line naming the flag."""
    result = cli("--once", "--target", "ftp://x/metrics", "--store", f"sqlite:///{tmp_path}/s.db")

    assert result.returncode == 2
    assert result.stderr.startswith("poolwarden: error: --target 'ftp://x/metrics': scheme")
    assert len(result.stderr.splitlines()) == 1


def test_noisy_neighbour_fires_connections_high_and_names_it(
    pg_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """An app holding most slots fires ServerConnectionsHigh within 3 ticks; root cause names it."""
    server = pg_factory(max_connections=20)
    # `for` shortened so that three 0.2 s ticks suffice; the rule is otherwise the pack's.
    rules = load_rules(overrides=[{"name": "PoolwardenServerConnectionsHigh", "for": "200ms"}])
    collected: list[WatchEvent] = []
    w = watcher(tmp_path / "s.db", collected, rules=rules, databases={"main": server.dsn})
    try:
        with sessions(server.dsn, 15, "neighbour"):
            for _ in range(3):
                w.tick()
                time.sleep(0.2)
    finally:
        w.close()

    assert fired(collected, "PoolwardenServerConnectionsHigh")
    (incident,) = w.store.open_incidents()
    assert incident.root_cause is not None
    assert incident.root_cause.culprit == "neighbour"
    causes = [e for e in collected if e.kind == "root_cause"]
    assert causes[0].data["culprit"] == "neighbour"


def test_idle_in_transaction_past_a_lowered_threshold_fires_naming_the_app(
    pg: PgServer, tmp_path: Path
) -> None:
    """Rules overridden in poolwarden.yaml: sessions idle in transaction fire, naming the app."""
    config = write_config(
        tmp_path / "poolwarden.yaml",
        {
            "databases": {"main": {"dsn": pg.dsn}},
            "rules": [
                {"name": "PoolwardenIdleInTransactionTooLong", "threshold": 0.5, "clear": 0.2}
            ],
            "watch": {"interval": 0.3, "store": f"sqlite:///{tmp_path}/s.db"},
        },
    )
    with sessions(pg.dsn, 2, "stuck-tx-app", in_transaction=True):
        time.sleep(0.6)
        result = cli("-c", str(config), "--json", "--max-ticks", "3")

    assert result.returncode == 0, result.stderr
    alerts = [e for e in events(result.stdout) if e["event"] == "alert_fired"]
    idle = [e for e in alerts if e["rule"] == "PoolwardenIdleInTransactionTooLong"]
    assert [e["labels"]["application_name"] for e in idle] == ["stuck-tx-app"]
    causes = [e for e in events(result.stdout) if e["event"] == "root_cause"]
    assert any(
        e["cause"] == "idle_in_transaction" and e["culprit"] == "stuck-tx-app" for e in causes
    )


@contextlib.contextmanager
def hung_http_server() -> Iterator[str]:
    """Accept TCP connections on loopback and never answer; yield a /metrics URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_hung_target_does_not_stall_ticks_and_counts_as_a_failed_scrape(
    pg: PgServer, tmp_path: Path
) -> None:
    """A target that never answers costs at most probe_timeout per tick and reads TargetTimeout."""
    registry = CollectorRegistry()
    Gauge("db_client_connection_max", "max", ["pool_name"], registry=registry).labels("p").set(5)
    collected: list[WatchEvent] = []
    with hung_http_server() as hung_url, serve_metrics(registry) as good:
        targets = [TargetInfo("hung", hung_url), TargetInfo("good", good.url)]
        w = watcher(
            tmp_path / "s.db", collected, databases={"main": pg.dsn}, targets=targets,
            interval=0.5, probe_timeout=0.3,
        )  # fmt: skip
        started = time.monotonic()
        try:
            w.run(max_ticks=4)
            elapsed = time.monotonic() - started
            obs = w.observe(time.time())
        finally:
            w.close()

    durations = [e.data["duration_s"] for e in collected if e.kind == "tick"]
    assert len(durations) == 4
    assert max(durations) < 0.3 + 0.2
    assert elapsed < 4 * 0.5 + 0.5
    failures = [e for e in collected if e.kind == "probe_failed"]
    assert [e.data["name"] for e in failures] == ["hung"]  # reported once, not every tick
    assert isinstance(obs.targets["hung"], TargetTimeout)
    assert isinstance(obs.targets["good"], ScrapeResult)


def test_database_stopped_fires_unreachable_and_started_again_resolves(
    pg_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """Stopping the server fires DatabaseUnreachable within 3 ticks; starting it resolves it.

    The clock is injected (1 s per tick), so the pack's own `for: 2s` applies unchanged.
    """
    server = pg_factory()
    now = [time.time()]
    collected: list[WatchEvent] = []
    w = watcher(tmp_path / "s.db", collected, databases={"main": server.dsn}, clock=lambda: now[0])

    def ticks(count: int) -> None:
        for _ in range(count):
            w.tick()
            now[0] += 1.0

    try:
        ticks(1)
        server.server.stop()
        ticks(3)
        assert fired(collected, "PoolwardenDatabaseUnreachable")
        incident = w.store.open_incidents()[0]
        assert incident.root_cause is not None
        assert incident.root_cause.cause == "database_down"
        server.server.start()
        ticks(3)
    finally:
        w.close()

    resolved = [e for e in collected if e.kind == "alert_resolved"]
    assert [e.data["rule"] for e in resolved] == ["PoolwardenDatabaseUnreachable"]
    assert w.store.open_incidents() == ()
    assert w.store.get_incident(incident.id).status == "resolved"  # type: ignore[union-attr]


def test_once_rules_take_every_for_as_zero() -> None:
    """once_rules keeps each rule but sets its `for:` to 0."""
    rules = once_rules(load_rules())
    assert {r.name for r in rules} == {r.name for r in load_rules()}
    assert {r.for_ for r in rules} == {0.0}


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.bodies.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on loopback recording the JSON bodies POSTed to it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    httpd.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/hook", httpd.bodies  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _read_until(proc: subprocess.Popen[str], wanted: Callable[[dict[str, Any]], bool]) -> None:
    """Read the process's JSON lines until one is `wanted` (at most 20 s)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout

    def pump() -> None:
        with contextlib.suppress(ValueError, OSError):  # the test closed the pipe
            for line in out:
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            if wanted(json.loads(lines.get(timeout=0.5))):
                return
    raise AssertionError("the watch loop never emitted the wanted event")


def test_sigterm_ends_the_loop_cleanly_with_exit_0(pg: PgServer, tmp_path: Path) -> None:
    """The loop runs until SIGTERM, then exits 0."""
    store = f"sqlite:///{tmp_path}/s.db"
    argv = [sys.executable, "-c", LAUNCH, "watch", "--dsn", pg.dsn, "--store", store, "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        _read_until(proc, lambda e: e["event"] == "tick")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.slow
def test_after_kill_9_the_incident_continues_without_a_second_notification(
    tmp_path: Path,
) -> None:
    """kill -9 mid-incident, restart: same incident id, and the receiver got one firing only."""
    store = f"sqlite:///{tmp_path}/s.db"
    with webhook_receiver() as (url, bodies):
        config = write_config(
            tmp_path / "poolwarden.yaml",
            {
                "databases": {"gone": {"dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}},
                "rules": [{"name": "PoolwardenDatabaseUnreachable", "for": "0s"}],
                "notify": {"webhooks": [{"url": url, "retries": 0, "timeout": 2}]},
                "watch": {"interval": 0.2, "store": store},
            },
        )
        argv = [sys.executable, "-c", LAUNCH, "watch", "-c", str(config), "--json"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            _read_until(proc, lambda e: e["event"] == "notification" and e["ok"])
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()
        with Store(store) as kept:
            (before,) = kept.open_incidents()

        again = cli("-c", str(config), "--json", "--max-ticks", "5")
        with Store(store) as kept:
            (after,) = kept.open_incidents()

    assert again.returncode == 0, again.stderr
    assert after.id == before.id
    assert "alert_fired" not in [e["event"] for e in events(again.stdout)]
    assert [b["status"] for b in bodies] == ["firing"]
    assert bodies[0]["alerts"][0]["annotations"]["incident_id"] == before.id
    kinds = [e.kind for e in after.timeline]
    assert kinds.count("alert_fired") == 1
    assert kinds.count("notification_sent") <= 1
