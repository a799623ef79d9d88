"""The drill's reference API service against a real PostgreSQL, over real loopback HTTP."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.fixtures.apps import wait_until
from tests.fixtures.pg import PgServer
from tests.fixtures.uvicorn_server import serve

from poolwarden.drill.demoapp import AppConfig, AppProcess, create_app, create_schema
from poolwarden.errors import ConfigError

ORDER = {"customer_id": 7, "items": [{"sku": "SKU-1", "qty": 2, "price_cents": 150}]}


@pytest.fixture(scope="module")
def demo_dsn(pg: PgServer) -> str:
    """A seeded database owned by a role that logs in with a password; its DSN."""
    suffix = secrets.token_hex(3)
    role, password = f"demo_{suffix}", f"pw-{secrets.token_hex(8)}"
    with pg.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {role} OWNER {role}")
    dsn = pg.url(user=role, password=password, dbname=role)
    create_schema(dsn)
    return dsn


def password_of(dsn: str) -> str:
    return dsn.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Map each sample of `name` in Prometheus `text` to its value, keyed by sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def http_count(text: str, route: str, status: int, method: str = "GET") -> float:
    labels = {"http_request_method": method, "http_route": route}
    key = tuple(sorted({**labels, "http_response_status_code": str(status)}.items()))
    return samples(text, "http_server_request_duration_seconds_count").get(key, 0.0)


def app_sessions(pg: PgServer, name: str, state: str | None = None) -> int:
    """Count the server's sessions named `name` (in `state` when given)."""
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND (%s::text IS NULL OR state = %s)",
            (name, state, state),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def running(demo_dsn: str) -> Iterator[Callable[..., Any]]:
    """Serve `create_app(AppConfig(demo_dsn, **fields))` in-process; yield (client, app)."""
    stack: list[Any] = []

    def start(**fields: Any) -> tuple[httpx.Client, Any]:
        app = create_app(AppConfig(demo_dsn, **fields))
        server = serve(app)
        srv = server.__enter__()
        client = httpx.Client(base_url=srv.url, timeout=10.0)
        stack.append((server, client))
        return client, app

    yield start
    for server, client in reversed(stack):
        client.close()
        server.__exit__(None, None, None)


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `call` in a thread; its result lands in the returned list."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


def test_endpoints_create_get_list_and_report(running: Callable[..., Any]) -> None:
    """An order posted is read back whole, listed first for its customer, and in the report."""
    client, _ = running(name="demo-endpoints")
    before = client.get("/reports/revenue", params={"days": 1}).json()
    created = client.post("/orders", json=ORDER)
    assert created.status_code == 201
    order_id = created.json()["id"]
    got = client.get(f"/orders/{order_id}").json()
    assert (got["customer_id"], got["status"], got["total_cents"]) == (7, "pending", 300)
    assert got["items"] == ORDER["items"]
    listed = client.get("/orders", params={"customer_id": 7, "limit": 5}).json()["orders"]
    assert listed[0]["id"] == order_id
    assert {o["customer_id"] for o in listed} == {7}
    assert len(listed) == 5
    after = client.get("/reports/revenue", params={"days": 1}).json()
    assert after["orders"] == before["orders"] + 1
    assert after["revenue_cents"] == before["revenue_cents"] + 300
    assert after["revenue_cents"] == sum(r["revenue_cents"] for r in after["rows"])
    assert client.get("/orders/999999999").status_code == 404
    assert client.post("/orders", json={**ORDER, "customer_id": 999_999}).status_code == 404
    assert client.get("/orders", params={"limit": 101}).status_code == 422


def test_create_schema_is_idempotent(demo_dsn: str, pg: PgServer) -> None:
    """A second create_schema keeps the rows it finds; seeded counts match the arguments."""
    create_schema(demo_dsn)
    dbname = demo_dsn.rsplit("/", 1)[1]
    with pg.connect(dbname=dbname) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders WHERE id <= 20000),"
            " (SELECT sum(order_count) FROM customers) = (SELECT count(*) FROM orders)"
        ).fetchone()
    assert row == (1000, 20000, True)


@pytest.mark.parametrize("guarded", [False, True], ids=["guard-off", "guard-on"])
def test_metrics_expose_http_histogram_and_pool_gauges(
    running: Callable[..., Any], guarded: bool
) -> None:
    """/metrics counts requests by route template and status, and exports the pool's max."""
    name = f"demo-metrics-{guarded}".lower()
    client, _ = running(name=name, pool_min=1, pool_max=3, guard=guarded)
    assert client.get("/orders/1").status_code == 200
    assert client.get("/orders/2").status_code == 200
    assert client.get("/healthz").status_code == 200
    text = client.get("/metrics").text
    assert http_count(text, "/orders/{order_id}", 200) == 2
    assert samples(text, "db_client_connection_max") == {(("pool_name", name),): 3.0}
    routes = {
        dict(k)["http_route"] for k in samples(text, "http_server_request_duration_seconds_count")
    }
    assert routes == {"/orders/{order_id}"}  # /healthz and /metrics are not timed
    # Only the guard exports rejections: unguarded, watch reads the pool's timeouts instead.
    assert ("poolwarden_pool_rejections" in text) is guarded


def test_unhandled_exception_is_counted_as_500(running: Callable[..., Any]) -> None:
    """An exception escaping a route is answered 500 and counted as 500 on its route."""
    client, app = running(name="demo-boom")

    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    assert client.get("/boom").status_code == 500
    # uvicorn closes the connection after an unhandled error: scrape on a new one.
    metrics = httpx.get(str(client.base_url.join("/metrics"))).text
    assert http_count(metrics, "/boom", 500) == 1


def test_guard_off_pool_timeout_answers_500_and_is_counted(running: Callable[..., Any]) -> None:
    """Unguarded, a request that waits out pool_timeout gets 500 JSON, counted as a 500."""
    client, _ = running(name="demo-timeout", pool_min=1, pool_max=1, pool_timeout=0.3)
    client.post("/_drill/fault", json={"kind": "idle_in_transaction", "seconds": 1.5})
    holder, result = in_background(lambda: client.post("/orders", json=ORDER).status_code)
    assert wait_until(lambda: 'used"} 1.0' in client.get("/metrics").text)
    started = time.monotonic()
    refused = client.get("/orders/1")
    assert refused.status_code == 500
    assert time.monotonic() - started >= 0.3
    assert "no connection within 0.3 s" in refused.json()["error"]
    holder.join(10)
    assert result == [201]
    text = client.get("/metrics").text
    assert http_count(text, "/orders/{order_id}", 500) == 1
    assert samples(text, "db_client_connection_timeouts_total") == {
        (("pool_name", "demo-timeout"),): 1.0
    }


def test_guard_on_saturated_answers_503_with_retry_after(running: Callable[..., Any]) -> None:
    """Guarded, a request the pool cannot serve in guard_timeout gets 503 + Retry-After."""
    client, _ = running(name="demo-guarded", pool_min=1, pool_max=1, guard=True, guard_timeout=0.2)
    client.post("/_drill/fault", json={"kind": "idle_in_transaction", "seconds": 1.5})
    holder, result = in_background(lambda: client.post("/orders", json=ORDER).status_code)
    assert wait_until(lambda: 'used"} 1.0' in client.get("/metrics").text)
    refused = client.get("/orders/1")
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"] == "pool_saturated"
    holder.join(10)
    assert result == [201]
    assert http_count(client.get("/metrics").text, "/orders/{order_id}", 503) == 1


def test_budget_clamp_resizes_the_pool(pg_factory: Callable[..., PgServer]) -> None:
    """Guarded, a pool above the fleet's share opens only the share: 13 slots / 2 replicas = 6."""
    server = pg_factory(max_connections=20)  # 17 usable - 4 headroom (a fifth) = 13 for the fleet
    config = AppConfig(
        server.dsn, name="demo-clamp", pool_min=10, pool_max=10, guard=True, replicas=2
    )
    with serve(create_app(config)) as srv:
        assert wait_until(lambda: app_sessions(server, "demo-clamp") >= 6, timeout=10)
        time.sleep(0.3)  # a pool still at min_size=10 would have opened more by now
        assert app_sessions(server, "demo-clamp") == 6
        text = httpx.get(f"{srv.url}/metrics").text
    assert samples(text, "db_client_connection_max") == {(("pool_name", "demo-clamp"),): 6.0}


def test_leak_fault_leaves_connections_checked_out(running: Callable[..., Any]) -> None:
    """With the leak fault, each order keeps its connection; switching it off leaks no more."""
    client, app = running(name="demo-leak", pool_min=1, pool_max=4)
    assert client.post("/_drill/fault", json={"kind": "leak", "rate": 1.0}).json()["kind"] == "leak"
    assert [client.post("/orders", json=ORDER).status_code for _ in range(2)] == [201, 201]
    client.post("/_drill/fault", json={"kind": "none"})
    assert client.post("/orders", json=ORDER).status_code == 201
    stats = app.state.db.pool.get_stats()
    assert stats["pool_size"] - stats["pool_available"] == 2


def test_idle_in_transaction_fault_holds_transactions_open(
    running: Callable[..., Any], pg: PgServer
) -> None:
    """With the fault, orders sit 'idle in transaction' on the server while they "pay"."""
    client, _ = running(name="demo-idle", pool_min=1, pool_max=4)
    client.post("/_drill/fault", json={"kind": "idle_in_transaction", "rate": 1.0, "seconds": 2})
    # Two customers: a second order of the same one would wait on the first's row lock.
    calls = [
        in_background(
            lambda c=c: client.post("/orders", json={**ORDER, "customer_id": c}).status_code
        )
        for c in (11, 12)
    ]
    assert wait_until(lambda: app_sessions(pg, "demo-idle", "idle in transaction") == 2)
    for thread, _ in calls:
        thread.join(10)
    assert [result for _, result in calls] == [[201], [201]]
    assert app_sessions(pg, "demo-idle", "idle in transaction") == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"kind": "explode"},
            "kind='explode' is not one of none, leak, idle_in_transaction, slow_report",
        ),
        ({"kind": "leak", "rate": 1.5}, "rate=1.5 must be a number from 0.0 to 1.0"),
        ({"kind": "leak", "every": 2}, "unknown field 'every'; fields: kind, rate, seconds"),
        ([], 'send a JSON object like {"kind": "leak", "rate": 0.5}'),
    ],
)
def test_fault_rejects_bad_input_with_400(
    running: Callable[..., Any], body: Any, message: str
) -> None:
    """A bad fault request is refused with 400 and one line naming the problem."""
    client, _ = running(name="demo-badfault")
    answer = client.post("/_drill/fault", json=body)
    assert (answer.status_code, answer.json()) == (400, {"error": f"fault: {message}"})


def test_config_round_trips_json_and_hides_the_password(demo_dsn: str) -> None:
    """to_json/from_json round-trip; repr never shows the password; bad fields are named."""
    config = AppConfig(demo_dsn, name="x", pool_max=4, guard=True, leak_threshold=2.5)
    assert AppConfig.from_json(config.to_json()) == config
    assert password_of(demo_dsn) not in repr(config)
    with pytest.raises(ConfigError, match="unknown field 'pool'"):
        AppConfig.from_json('{"dsn": "postgresql://h/db", "pool": 3}')
    with pytest.raises(ConfigError, match="pool_min=5 pool_max=4"):
        AppConfig("postgresql://h/db", pool_min=5, pool_max=4)


def test_app_process_serves_and_stops_without_leaking_the_password(
    demo_dsn: str, tmp_path: Path
) -> None:
    """A replica process answers, takes a fault, and stops; its log and /metrics hide the DSN."""
    log = tmp_path / "replica.log"
    # 40 replicas x 10 do not fit 100 slots: the clamp writes a warning into the log.
    config = AppConfig(demo_dsn, name="demo-process", guard=True, replicas=40)
    replica = AppProcess.start(config, log_path=log)
    try:
        assert httpx.get(f"{replica.url}/orders/1").status_code == 200
        replica.set_fault("leak", rate=0.5)
        with pytest.raises(ConfigError, match="kind='nope'"):
            replica.set_fault("nope")
        metrics = httpx.get(f"{replica.url}/metrics").text
    finally:
        replica.stop()
    assert replica.process.poll() is not None
    replica.stop()  # idempotent
    assert "resized from min_size=2 max_size=10" in log.read_text()
    assert http_count(metrics, "/orders/{order_id}", 200) == 1
    for text in (metrics, log.read_text()):
        assert password_of(demo_dsn) not in text
