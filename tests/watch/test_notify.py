"""Notifications: the Alertmanager v4 payload, console lines, webhooks to real receivers.

Every webhook test posts to a real `ThreadingHTTPServer` on 127.0.0.1 that answers from a
script (status codes, Retry-After, hanging, trickling headers), and every wait is bounded.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from poolwarden.errors import ConfigError
from poolwarden.watch import alert_fingerprint, notify, webhook
from poolwarden.watch.notify import (
    AppriseNotifier,
    ConsoleNotifier,
    Notification,
    NotifyAlert,
    alertmanager_payload,
    console_line,
    encode_payload,
)
from poolwarden.watch.webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookNotifier,
    backoff_delay,
    redact_webhook_url,
    verify_signature,
)

# --- the reference payload (REFERENCE.md §5.7, sent by Alertmanager 0.25.0) -------------

REFERENCE_FIRING = json.loads(
    r"""
{
  "receiver": "poolwarden",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {"alertname": "PoolwardenPostgresConnectionsHigh", "instance": "db1:9187", "job": "postgres", "severity": "warning"},
      "annotations": {"summary": "PostgreSQL db1:9187: more than 80% of usable connection slots in use"},
      "startsAt": "2026-11-29T14:18:19Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus.example:9090/graph?g0.expr=instance%3Apg_stat_activity_count%3Asum",
      "fingerprint": "aa022814fdad8913"
    }
  ],
  "groupLabels": {"alertname": "PoolwardenPostgresConnectionsHigh", "instance": "db1:9187"},
  "commonLabels": {"alertname": "PoolwardenPostgresConnectionsHigh", "instance": "db1:9187", "job": "postgres", "severity": "warning"},
  "commonAnnotations": {"summary": "PostgreSQL db1:9187: more than 80% of usable connection slots in use"},
  "externalURL": "http://alertmanager.example:9093",
  "version": "4",
  "groupKey": "{}:{alertname=\"PoolwardenPostgresConnectionsHigh\", instance=\"db1:9187\"}",
  "truncatedAlerts": 0
}
"""
)

LABELS = {
    "alertname": "PoolwardenPostgresConnectionsHigh",
    "instance": "db1:9187",
    "job": "postgres",
    "severity": "warning",
}
SUMMARY = "PostgreSQL db1:9187: more than 80% of usable connection slots in use"
STARTS = datetime(2026, 11, 29, 14, 18, 19, tzinfo=UTC)
ENDS = datetime(2026, 11, 29, 14, 18, 23, tzinfo=UTC)
GENERATOR = "http://prometheus.example:9090/graph?g0.expr=instance%3Apg_stat_activity_count%3Asum"


def _reference_alert(status: notify.Status = "firing", **changes: object) -> NotifyAlert:
    fields: dict[str, object] = {
        "status": status,
        "labels": LABELS,
        "annotations": {"summary": SUMMARY},
        "starts_at": STARTS,
        "ends_at": ENDS if status == "resolved" else None,
        "generator_url": GENERATOR,
    }
    fields.update(changes)
    return NotifyAlert(**fields)  # type: ignore[arg-type]


def _reference(alerts: Sequence[NotifyAlert] | None = None, **changes: object) -> Notification:
    fields: dict[str, object] = {
        "receiver": "poolwarden",
        "alerts": tuple(alerts or (_reference_alert(),)),
        "group_labels": {"alertname": LABELS["alertname"], "instance": "db1:9187"},
        "external_url": "http://alertmanager.example:9093",
    }
    fields.update(changes)
    return Notification(**fields)  # type: ignore[arg-type]


def test_payload_reproduces_the_reference_firing_notification() -> None:
    """The built payload equals Alertmanager 0.25's firing example, field for field."""
    payload = alertmanager_payload(_reference())

    assert payload == REFERENCE_FIRING
    assert list(payload) == list(REFERENCE_FIRING)
    assert list(payload["alerts"][0]) == list(REFERENCE_FIRING["alerts"][0])


def test_resolved_payload_differs_only_in_status_and_ends_at() -> None:
    """Resolved: both statuses say resolved, endsAt is set, the fingerprint is unchanged."""
    payload = alertmanager_payload(_reference([_reference_alert("resolved")]))

    expected = json.loads(json.dumps(REFERENCE_FIRING))
    expected["status"] = "resolved"
    expected["alerts"][0]["status"] = "resolved"
    expected["alerts"][0]["endsAt"] = "2026-11-29T14:18:23Z"
    assert payload == expected


def test_fingerprint_is_alertmanagers_and_depends_on_labels_only() -> None:
    """The fingerprint is Alertmanager's FNV-1a of the labels, whatever the annotations."""
    assert alert_fingerprint(LABELS) == "aa022814fdad8913"
    assert alert_fingerprint(dict(reversed(LABELS.items()))) == "aa022814fdad8913"
    assert alert_fingerprint({}) == "cbf29ce484222325"
    other = _reference_alert(annotations={"summary": "changed", "root_cause": "x"})
    assert other.fingerprint == "aa022814fdad8913"
    assert _reference_alert(fingerprint="0123456789abcdef").fingerprint == "0123456789abcdef"


def test_group_key_sorts_labels_and_quotes_values_like_go() -> None:
    """groupKey: route key, then sorted name="value" pairs joined by ", ", Go-quoted."""
    labels = {"z": "last", "a": 'say "hi"\\', "m": "tab\tnew\nline é\x7f"}
    notification = _reference(group_labels=labels, route_key='{}/{severity="critical"}')

    assert notification.group_key == (
        '{}/{severity="critical"}:{a="say \\"hi\\"\\\\", m="tab\\tnew\\nline é\\x7f", z="last"}'
    )
    assert _reference(group_labels={}).group_key == "{}:{}"


def test_common_labels_and_annotations_keep_only_pairs_equal_in_every_alert() -> None:
    """commonLabels/commonAnnotations hold the pairs every alert shares; status fires if any does."""
    first = _reference_alert(annotations={"summary": "one", "runbook": "rb"})
    second = _reference_alert(
        "resolved",
        labels={**LABELS, "instance": "db2:9187"},
        annotations={"summary": "two", "runbook": "rb"},
    )
    payload = alertmanager_payload(_reference([first, second]))

    assert payload["status"] == "firing"
    assert payload["commonLabels"] == {k: v for k, v in LABELS.items() if k != "instance"}
    assert payload["commonAnnotations"] == {"runbook": "rb"}
    assert [a["status"] for a in payload["alerts"]] == ["firing", "resolved"]
    assert _reference([second]).status == "resolved"


def test_max_alerts_truncates_and_counts_the_rest() -> None:
    """max_alerts keeps the first N alerts, counts the others, and computes over those sent."""
    alerts = [
        _reference_alert(labels={**LABELS, "instance": f"db{i}:9187"}, status=status, ends_at=ENDS)
        for i, status in enumerate(("resolved", "resolved", "firing"))
    ]
    payload = alertmanager_payload(_reference(alerts), max_alerts=2)

    assert payload["truncatedAlerts"] == 1
    assert [a["labels"]["instance"] for a in payload["alerts"]] == ["db0:9187", "db1:9187"]
    assert payload["status"] == "resolved"
    assert alertmanager_payload(_reference(alerts), max_alerts=3)["truncatedAlerts"] == 0
    with pytest.raises(ValueError, match="max_alerts"):
        alertmanager_payload(_reference(alerts), max_alerts=-1)


def test_incident_id_travels_as_an_annotation() -> None:
    """The incident id is each alert's `incident_id` annotation, not a label."""
    payload = alertmanager_payload(_reference(incident_id="inc-42"))

    assert payload["alerts"][0]["annotations"]["incident_id"] == "inc-42"
    assert payload["commonAnnotations"]["incident_id"] == "inc-42"
    assert "incident_id" not in payload["alerts"][0]["labels"]
    assert payload["alerts"][0]["fingerprint"] == "aa022814fdad8913"


def test_timestamps_are_rfc3339_utc_and_naive_times_are_refused() -> None:
    """Times are converted to UTC with a Z, fractions only when non-zero; naive times fail."""
    paris = timezone(timedelta(hours=1))
    alert = _reference_alert(
        "resolved",
        starts_at=datetime(2026, 11, 29, 15, 18, 19, 250000, tzinfo=paris),
        ends_at=datetime(2026, 11, 29, 14, 18, 23, 1, tzinfo=UTC),
    )
    sent = alertmanager_payload(_reference([alert]))["alerts"][0]

    assert sent["startsAt"] == "2026-11-29T14:18:19.25Z"
    assert sent["endsAt"] == "2026-11-29T14:18:23.000001Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        _reference_alert(starts_at=datetime(2026, 11, 29, 14, 18, 19))


def test_invalid_alerts_and_notifications_are_refused() -> None:
    """An unknown status, a resolved alert without ends_at and an empty group are errors."""
    with pytest.raises(ValueError, match="status"):
        _reference_alert(status="pending")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ends_at"):
        _reference_alert("resolved", ends_at=None)
    with pytest.raises(ValueError, match="no alert"):
        Notification(receiver="r", alerts=())


def test_encode_payload_is_compact_utf8_json() -> None:
    """The wire form is compact JSON in UTF-8 that decodes back to the payload."""
    payload = alertmanager_payload(_reference(incident_id="é-1"))
    body = encode_payload(payload)

    assert json.loads(body) == payload
    assert b", " not in body.split(b'"groupKey"')[0]
    assert "é-1".encode() in body


# --- console ----------------------------------------------------------------------------


def test_console_writes_one_line_per_alert_in_product_voice() -> None:
    """Each alert is one line: time, status, severity, alert, summary, root cause, incident."""
    firing = _reference_alert(
        labels={**LABELS, "severity": "critical"},
        annotations={
            "summary": "PostgreSQL db1:9187: 97 of 97 usable connections in use",
            "root_cause": "pool_oversized: orders-api holds 80 connections\n(pool max 20 x 4 replicas)",
        },
    )
    resolved = _reference_alert("resolved", labels={**LABELS, "instance": "db2:9187"})
    stream = io.StringIO()

    result = ConsoleNotifier(stream).send(_reference([firing, resolved], incident_id="inc-7"))

    assert stream.getvalue().splitlines() == [
        "2026-11-29T14:18:19Z FIRING critical PoolwardenPostgresConnectionsHigh: PostgreSQL"
        " db1:9187: 97 of 97 usable connections in use; root cause: pool_oversized: orders-api"
        " holds 80 connections (pool max 20 x 4 replicas) [incident inc-7]",
        f"2026-11-29T14:18:23Z RESOLVED warning PoolwardenPostgresConnectionsHigh: {SUMMARY}"
        " (after 4s) [incident inc-7]",
    ]
    assert (result.ok, result.attempts, result.status, result.target) == (True, 1, 0, "console")


def test_console_line_strips_terminal_escapes_and_falls_back_to_labels() -> None:
    """Control characters never reach the terminal; without a summary the labels are shown."""
    alert = _reference_alert(annotations={"summary": "evil\x1b[2Jclear\r\nline"})
    bare = _reference_alert(labels={"alertname": "X", "pool": "orders"}, annotations={})

    assert "\x1b" not in console_line(alert)
    assert console_line(alert).endswith("evil [2Jclear line")
    assert console_line(bare) == "2026-11-29T14:18:19Z FIRING none X: pool=orders"


def test_console_reports_a_closed_stream_without_raising() -> None:
    """Writing to a closed stream gives ok=False and the reason, not an exception."""
    stream = io.StringIO()
    stream.close()

    result = ConsoleNotifier(stream).send(_reference())

    assert not result.ok
    assert "closed file" in result.detail


def test_console_defaults_to_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream the lines go to sys.stdout as it is at send time."""
    ConsoleNotifier().send(_reference())

    assert capsys.readouterr().out.count("\n") == 1


# --- a real HTTP receiver ---------------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes] | str  # or "hang" / "drip"
OK: Reply = (200, {}, b"")


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A loopback HTTP server answering POSTs from a script of replies."""

    replies: list[Reply]
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hook"

    def next_reply(self, received: Received) -> Reply:
        self.requests.append(received)
        return self.replies.pop(0) if self.replies else OK

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests."""
        return [b.at - a.at for a, b in zip(self.requests, self.requests[1:], strict=False)]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = receiver.next_reply(Received(self.path, headers, body, time.monotonic()))
            if reply == "hang":
                receiver.release.wait(10)
            elif reply == "drip":
                self._drip()
            else:
                assert not isinstance(reply, str)
                self._answer(*reply)

        def _answer(self, code: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drip(self) -> None:
            # One header line every 0.1 s: each read finishes well within a socket timeout.
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(90):
                if receiver.release.wait(0.1):
                    return
                self.wfile.write(f"X-Slow-{i}: y\r\n".encode())
                self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:
            """Keep test output clean."""

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (the timeout tests) is expected; say nothing."""


@pytest.fixture
def serve() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on free loopback ports; stop them all after the test."""
    started: list[tuple[Receiver, _QuietServer, threading.Thread]] = []

    def start(*replies: Reply, tls: ssl.SSLContext | None = None) -> Receiver:
        receiver = Receiver(list(replies), scheme="https" if tls else "http")
        server = _QuietServer(("127.0.0.1", 0), _handler(receiver))
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        receiver.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((receiver, server, thread))
        return receiver

    yield start
    for receiver, server, thread in started:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (key and certificate in one PEM file)."""
    where = tmp_path_factory.mktemp("tls")
    pem = where / "server.pem"
    openssl = shutil.which("openssl")
    assert openssl, "the TLS tests need the openssl command (Debian package openssl)"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pem.write_text((where / "cert.pem").read_text() + (where / "key.pem").read_text())
    return pem


def _server_tls(certificate: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    return context


def _fast(url: str, **options: object) -> WebhookNotifier:
    settings: dict[str, object] = {"timeout": 2.0, "retries": 3, "backoff": (0.05, 0.2)}
    settings.update(options)
    return WebhookNotifier(url, **settings)  # type: ignore[arg-type]


def test_webhook_receiver_gets_exactly_the_built_payload(serve: Callable[..., Receiver]) -> None:
    """The receiver decodes the same document alertmanager_payload builds, as JSON."""
    receiver = serve(OK)
    notification = _reference(incident_id="inc-1")

    result = _fast(receiver.url).send(notification)

    assert result.ok, result.detail
    assert (result.attempts, result.status) == (1, 200)
    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == alertmanager_payload(notification)
    assert len(request.headers[DELIVERY_HEADER.lower()]) == 32
    assert SIGNATURE_HEADER.lower() not in request.headers
    assert result.target == receiver.url
    assert "delivered, HTTP 200, 1 attempt in" in result.detail


def test_webhook_signature_verifies_with_the_secret_only(serve: Callable[..., Receiver]) -> None:
    """The signature header verifies over timestamp and body with the secret, and nothing else."""
    receiver = serve(OK)
    _fast(receiver.url, hmac_secret="s3cret-key").send(_reference())

    [request] = receiver.requests
    signature = request.headers[SIGNATURE_HEADER.lower()]
    stamp = request.headers[TIMESTAMP_HEADER.lower()]
    assert signature.startswith("sha256=")
    assert len(signature) == len("sha256=") + 64
    assert abs(int(stamp) - time.time()) < 60
    assert verify_signature(request.body, signature=signature, timestamp=stamp, secret="s3cret-key")
    assert verify_signature(
        request.body, signature=signature, timestamp=stamp, secret=b"s3cret-key"
    )
    assert not verify_signature(request.body, signature=signature, timestamp=stamp, secret="other")
    assert not verify_signature(
        request.body + b" ", signature=signature, timestamp=stamp, secret="s3cret-key"
    )
    assert not verify_signature(
        request.body, signature=signature, timestamp=str(int(stamp) + 1), secret="s3cret-key"
    )
    replayed_later = int(stamp) + 301
    assert not verify_signature(
        request.body, signature=signature, timestamp=stamp, secret="s3cret-key", now=replayed_later
    )


def test_webhook_retries_503_twice_then_succeeds_with_backoff(
    serve: Callable[..., Receiver],
) -> None:
    """503, 503, 200: delivered on the third attempt, after growing pauses, same delivery id."""
    receiver = serve((503, {}, b"busy"), (503, {}, b"busy"), OK)

    result = _fast(receiver.url, backoff=(0.1, 0.15), jitter=0.0).send(_reference())

    assert result.ok, result.detail
    assert (result.attempts, result.status) == (3, 200)
    assert len(receiver.requests) == 3
    first_gap, second_gap = receiver.gaps()
    assert first_gap >= 0.1
    assert second_gap >= 0.15
    assert len({r.headers[DELIVERY_HEADER.lower()] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1


def test_webhook_does_not_retry_a_400(serve: Callable[..., Receiver]) -> None:
    """A 4xx other than 429 is final: one request, ok=False, the status and the reason."""
    receiver = serve((400, {}, b"missing field 'alerts'"))

    result = _fast(receiver.url).send(_reference())

    assert not result.ok
    assert (result.attempts, result.status) == (1, 400)
    assert len(receiver.requests) == 1
    assert "HTTP 400 Bad Request: missing field 'alerts'" in result.detail
    assert "not retried" in result.detail


def test_webhook_gives_up_on_a_hung_receiver_within_the_bound(
    serve: Callable[..., Receiver],
) -> None:
    """A receiver that never answers: each attempt times out, the send ends within max_total_s."""
    receiver = serve("hang", "hang")
    notifier = _fast(receiver.url, timeout=0.3, retries=1, backoff=(0.05, 0.05), retry_after_cap=0)

    start = time.monotonic()
    result = notifier.send(_reference())
    elapsed = time.monotonic() - start

    assert not result.ok
    assert (result.attempts, result.status) == (2, 0)
    assert "no complete answer within 0.3s (timeout)" in result.detail
    assert len(receiver.requests) == 2
    assert notifier.max_total_s == pytest.approx(0.65)
    assert 0.6 <= elapsed <= notifier.max_total_s + 0.5


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_webhook_cuts_a_trickling_receiver_at_the_timeout(
    serve: Callable[..., Receiver], certificate: Path, scheme: str
) -> None:
    """Headers trickling in under the socket timeout still end the attempt at `timeout`."""
    tls = _server_tls(certificate) if scheme == "https" else None
    receiver = serve("drip", tls=tls)
    client_tls = ssl.create_default_context(cafile=certificate)

    start = time.monotonic()
    notifier = _fast(receiver.url, timeout=0.5, retries=0, ssl_context=client_tls)
    result = notifier.send(_reference())
    elapsed = time.monotonic() - start

    assert not result.ok
    assert "timeout" in result.detail
    assert elapsed < 1.5


def test_webhook_delivers_over_https_with_a_private_ca(
    serve: Callable[..., Receiver], certificate: Path
) -> None:
    """With ssl_context trusting the receiver's CA, HTTPS delivery works like HTTP."""
    receiver = serve(OK, tls=_server_tls(certificate))
    trusting = ssl.create_default_context(cafile=certificate)

    result = _fast(receiver.url, ssl_context=trusting).send(_reference())

    assert result.ok, result.detail
    assert json.loads(receiver.requests[0].body) == alertmanager_payload(_reference())


def test_webhook_does_not_retry_an_untrusted_certificate(
    serve: Callable[..., Receiver], certificate: Path
) -> None:
    """The default context refuses a self-signed certificate; a retry cannot fix that."""
    receiver = serve(OK, tls=_server_tls(certificate))

    result = _fast(receiver.url).send(_reference())

    assert not result.ok
    assert (result.attempts, result.status) == (1, 0)
    assert "TLS certificate refused" in result.detail
    assert receiver.requests == []


def test_webhook_honours_retry_after_on_429(serve: Callable[..., Receiver]) -> None:
    """429 with Retry-After: 1 waits about a second (not the 0.01 s backoff), then delivers."""
    receiver = serve((429, {"Retry-After": "1"}, b""), OK)

    result = _fast(receiver.url, backoff=(0.01, 0.01)).send(_reference())

    assert result.ok, result.detail
    assert result.attempts == 2
    [gap] = receiver.gaps()
    assert 0.95 <= gap < 3


def test_webhook_caps_a_long_retry_after(serve: Callable[..., Receiver]) -> None:
    """A Retry-After of an hour waits only retry_after_cap."""
    receiver = serve((503, {"Retry-After": "3600"}, b""), OK)

    start = time.monotonic()
    result = _fast(receiver.url, retry_after_cap=0.2).send(_reference())

    assert result.ok, result.detail
    assert receiver.gaps()[0] >= 0.19
    assert time.monotonic() - start < 2


def test_webhook_retries_a_refused_connection_and_reports_it() -> None:
    """Nothing listening: every attempt is made, then ok=False saying the connection failed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = _fast(f"http://127.0.0.1:{port}/hook", retries=2).send(_reference())

    assert not result.ok
    assert (result.attempts, result.status) == (3, 0)
    assert "ConnectionRefusedError" in result.detail
    assert "check that the receiver is up" in result.detail


def test_webhook_does_not_follow_redirects(serve: Callable[..., Receiver]) -> None:
    """A 302 is final: the signed payload never follows it to another address."""
    other = serve(OK)
    receiver = serve((302, {"Location": other.url}, b""))

    result = _fast(receiver.url, hmac_secret="k").send(_reference())

    assert not result.ok
    assert (result.attempts, result.status) == (1, 302)
    assert "redirects are not followed" in result.detail
    assert other.requests == []


def test_webhook_never_shows_secrets_in_results_or_logs(
    serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """Password, query token, HMAC key and header values appear in no result and no log."""
    caplog.set_level(logging.DEBUG)
    secrets = ["pa55word-x", "t0ken-value", "hmac-s3cret", "bear3r-token"]
    echo = b"bad auth: Bearer bear3r-token, token=t0ken-value, key hmac-s3cret"
    receiver = serve((500, {}, echo), (500, {}, echo))
    url = f"http://alice:pa55word-x@127.0.0.1:{receiver.port}/hook?token=t0ken-value&team=db"
    notifier = _fast(
        url, retries=1, hmac_secret="hmac-s3cret", headers={"X-Api-Key": "Bearer bear3r-token"}
    )

    result = notifier.send(_reference())

    assert not result.ok
    assert result.attempts == 2
    shown = f"{result!r} {notifier.target} {caplog.text}"
    assert "HTTP 500 Internal Server Error: bad auth: ***, token=***, key ***" in result.detail
    for secret in secrets:
        assert secret not in shown
    assert notifier.target == f"http://***@127.0.0.1:{receiver.port}/hook?token=***&team=***"
    basic = base64.b64encode(b"alice:pa55word-x").decode()
    assert receiver.requests[0].headers["authorization"] == f"Basic {basic}"
    assert receiver.requests[0].path == "/hook?token=t0ken-value&team=db"
    assert basic not in shown


def test_webhook_rejects_bad_settings_without_showing_the_url() -> None:
    """A bad URL or option is a ConfigError naming the redacted target and the fix."""
    with pytest.raises(ConfigError, match=r"http:// or https://") as excinfo:
        WebhookNotifier("ftp://bob:hunter22@example.org/x")
    assert "hunter22" not in str(excinfo.value)
    with pytest.raises(ConfigError, match="http:// or https://"):
        WebhookNotifier("http:///no-host")
    with pytest.raises(ConfigError, match="timeout"):
        WebhookNotifier("http://127.0.0.1/x", timeout=0)
    with pytest.raises(ConfigError, match="backoff"):
        WebhookNotifier("http://127.0.0.1/x", backoff=(2.0, 1.0))
    with pytest.raises(ConfigError, match="hmac_secret"):
        WebhookNotifier("http://127.0.0.1/x", hmac_secret="")


def test_max_alerts_applies_to_what_the_webhook_sends(serve: Callable[..., Receiver]) -> None:
    """WebhookNotifier(max_alerts=1) sends one alert and truncatedAlerts for the rest."""
    receiver = serve(OK)
    alerts = [_reference_alert(labels={**LABELS, "instance": f"db{i}"}) for i in range(3)]

    assert _fast(receiver.url, max_alerts=1).send(_reference(alerts)).ok

    sent = json.loads(receiver.requests[0].body)
    assert (len(sent["alerts"]), sent["truncatedAlerts"]) == (1, 2)


# --- pure helpers -----------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    """Pauses double from the first to the cap; jitter takes off at most its fraction."""
    assert [backoff_delay(n, (0.5, 2.0), 0.0, 0.9) for n in range(1, 6)] == [
        0.5,
        1.0,
        2.0,
        2.0,
        2.0,
    ]
    assert backoff_delay(3, (0.5, 2.0), 0.25, 0.0) == 2.0
    assert backoff_delay(3, (0.5, 2.0), 0.25, 0.999) == pytest.approx(1.5005)


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """Retry-After is delta-seconds or an HTTP-date; nonsense is ignored."""
    now = datetime(2026, 11, 29, 14, 18, 19, tzinfo=UTC).timestamp()
    parse = webhook._retry_after_seconds

    assert parse("7", now) == 7.0
    assert parse("Sun, 29 Nov 2026 14:18:29 GMT", now) == 10.0
    assert parse("Sun, 29 Nov 2026 14:18:09 GMT", now) == 0.0
    assert parse("soon", now) is None
    assert parse("-3", now) is None
    assert parse(None, now) is None


def test_redact_webhook_url_hides_userinfo_and_query_values() -> None:
    """redact_webhook_url keeps scheme, host, port and path; user, password and query values go."""
    assert redact_webhook_url("https://u:p@hooks.example:8443/a/b?k=v&x=#frag") == (
        "https://***@hooks.example:8443/a/b?k=***&x=***"
    )
    assert redact_webhook_url("http://[::1]:9/x") == "http://[::1]:9/x"
    assert redact_webhook_url("http://h:notaport/x") == "<unparsable URL, 19 characters>"


# --- apprise ----------------------------------------------------------------------------


def test_apprise_without_the_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When apprise cannot be imported, constructing the notifier says `pip install apprise`."""
    monkeypatch.setitem(sys.modules, "apprise", None)

    with pytest.raises(ConfigError, match="pip install apprise"):
        AppriseNotifier("json://127.0.0.1:9/hook")


def test_apprise_delivers_to_a_real_json_endpoint(
    serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """Through apprise's json:// scheme the receiver gets the title and the console lines."""
    pytest.importorskip("apprise", reason="optional extra; the CI installs it with the test extra")
    caplog.set_level(logging.DEBUG, logger="poolwarden")
    receiver = serve(OK)
    notifier = AppriseNotifier(f"json://bob:pw-s3cret@127.0.0.1:{receiver.port}/hook")
    notification = _reference(
        [_reference_alert(annotations={"summary": SUMMARY, "runbook": "raise max_connections"})],
        incident_id="inc-9",
    )

    result = notifier.send(notification)

    assert result.ok, result.detail
    [request] = receiver.requests
    sent = json.loads(request.body)
    assert sent["title"] == "[FIRING] PoolwardenPostgresConnectionsHigh"
    assert sent["message"].splitlines() == [
        console_line(notification.alerts[0], incident_id="inc-9"),
        "runbook: raise max_connections",
    ]
    assert sent["type"] == "warning"
    assert result.target == "json://…"
    assert "pw-s3cret" not in f"{result!r} {caplog.text}"


def test_apprise_reports_an_unreachable_endpoint_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused connection is ok=False with a reason; nothing raises."""
    pytest.importorskip("apprise", reason="optional extra; the CI installs it with the test extra")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = AppriseNotifier([f"json://127.0.0.1:{port}/hook"]).send(_reference())

    assert not result.ok
    assert "not delivered" in result.detail


def test_apprise_refuses_an_unknown_url_without_showing_it() -> None:
    """A URL apprise does not know is a ConfigError naming only its scheme."""
    pytest.importorskip("apprise", reason="optional extra; the CI installs it with the test extra")

    with pytest.raises(ConfigError, match=r"apprise URL #1 \(nosuch://…\)") as excinfo:
        AppriseNotifier(["nosuch://token-abc@host"])
    assert "token-abc" not in str(excinfo.value)
    with pytest.raises(ConfigError, match="at least one"):
        AppriseNotifier([])


def test_all_lists_the_public_names() -> None:
    """__all__ holds every public name the module defines, and nothing else."""
    public = {
        name
        for name, value in vars(notify).items()
        if not name.startswith("_")
        and getattr(value, "__module__", notify.__name__) == notify.__name__
        and (callable(value) or (name.isupper() and isinstance(value, str)))
    }
    public -= {"logger", "GO_ZERO_TIME", "REDACTED", "annotations"}
    public.add("Status")  # a typing alias: its __module__ is typing
    assert set(notify.__all__) == public
