"""The HTTP half of `scrape`: one GET under one hard deadline, with the standard library.

`fetch` bounds the whole exchange (name lookup, connect, TLS handshake, headers and body):
every socket read waits only for what is left of the deadline, so a target that accepts and
never answers, or trickles bytes forever, costs the caller `timeout` and no more. Every
failure becomes the `ProbeError` that explains it, naming the URL through `redact_url`.
"""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from poolwarden.errors import ConfigError, TargetBadResponse, TargetTimeout, TargetUnreachable

# The classic text format first: it is what prometheus_client's text parser reads.
ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
REDACTED = "***"
# Query parameters whose values are credentials more often than not; over-redacting is safe.
_SECRET_PARAM = re.compile(r"token|secret|pass|pwd|key|auth|sig|session|credential|jwt", re.I)
_READ_CHUNK = 65536


def fetch(
    url: str,
    shown: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None,
    context: ssl.SSLContext | None,
) -> tuple[bytes, str]:
    """GET `url` within `timeout` seconds; return the body and its Content-Type."""
    request = _Request.from_url(url, shown, headers, context)
    return _Exchange(request, time.monotonic() + timeout, timeout, max_bytes).run()


def redact_url(url: str) -> str:
    """Return `url` without userinfo or credential-like query values, and without a fragment."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(_redact_param(p) for p in parts.query.split("&")) if parts.query else ""
    head = f"{parts.scheme}://{netloc}" if parts.scheme or netloc else ""
    return f"{head}{parts.path}{'?' + query if query else ''}"


def _redact_param(param: str) -> str:
    key, eq, _ = param.partition("=")
    return f"{key}={REDACTED}" if eq and _SECRET_PARAM.search(unquote(key)) else param


@dataclass(frozen=True, slots=True)
class _Request:
    """Where to connect and what to send, taken apart from the URL."""

    shown: str
    host: str
    port: int
    path: str
    headers: dict[str, str]
    tls: ssl.SSLContext | None

    @classmethod
    def from_url(
        cls, url: str, shown: str, extra: Mapping[str, str] | None, context: ssl.SSLContext | None
    ) -> _Request:
        problem = ConfigError(
            f"{shown}: not an http(s) URL with a host and a numeric port; "
            "give one like http://127.0.0.1:8000/metrics"
        )
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise problem from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise problem
        headers = {"Accept": ACCEPT, "User-Agent": "poolwarden-scrape"}
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        headers.update(extra or {})
        tls = (context or ssl.create_default_context()) if scheme == "https" else None
        path = (parts.path or "/metrics") + (f"?{parts.query}" if parts.query else "")
        return cls(shown, parts.hostname, port or (443 if tls else 80), path, headers, tls)


class _Exchange:
    """One GET under one deadline; turns every failure into the `ProbeError` that explains it."""

    def __init__(self, request: _Request, deadline: float, timeout: float, max_bytes: int):
        self.request = request
        self.deadline = deadline
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.phase = "connecting"
        self.received = 0

    def run(self) -> tuple[bytes, str]:
        """Return the body and its Content-Type."""
        conn = http.client.HTTPConnection(self.request.host, self.request.port)
        sock: socket.socket | None = None
        try:
            sock = self._connect()
            conn.sock = _DeadlineSocket(sock, self.deadline)
            self.phase = "waiting for the response"
            conn.request("GET", self.request.path, headers=self.request.headers)
            response = conn.getresponse()
            self._check_status(response)
            self.phase = "reading the body"
            return self._read_body(response), response.getheader("Content-Type", "")
        except TimeoutError:
            raise self._timeout() from None
        except ssl.SSLCertVerificationError as exc:
            raise self._bad(
                f"its TLS certificate does not verify ({exc.verify_message}); pass scrape_metrics() "
                "an ssl context that trusts the app's CA"
            ) from None
        except (http.client.HTTPException, OSError) as exc:
            raise self._bad(f"the connection broke while {self.phase} ({_reason(exc)})") from None
        finally:
            conn.close()
            if sock is not None:
                sock.close()

    def _connect(self) -> socket.socket:
        r = self.request
        try:
            sock = _open_socket(r.host, r.port, self.deadline)
        except TimeoutError:
            raise self._timeout() from None
        except OSError as exc:
            raise TargetUnreachable(
                f"{r.shown}: cannot connect ({_reason(exc)}); check the host and port, and "
                "that the app is running and serves its metrics there",
                target=r.shown,
            ) from None
        if r.tls is None:
            return sock
        self.phase = "in the TLS handshake"
        return _tls_handshake(sock, r.tls, r.host, self.deadline)

    def _check_status(self, response: http.client.HTTPResponse) -> None:
        if response.status == 200:
            return
        where = response.getheader("Location")
        moved = f" to {redact_url(where)}; scrape that URL instead" if where else ""
        raise self._bad(
            f"HTTP {response.status} {response.reason}{moved}; expected 200 with Prometheus "
            "text — check the path (usually /metrics) and that the app is healthy",
            status=response.status,
        )

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        announced = response.getheader("Content-Length")
        if announced and announced.isdigit() and int(announced) > self.max_bytes:
            raise self._too_large(f"it announces {int(announced)} bytes")
        chunks: list[bytes] = []
        # Each pass receives at least one byte or ends; the size cap and the socket's
        # deadline bound the loop.
        while chunk := response.read1(_READ_CHUNK):
            self.received += len(chunk)
            if self.received > self.max_bytes:
                raise self._too_large(f"{self.received} bytes read so far")
            chunks.append(chunk)
        # http.client asked for `Accept-Encoding: identity`; a server that compresses anyway
        # is broken, and inflating its body would need a second size cap.
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise self._bad(f"unsupported Content-Encoding {encoding!r}", status=200)
        return b"".join(chunks)

    def _timeout(self) -> TargetTimeout:
        got = f", {self.received} body bytes so far" if self.received else ""
        shown = self.request.shown
        return TargetTimeout(
            f"{shown}: no complete answer within {self.timeout:g} s ({self.phase}{got}); the "
            "app may be hung or overloaded — raise the scrape timeout only if it is just slow",
            target=shown,
            timeout=self.timeout,
        )

    def _too_large(self, detail: str) -> TargetBadResponse:
        return self._bad(
            f"the body is larger than max_bytes={self.max_bytes} ({detail}); raise max_bytes "
            "or drop high-cardinality series",
            status=200,
        )

    def _bad(self, detail: str, *, status: int | None = None) -> TargetBadResponse:
        shown = self.request.shown
        return TargetBadResponse(f"{shown}: {detail}", target=shown, status=status)


class _DeadlineSocket:
    """A connected socket whose every send and receive waits only for what is left of the
    deadline; `http.client` reads responses through `makefile`."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_remaining(self._deadline))
        self._sock.sendall(data)

    def close(self) -> None:
        # http.client closes the connection as soon as it sees `Connection: close`, while the
        # body is still to be read through `makefile`; the exchange closes the socket after.
        pass


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        return self._sock.recv_into(buffer)


def _remaining(deadline: float) -> float:
    """Return the seconds left; TimeoutError once there are none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _open_socket(host: str, port: int, deadline: float) -> socket.socket:
    """Connect to the first address of `host` that accepts, all before `deadline`."""
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last


def _resolve(host: str, port: int, deadline: float) -> list[Any]:
    """Return getaddrinfo's answer, giving up at `deadline` (the resolver has no timeout)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    answer: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            answer.append(exc)
        finally:
            done.set()

    # A daemon thread: a hung lookup finishes on its own later without holding the caller.
    threading.Thread(target=lookup, name=f"poolwarden-resolve-{host}", daemon=True).start()
    if not done.wait(_remaining(deadline)):
        raise TimeoutError(f"resolving {host}")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return list(answer[0])


def _tls_handshake(
    sock: socket.socket, context: ssl.SSLContext, host: str, deadline: float
) -> ssl.SSLSocket:
    """Wrap `sock` in TLS, the handshake bounded as a whole by `deadline`."""
    sock.setblocking(False)
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    try:
        # Each pass waits for the socket to be ready, at most until the deadline.
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                ready = select.select([tls], [], [], _remaining(deadline))[0]
            except ssl.SSLWantWriteError:
                ready = select.select([], [tls], [], _remaining(deadline))[1]
            if not ready:
                raise TimeoutError("TLS handshake")
    except BaseException:
        tls.close()
        raise
    tls.setblocking(True)
    return tls


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__
