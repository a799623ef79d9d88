"""scrape_metrics() reads real /metrics endpoints exactly, and fails fast and clearly on bad ones."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import ConnectionPool
from tests.fixtures.metrics_server import serve_metrics
from tests.fixtures.pg import PgServer, free_port

from poolwarden.errors import (
    ConfigError,
    ProbeError,
    TargetBadResponse,
    TargetTimeout,
    TargetUnreachable,
)
from poolwarden.guard import guard
from poolwarden.probe.scrape import parse_metrics, redact_url, scrape_metrics

# Slack for the deadline tests: thread scheduling on a busy CI machine, never the target.
SLACK = 0.5

# --- servers ------------------------------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class HttpServer:
    """A real ThreadingHTTPServer on 127.0.0.1 answering every GET with `reply(path)`."""

    reply: Callable[[str], Reply]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        """Return ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def http_server(
    reply: Callable[[str], Reply], tls: ssl.SSLContext | None = None
) -> Iterator[HttpServer]:
    """Serve `reply` for the block; the server and its socket are closed at the end."""
    state = HttpServer(reply)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers.items())))
            status, headers, body = state.reply(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may give up first (max_bytes)
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_port
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """Accept TCP connections on 127.0.0.1 and run `handle(conn, stop)` on each; yield the port.

    At the end `stop` is set and every connection and thread is closed and joined.
    """
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    conns: list[socket.socket] = []
    workers: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            worker = threading.Thread(target=handle, args=(conn, stop))
            workers.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(timeout=5)
        for thread in workers:
            thread.join(timeout=5)
        for conn in conns:
            conn.close()
        listener.close()
        assert not acceptor.is_alive()
        assert not any(t.is_alive() for t in workers)


def never_answer(conn: socket.socket, stop: threading.Event) -> None:
    """Hold the accepted connection open and send nothing until the test ends."""
    stop.wait(30)


def trickle(head: bytes, payload: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """Send `head` at once, then `payload` one byte per 100 ms until it ends, the client
    leaves or the test ends."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)  # the request
        conn.sendall(head)
        for i in range(len(payload)):
            if stop.wait(0.1):
                return
            try:
                conn.sendall(payload[i : i + 1])
            except OSError:
                return

    return handle


def close_at_once(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request and hang up without a word."""
    conn.recv(65536)
    conn.close()


def ok(body: bytes, content_type: str = "text/plain; version=0.0.4") -> Callable[[str], Reply]:
    """Answer 200 with `body`."""
    return lambda path: (200, {"Content-Type": content_type}, body)


def timed(call: Callable[[], object]) -> tuple[ProbeError, float]:
    """Run `call`, which must raise a ProbeError; return it and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(ProbeError) as info:
        call()
    return info.value, time.monotonic() - started


# --- a guarded pool, end to end -----------------------------------------------------------


def test_scrape_reads_a_guarded_psycopg_pool(pg: PgServer) -> None:
    """The guard's metrics of two real pools read back with their exact values and names."""
    registry = CollectorRegistry()
    raw = ConnectionPool(pg.dsn, min_size=2, max_size=4, open=False)
    other = ConnectionPool(pg.dsn, min_size=1, max_size=3, open=False)
    with (
        guard(raw, name="scr-orders", registry=registry) as pool,
        guard(other, name="scr-billing", registry=registry),
        serve_metrics(registry) as server,
    ):
        pool.wait(timeout=10)
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        before = datetime.now(UTC)
        result = scrape_metrics(server.url)

    assert result.pools() == ("scr-billing", "scr-orders")
    assert result.url == server.url
    assert before <= result.taken_at <= datetime.now(UTC)
    assert 0 < result.duration_s < 2
    assert result.size_bytes > 0
    orders = {"pool_name": "scr-orders"}
    assert result.value("db_client_connection_max", **orders) == 4
    assert result.value("db_client_connection_max", pool_name="scr-billing") == 3
    assert result.value("db_client_connection_idle_min", **orders) == 2
    assert result.value("db_client_connection_count", **orders, state="idle") == 2
    assert result.value("db_client_connection_count", **orders, state="used") == 0
    assert result.value("poolwarden_pool_limit", **orders) == 4
    assert result.value("db_client_connection_wait_time_seconds_count", **orders) == 3
    assert result.value("db_client_connection_create_time_seconds_count", **orders) == 2
    assert result.value("db_client_connection_timeouts_total", **orders) == 0
    assert result.value("db_client_connection_timeouts", **orders) == 0
    assert result.value("poolwarden_pool_rejections", **orders, reason="shed") == 0
    assert result.families["db_client_connection_timeouts"].type == "counter"
    assert result.families["db_client_connection_wait_time_seconds"].type == "histogram"
    assert {s.name for s in result.samples("poolwarden_pool_leaks")} == {
        "poolwarden_pool_leaks_total"
    }
    buckets = result.samples("db_client_connection_wait_time_seconds_bucket")
    assert {s.labels["pool_name"] for s in buckets} == {"scr-billing", "scr-orders"}


# --- deadlines ----------------------------------------------------------------------------


def test_a_target_that_accepts_and_never_answers_times_out_at_the_deadline() -> None:
    """A silent target costs `timeout` and no more, and the message says how long and where."""
    with tcp_server(never_answer) as port:
        exc, elapsed = timed(
            lambda: scrape_metrics(f"http://127.0.0.1:{port}/metrics", timeout=0.5)
        )
    assert isinstance(exc, TargetTimeout)
    assert 0.5 * 0.9 <= elapsed < 0.5 + SLACK
    assert exc.timeout == 0.5
    assert str(exc) == (
        f"http://127.0.0.1:{port}/metrics: no complete answer within 0.5 s (waiting for the "
        "response); the app may be hung or overloaded — raise the scrape timeout only if it "
        "is just slow"
    )


@pytest.mark.parametrize(
    ("head", "payload", "phase"),
    [
        (b"", b"HTTP/1.0 200 OK\r\n" + b"X-Slow: yes\r\n" * 50, "(waiting for the response)"),
        (b"HTTP/1.0 200 OK\r\n\r\n", b"# never ends " * 50, "(reading the body, "),
    ],
    ids=["headers", "body"],
)
def test_a_target_that_trickles_bytes_times_out_at_the_deadline(
    head: bytes, payload: bytes, phase: str
) -> None:
    """One byte per 100 ms, in the headers or in the body, still ends at the deadline."""
    with tcp_server(trickle(head, payload)) as port:
        exc, elapsed = timed(
            lambda: scrape_metrics(f"http://127.0.0.1:{port}/metrics", timeout=1.0)
        )
    assert isinstance(exc, TargetTimeout)
    assert elapsed >= 0.9, "it kept reading until the deadline"
    assert elapsed < 1.0 + SLACK, "and not past it"
    assert phase in str(exc)


def test_a_stalled_tls_handshake_times_out_at_the_deadline() -> None:
    """An https target that never finishes the handshake costs `timeout` and no more."""
    with tcp_server(never_answer) as port:
        exc, elapsed = timed(
            lambda: scrape_metrics(f"https://127.0.0.1:{port}/metrics", timeout=0.5)
        )
    assert isinstance(exc, TargetTimeout)
    assert 0.5 * 0.9 <= elapsed < 0.5 + SLACK
    assert "(in the TLS handshake)" in str(exc)


# --- bad answers --------------------------------------------------------------------------


def test_a_closed_port_is_unreachable() -> None:
    """Nothing listening: TargetUnreachable at once, naming the refusal and what to check."""
    url = f"http://127.0.0.1:{free_port()}/metrics"
    exc, elapsed = timed(lambda: scrape_metrics(url))
    assert isinstance(exc, TargetUnreachable)
    assert elapsed < 1.0
    assert str(exc) == (
        f"{url}: cannot connect (Connection refused); check the host and port, and that the "
        "app is running and serves its metrics there"
    )


def test_a_non_200_status_is_a_bad_response_naming_it() -> None:
    """HTTP 500 is reported with its status code and reason, and kept on the exception."""
    with http_server(lambda path: (500, {}, b"boom")) as server:
        exc, _ = timed(lambda: scrape_metrics(f"{server.base}/metrics"))
    assert isinstance(exc, TargetBadResponse)
    assert exc.status == 500
    assert str(exc).startswith(f"{server.base}/metrics: HTTP 500 Internal Server Error; ")


def test_a_redirect_is_not_followed_and_names_the_new_place() -> None:
    """A 302 is reported with its Location (redacted) instead of being followed."""
    moved = "http://127.0.0.1:1/metrics?token=abc"
    with http_server(lambda path: (302, {"Location": moved}, b"")) as server:
        exc, _ = timed(lambda: scrape_metrics(f"{server.base}/metrics"))
    assert isinstance(exc, TargetBadResponse)
    assert exc.status == 302
    assert "HTTP 302 Found to http://127.0.0.1:1/metrics?token=***; scrape that URL" in str(exc)


def test_a_body_that_is_not_prometheus_text_names_the_line() -> None:
    """The first line that does not parse is named by number and shown."""
    body = b"# TYPE up gauge\nup 1\n<html>login</html>\n"
    with http_server(ok(body)) as server:
        exc, _ = timed(lambda: scrape_metrics(f"{server.base}/metrics"))
    assert isinstance(exc, TargetBadResponse)
    assert str(exc).startswith(f"{server.base}/metrics: not Prometheus text at line 3 (")
    assert str(exc).endswith("): '<html>login</html>'; is this the app's metrics endpoint?")


def test_a_body_that_is_not_utf8_is_a_bad_response() -> None:
    """Bytes that are not UTF-8 are refused with their offset."""
    with http_server(ok(b"up 1\n\xff\xfe")) as server:
        exc, _ = timed(lambda: scrape_metrics(f"{server.base}/metrics"))
    assert isinstance(exc, TargetBadResponse)
    assert "not UTF-8 (bad byte at offset 5)" in str(exc)


def test_a_target_that_hangs_up_is_a_bad_response() -> None:
    """A connection closed before any answer is a broken exchange, said so."""
    with tcp_server(close_at_once) as port:
        exc, _ = timed(lambda: scrape_metrics(f"http://127.0.0.1:{port}/metrics"))
    assert isinstance(exc, TargetBadResponse)
    assert "the connection broke while waiting for the response" in str(exc)


@pytest.mark.parametrize(
    ("headers", "detail"),
    [({"Content-Length": "5000"}, "it announces 5000 bytes"), ({}, "bytes read so far")],
    ids=["announced", "streamed"],
)
def test_a_body_larger_than_max_bytes_is_refused(headers: dict[str, str], detail: str) -> None:
    """max_bytes holds whether the size is announced up front or only found while reading."""
    body = b"# padding\n" * 500
    with http_server(lambda path: (200, headers, body)) as server:
        exc, _ = timed(lambda: scrape_metrics(f"{server.base}/metrics", max_bytes=1000))
    assert isinstance(exc, TargetBadResponse)
    assert "the body is larger than max_bytes=1000 (" in str(exc)
    assert detail in str(exc)


# --- URLs, headers, formats ---------------------------------------------------------------


def test_secrets_in_the_url_never_appear_in_messages_and_userinfo_becomes_basic_auth() -> None:
    """Userinfo and token parameters are redacted in messages; the credentials are still sent."""
    with http_server(lambda path: (503, {}, b"")) as server:
        url = f"http://scr-user:hunter2@127.0.0.1:{server.port}/metrics?token=s3cr3t&job=api"
        bad, _ = timed(lambda: scrape_metrics(url))
        sent = server.requests[0][1]
    closed = f"http://scr-user:hunter2@127.0.0.1:{free_port()}/m?api_key=s3cr3t"
    unreachable, _ = timed(lambda: scrape_metrics(closed))
    shown = f"http://***@127.0.0.1:{server.port}/metrics?token=***&job=api"
    assert isinstance(bad, TargetBadResponse)
    assert str(bad).startswith(f"{shown}: HTTP 503")
    assert bad.target == shown
    assert isinstance(unreachable, TargetUnreachable)
    for exc in (bad, unreachable):
        for secret in ("s3cr3t", "hunter2", "scr-user"):
            assert secret not in str(exc)
    assert sent["Authorization"] == "Basic " + base64.b64encode(b"scr-user:hunter2").decode()


def test_a_url_without_a_path_reads_metrics_with_the_given_headers() -> None:
    """No path means /metrics (Prometheus's default); extra headers are sent as given."""
    with http_server(ok(b"up 1\n")) as server:
        result = scrape_metrics(
            f"http://localhost:{server.port}", headers={"Authorization": "Bearer t"}
        )
        path, sent = server.requests[0]
    assert path == "/metrics"
    assert sent["Authorization"] == "Bearer t"
    assert sent["Accept"].startswith("text/plain;version=0.0.4")
    assert result.value("up") == 1


def test_an_openmetrics_answer_is_parsed_as_openmetrics() -> None:
    """A target that insists on OpenMetrics still yields typed counters with `_total` samples."""
    registry = CollectorRegistry()
    Counter("scr_requests", "Requests.", ["route"], registry=registry).labels("/a").inc(3)
    with http_server(ok(generate_latest(registry), CONTENT_TYPE_LATEST)) as server:
        result = scrape_metrics(f"{server.base}/metrics")
    assert result.families["scr_requests"].type == "counter"
    assert result.value("scr_requests", route="/a") == 3
    assert result.value("scr_requests_total", route="/a") == 3


def test_a_bad_url_is_a_config_error_without_secrets() -> None:
    """Only http(s) URLs with a host are scraped; the message hides the credentials."""
    with pytest.raises(ConfigError) as info:
        scrape_metrics("ftp://u:pw@example.invalid/metrics?token=x")
    assert str(info.value) == (
        "ftp://***@example.invalid/metrics?token=***: not an http(s) URL with a host and a "
        "numeric port; give one like http://127.0.0.1:8000/metrics"
    )


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert and key in one PEM file)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    pem = tmp_path_factory.mktemp("tls") / "server.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(pem)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return pem


def test_https_targets_are_verified_against_the_given_context(certificate: Path) -> None:
    """A trusted certificate scrapes; the system trust store refuses the self-signed one."""
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(certificate)
    with http_server(ok(b"up 1\n"), tls=server_side) as server:
        url = f"https://127.0.0.1:{server.port}/metrics"
        trusted = scrape_metrics(url, context=ssl.create_default_context(cafile=str(certificate)))
        untrusted, _ = timed(lambda: scrape_metrics(url))
    assert trusted.value("up") == 1
    assert isinstance(untrusted, TargetBadResponse)
    assert str(untrusted) == (
        f"{url}: its TLS certificate does not verify (self-signed certificate); pass scrape_metrics() "
        "an ssl context that trusts the app's CA"
    )


# --- pure parsing and lookups -------------------------------------------------------------

TEXT = """\
# HELP db_client_connection_count Connections.
# TYPE db_client_connection_count gauge
db_client_connection_count{pool_name="a",state="used"} 3
db_client_connection_count{pool_name="a",state="idle"} 1
db_client_connection_count{pool_name="b",state="used"} 0
# TYPE poolwarden_pool_rejections_total counter
poolwarden_pool_rejections_total{pool_name="a",reason="shed"} 2
poolwarden_pool_rejections_total{pool_name="c",reason="shed"} 5
# TYPE db_client_connection_wait_time_seconds histogram
db_client_connection_wait_time_seconds_bucket{pool_name="a",le="0.1"} 4
db_client_connection_wait_time_seconds_bucket{pool_name="a",le="+Inf"} 6
db_client_connection_wait_time_seconds_sum{pool_name="a"} 0.9
db_client_connection_wait_time_seconds_count{pool_name="a"} 6
"""


def test_lookups_by_sample_name_family_name_and_labels() -> None:
    """value/samples/total find series by sample or family name; pools() reads the OTel series."""
    result = parse_metrics(TEXT, url="http://app/metrics")
    assert result.value("db_client_connection_count", pool_name="a", state="used") == 3
    assert result.value("db_client_connection_count", pool_name="z") is None
    assert result.value("poolwarden_pool_rejections", pool_name="a") == 2
    assert result.value("poolwarden_pool_rejections_total", pool_name="c") == 5
    assert result.value("db_client_connection_wait_time_seconds_bucket", le="+Inf") == 6
    assert result.total("db_client_connection_count", pool_name="a") == 4
    assert result.total("nothing_here") == 0
    assert len(result.samples("db_client_connection_wait_time_seconds")) == 4
    assert len(result.samples("db_client_connection_wait_time_seconds_bucket")) == 2
    assert result.samples("nothing_here") == ()
    assert result.families["poolwarden_pool_rejections"].type == "counter"
    assert result.families["db_client_connection_count"].documentation == "Connections."
    assert result.pools() == ("a", "b")  # "c" only has a poolwarden_* series
    assert result.size_bytes == len(TEXT)


def test_a_result_converts_to_plain_data_for_json() -> None:
    """dataclasses.asdict gives dicts and lists only, so --json and the store can write it."""
    data = asdict(parse_metrics('up{job="x"} 1\n', taken_at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert json.loads(json.dumps(data, default=str))["families"]["up"] == {
        "name": "up",
        "type": "unknown",
        "documentation": "",
        "samples": [{"name": "up", "labels": {"job": "x"}, "value": 1.0}],
    }


def test_a_lookup_matching_several_series_says_which_labels_to_add() -> None:
    """value() never picks one of several series silently."""
    result = parse_metrics(TEXT, url="http://app/metrics")
    with pytest.raises(ValueError, match=r"^db_client_connection_count\{pool_name=\"a\"\} matches 2 series in http://app/metrics; add labels to pick one: state$"):  # fmt: skip
        result.value("db_client_connection_count", pool_name="a")


def test_a_family_name_alone_is_no_value_and_an_untyped_total_is_found() -> None:
    """value() reads samples only: a histogram's family name gives None; an untyped
    `x_total` series is found as `x` like a counter."""
    result = parse_metrics(TEXT + "scr_jobs_total 7\n")
    assert result.value("db_client_connection_wait_time_seconds", pool_name="a") is None
    assert result.value("scr_jobs") == 7
    assert result.families["scr_jobs_total"].type == "unknown"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:9000/metrics", "http://127.0.0.1:9000/metrics"),
        ("http://u:p@h:1/m", "http://***@h:1/m"),
        ("https://TOKEN@h/m", "https://***@h/m"),
        ("http://h/m?access_token=a&x=1&API_KEY=b&sig=c", "http://h/m?access_token=***&x=1&API_KEY=***&sig=***"),
        ("http://h/m?job=api&target=x#frag", "http://h/m?job=api&target=x"),
        ("http://[::1]:9/m?password=a%20b", "http://[::1]:9/m?password=***"),
    ],
)  # fmt: skip
def test_redact_url_hides_userinfo_and_credential_parameters(url: str, shown: str) -> None:
    """Userinfo and credential-looking query values are masked; everything else is kept."""
    assert redact_url(url) == shown
