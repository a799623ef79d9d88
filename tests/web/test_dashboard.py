"""The dashboard of `poolwarden watch --web`: a real Watcher, a real uvicorn, a real Chromium."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.fixtures.browser import browser
from tests.fixtures.pg import PgServer
from tests.fixtures.uvicorn_server import serve

from poolwarden.errors import ConfigError
from poolwarden.watch.loop import Watcher
from poolwarden.watch.rules import load_rules
from poolwarden.watch.store import Store
from poolwarden.web.app import create_app, is_loopback, parse_bind, web_token

PASSWORD = "s3cret-dashboard-pw"
TOKEN = "t0ken-for-the-dashboard"
INTERVAL = 0.2
RULE = "PoolwardenServerConnectionsHigh"
LAUNCH = (
    "import sys; from poolwarden.cli import app, main; "
    "from poolwarden._cli_watch import register; register(app); sys.exit(main(sys.argv[1:]))"
)


@dataclass
class Dashboard:
    """A watcher ticking in its own thread, its dashboard served on loopback."""

    watcher: Watcher
    url: str
    dsn: str

    def wait_ticks(self, count: int, timeout: float = 10.0) -> None:
        """Wait until the loop ran `count` more ticks (bounded by `timeout`)."""
        target = self.watcher.state().ticks + count
        deadline = time.monotonic() + timeout
        while self.watcher.state().ticks < target:
            assert time.monotonic() < deadline, f"fewer than {count} ticks in {timeout} s"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(pg_factory: Callable[..., PgServer]) -> PgServer:
    """A private server with 20 slots, so a neighbour can fill it."""
    return pg_factory(max_connections=20)


@contextlib.contextmanager
def dashboard(server: PgServer, tmp_path: Path, *, token: str | None = None) -> Iterator[Dashboard]:
    """Run a Watcher (0.2 s ticks, connections-high `for` shortened) with its dashboard."""
    rules = load_rules(overrides=[{"name": RULE, "for": "200ms"}])
    dsn = server.url(password=PASSWORD)
    watcher = Watcher(
        store=Store(f"sqlite:///{tmp_path}/watch.db"),
        rules=rules,
        databases={"main": dsn},
        interval=INTERVAL,
    )
    watcher.start()
    app = create_app(watcher, token=token)
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run, kwargs={"stop": stop}, daemon=True)
    loop.start()
    try:
        with serve(app) as running:
            board = Dashboard(watcher, running.url, dsn)
            board.wait_ticks(3)
            yield board
    finally:
        stop.set()
        loop.join(10)
        watcher.close()
        watcher.store.close()


@contextlib.contextmanager
def sessions(dsn: str, count: int, app: str) -> Iterator[None]:
    """Hold `count` idle sessions named `app`."""
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            conn = stack.enter_context(psycopg.connect(dsn, application_name=app, autocommit=True))
            conn.execute("SELECT 1")
        yield


def get(board: Dashboard, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{board.url}{path}", timeout=10.0, **kwargs)


# --- the page in a real browser ---------------------------------------------------------------


def test_page_draws_charts_in_chromium_and_shows_the_alert_after_a_fault(
    server: PgServer, tmp_path: Path
) -> None:
    """Chromium renders charts with data and app names; a neighbour's alert appears after a fault."""
    drawn = "document.querySelectorAll('#chart-connections-main path[d]').length > 0"
    alert = f"document.querySelector('[data-alertname={RULE}]') !== null"
    with (
        dashboard(server, tmp_path) as board,
        sessions(board.dsn, 2, "orders-api"),
        browser(tmp_path / "chromium-profile") as page,
    ):
        board.wait_ticks(3)
        page.goto(board.url + "/")
        page.wait_for(drawn)
        before = page.html()
        # 2 + 13 of the 17 usable slots: high, yet the probe still gets in and charts it.
        with sessions(board.dsn, 13, "neighbour"):
            board.wait_ticks(3)
            page.goto(board.url + "/")  # reload
            page.wait_for(alert, timeout=10.0)
            page.wait_for(f"{drawn} && document.body.textContent.includes('neighbour')")
            page.wait_for("document.getElementById('status').textContent.startsWith('tick')")
            after = page.html()
            shot = page.screenshot(tmp_path / "dashboard.png")

    paths = re.findall(r'<path d="(M[^"]+)"[^>]*data-series="([^"]+)"', before)
    assert any(name.startswith("orders-api") for _, name in paths), paths
    assert all(d.count("L") >= 2 for d, _ in paths)  # drawn areas, not empty paths
    assert RULE not in before
    assert f'data-alertname="{RULE}"' in after
    assert "neighbour" in after
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank PNG
    print(f"dashboard screenshot: {shot}")


# --- the API --------------------------------------------------------------------------------------


def test_state_reports_connections_by_application_alerts_and_incidents(
    server: PgServer, tmp_path: Path
) -> None:
    """/api/state: per database used/usable/by state/by application; the alert and its incident."""
    with dashboard(server, tmp_path) as board, sessions(board.dsn, 15, "neighbour"):
        board.wait_ticks(4)
        state = get(board, "/api/state").json()

    (db,) = state["databases"]
    assert db["name"] == "main"
    assert db["up"] is True
    assert db["used"] >= 15
    assert db["usable"] > 0
    assert db["by_application"]["neighbour"]["idle"] == 15
    assert sum(db["by_state"].values()) >= 15
    assert state["pools"] == []
    assert state["pgbouncers"] == []
    assert RULE in [a["alertname"] for a in state["alerts"]]
    (incident,) = state["incidents"]["open"]
    assert incident["root_cause"]["culprit"] == "neighbour"
    assert incident["timeline"][0]["kind"] == "alert_fired"


def test_incident_endpoint_returns_the_incident_and_404_for_an_unknown_id(
    server: PgServer, tmp_path: Path
) -> None:
    """/api/incidents/{id} returns the open incident with its root cause; an unknown id is 404."""
    with dashboard(server, tmp_path) as board, sessions(board.dsn, 15, "neighbour"):
        board.wait_ticks(4)
        (opened,) = board.watcher.state().open_incidents
        found = get(board, f"/api/incidents/{opened.id}")
        missing = get(board, "/api/incidents/NOPE")

    assert found.status_code == 200
    assert found.json()["id"] == opened.id
    assert found.json()["root_cause"]["cause"]
    assert missing.status_code == 404


def test_series_returns_windows_filtered_by_labels(server: PgServer, tmp_path: Path) -> None:
    """/api/series returns each matching series' points, oldest first; bad input is 400."""
    name = "database_application_state:client_connections:sum"
    with dashboard(server, tmp_path) as board, sessions(board.dsn, 2, "orders-api"):
        board.wait_ticks(3)
        body = get(board, "/api/series", params={"name": name, "labels": "state=idle"}).json()
        names = get(board, "/api/series").json()["series"]
        too_long = get(board, "/api/series", params={"name": name, "seconds": "99999"})

    apps = {s["labels"]["application_name"]: s["points"] for s in body["series"]}
    assert all(s["labels"]["state"] == "idle" for s in body["series"])
    assert len(apps["orders-api"]) >= 3
    assert apps["orders-api"][-1][1] == 2
    times = [t for t, _ in apps["orders-api"]]
    assert times == sorted(times)
    assert {"name": name} in names
    assert too_long.status_code == 400


def test_metrics_parse_as_prometheus_text_with_connections_and_alerts(
    server: PgServer, tmp_path: Path
) -> None:
    """/metrics parses with prometheus_client's parser: connections by app, up, ALERTS-like."""
    with dashboard(server, tmp_path) as board, sessions(board.dsn, 15, "neighbour"):
        board.wait_ticks(4)
        response = get(board, "/metrics")

    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    conns = (("application_name", "neighbour"), ("database", "main"), ("state", "idle"))
    assert samples["poolwarden_watch_server_connections", conns] == 15
    assert samples["poolwarden_watch_up", (("kind", "database"), ("name", "main"))] == 1
    alerts = [k for k in samples if k[0] == "poolwarden_watch_alert"]
    assert any(("alertname", RULE) in labels for _, labels in alerts)
    assert any(("alertstate", "firing") in labels for _, labels in alerts)


def test_no_response_carries_the_database_password(server: PgServer, tmp_path: Path) -> None:
    """The page, the API and /metrics never show the DSN's password."""
    with dashboard(server, tmp_path) as board, sessions(board.dsn, 15, "neighbour"):
        board.wait_ticks(4)
        (opened,) = board.watcher.state().open_incidents
        paths = ["/", "/static/dashboard.js", "/api/state", "/api/series", "/metrics",
                 f"/api/incidents/{opened.id}"]  # fmt: skip
        bodies = [get(board, path).text for path in paths]

    assert all(PASSWORD not in body for body in bodies)


# --- security ---------------------------------------------------------------------------------------


def test_every_route_wants_the_bearer_token_when_one_is_set(
    server: PgServer, tmp_path: Path
) -> None:
    """With a token: 401 without it or with a wrong one, 200 with `Authorization: Bearer`."""
    good = {"Authorization": f"Bearer {TOKEN}"}
    bad = {"Authorization": "Bearer nope"}
    with dashboard(server, tmp_path, token=TOKEN) as board:
        paths = ["/", "/api/state", "/api/series", "/metrics", "/static/dashboard.js"]
        without = [get(board, p).status_code for p in paths]
        wrong = [get(board, p, headers=bad).status_code for p in paths]
        right = [get(board, p, headers=good).status_code for p in paths]
        challenge = get(board, "/").headers.get("www-authenticate", "")

    assert without == wrong == [401] * len(paths)
    assert right == [200] * len(paths)
    assert challenge.startswith("Bearer")


def test_a_public_bind_needs_a_token_and_loopback_does_not() -> None:
    """web_token: loopback needs none; any other address without a token is a ConfigError."""
    assert web_token("127.0.0.1", None) is None
    assert web_token("::1", None) is None
    assert web_token("localhost", "") is None
    assert web_token("0.0.0.0", TOKEN) == TOKEN  # noqa: S104 - the address under test
    assert not is_loopback("example.com")
    with pytest.raises(ConfigError, match="token is required"):
        web_token("0.0.0.0", None)  # noqa: S104 - the address under test
    assert parse_bind("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_bind("8080")


def test_watch_web_on_a_public_address_without_token_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`watch --web 0.0.0.0:PORT` without a token refuses to start: exit 2, one line."""
    monkeypatch.delenv("POOLWARDEN_WEB_TOKEN", raising=False)
    argv = [sys.executable, "-c", LAUNCH, "watch", "--web", "0.0.0.0:8765",
            "--store", f"sqlite:///{tmp_path}/s.db", "--dsn", "postgresql://u@127.0.0.1:1/x"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "token is required" in result.stderr
