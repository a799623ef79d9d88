"""One HTTP/1.1 request under one hard deadline, with the standard library.

`Exchange` bounds the whole exchange (name lookup, connect, TLS handshake, send, headers and
body): every socket call waits only for what is left of the deadline, and a timer shuts the
socket down when it passes, so a peer that accepts and never answers, or trickles bytes
forever, costs `timeout` and no more. Redirects are not followed (a 3xx is an answer like
any other), proxy variables are not read, and a URL's ``user:password@`` becomes Basic auth.
A request that gets no complete answer raises `HTTPFailure`, which the callers (scrape and
the webhook notifier) turn into their own error or result; `redact_url` is how they show URLs.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import ipaddress
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "CONNECTING",
    "Exchange",
    "HANDSHAKE",
    "HTTPFailure",
    "READING",
    "REDACTED",
    "Url",
    "WAITING",
    "first_line",
    "parse_url",
    "redact_url",
]

# The phases of an exchange, as the messages name them.
CONNECTING = "connecting"
HANDSHAKE = "in the TLS handshake"
WAITING = "waiting for the response"
READING = "reading the body"
REDACTED = "***"
# Query parameters whose values are credentials more often than not; over-redacting is safe.
_SECRET_PARAM = re.compile(r"token|secret|pass|pwd|key|auth|sig|session|credential|jwt", re.I)
_READ_CHUNK = 65536


def redact_url(url: str, *, every_query_value: bool = False) -> str:
    """Return `url` without userinfo, credential-like query values or fragment.

    With `every_query_value` the value of every query parameter is hidden, not only those
    whose name looks like a credential. A URL that does not parse is shown by its length.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - reading it is what checks it
    except ValueError:
        return f"<unparsable URL, {len(url)} characters>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    params = (_redact_param(p, every_query_value) for p in parts.query.split("&") if p)
    query = "&".join(params)
    head = f"{parts.scheme}://{netloc}" if parts.scheme or netloc else ""
    return f"{head}{parts.path}{'?' + query if query else ''}"


def _redact_param(param: str, every: bool) -> str:
    key, eq, _ = param.partition("=")
    if every or (eq and _SECRET_PARAM.search(unquote(key))):
        return f"{key}={REDACTED}"
    return param


@dataclass(frozen=True, slots=True)
class Url:
    """Where to connect and what to ask for, taken apart from an http(s) URL."""

    tls: bool  # https
    host: str  # lower case, IPv6 without brackets
    port: int
    target: str  # the path and query of the request line
    authorization: str  # "Basic ..." from the URL's userinfo, or ""


def parse_url(url: str, *, default_path: str = "/") -> Url:
    """Take `url` apart; ValueError unless it is http(s) with a host and a numeric port."""
    parts = urlsplit(url.strip())
    port = parts.port
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    authorization = ""
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    tls = scheme == "https"
    target = (parts.path or default_path) + (f"?{parts.query}" if parts.query else "")
    return Url(tls, parts.hostname, port or (443 if tls else 80), target, authorization)


class HTTPFailure(Exception):
    """No complete answer: the phase it stopped in, why, and whether time ran out.

    Never leaves poolwarden: the callers turn it into a `ProbeError` or a send result.
    """

    def __init__(self, phase: str, cause: BaseException, *, timed_out: bool, received: int):
        super().__init__(f"{phase}: {first_line(cause)}")
        self.phase = phase
        self.cause = cause
        self.timed_out = timed_out
        self.received = received  # body bytes read before it stopped


class Exchange:
    """One request and its answer under one deadline, which starts now.

    Use it as a context manager, then `send` and `read`; leaving it closes the connection.
    Both raise `HTTPFailure`; `context` verifies https (default: the system's trust store).
    """

    def __init__(self, url: Url, *, timeout: float, context: ssl.SSLContext | None = None):
        self.url = url
        self.phase = CONNECTING
        self.received = 0
        self._deadline = time.monotonic() + timeout
        self._context = context
        self._watchdog = _Watchdog()
        self._sockets: list[socket.socket] = []
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> Exchange:
        self._watchdog.start(self._deadline)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._watchdog.stop()
        if self._conn is not None:
            self._conn.close()
        for sock in self._sockets:
            sock.close()

    @property
    def expired(self) -> bool:
        """Return whether the deadline has passed."""
        return self._watchdog.fired or time.monotonic() >= self._deadline

    def send(
        self, method: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> http.client.HTTPResponse:
        """Connect, send the request and return the response once its head has arrived."""
        try:
            sock = self._connect()
            self._conn = http.client.HTTPConnection(self.url.host, self.url.port)
            # Host carries the port unless it is the scheme's own.
            self._conn.default_port = 443 if self.url.tls else 80
            self._conn.sock = _DeadlineSocket(sock, self._deadline, lambda: self.expired)
            self.phase = WAITING
            self._conn.request(method, self.url.target, body=body, headers=self._headers(headers))
            response = self._conn.getresponse()
        except (http.client.HTTPException, OSError) as exc:
            raise self._failure(exc) from None
        self.phase = READING
        return response

    def read(self, response: http.client.HTTPResponse, limit: int) -> bytes:
        """Read the body until its end or until `limit` bytes, whichever comes first."""
        chunks: list[bytes] = []
        got = 0
        try:
            # Each pass receives at least one byte or ends; `limit` and the deadline bound it.
            while got < limit and (chunk := response.read1(min(_READ_CHUNK, limit - got))):
                got += len(chunk)
                self.received += len(chunk)
                chunks.append(chunk)
        except (http.client.HTTPException, OSError) as exc:
            raise self._failure(exc) from None
        return b"".join(chunks)

    def _connect(self) -> socket.socket:
        sock = _open_socket(self.url.host, self.url.port, self._deadline, self._track)
        if not self.url.tls:
            return sock
        self.phase = HANDSHAKE
        context = self._context or ssl.create_default_context()
        return _tls_handshake(sock, context, self.url.host, self._deadline, self._track)

    def _track(self, sock: socket.socket) -> None:
        self._sockets.append(sock)
        self._watchdog.track(sock)

    def _headers(self, given: Mapping[str, str]) -> dict[str, str]:
        headers = dict(given)
        names = {name.lower() for name in headers}
        if self.url.authorization and "authorization" not in names:
            headers["Authorization"] = self.url.authorization
        if "connection" not in names:
            headers["Connection"] = "close"  # one request per connection, closed after it
        return headers

    def _failure(self, exc: BaseException) -> HTTPFailure:
        # A socket the watchdog shut down fails like a broken one: it is still the deadline.
        timed_out = isinstance(exc, TimeoutError) or self.expired
        return HTTPFailure(self.phase, exc, timed_out=timed_out, received=self.received)


class _Watchdog:
    """Shut the exchange's sockets down once its deadline passes.

    The per-call waits bound each socket call; this is the backstop for a call that blocks
    outside them (a TLS read assembling a record, a library call we do not see): shutting
    the socket down wakes it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stopped = False
        self.fired = False
        self._timer: threading.Timer | None = None

    def start(self, deadline: float) -> None:
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._stopped = True
            self._sockets.clear()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stopped:
                return
            self._sockets.append(sock)
            if self.fired:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    # The base method: SSLSocket.shutdown would also drop its TLS state under the reader.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _DeadlineSocket:
    """A connected socket whose every send and receive waits only for what is left of the
    deadline; `http.client` reads responses through `makefile`."""

    def __init__(self, sock: socket.socket, deadline: float, expired: Callable[[], bool]):
        self._sock = sock
        self._deadline = deadline
        self._expired = expired

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline, self._expired))

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_remaining(self._deadline))
        self._sock.sendall(data)

    def close(self) -> None:
        # http.client closes the connection as soon as it sees `Connection: close`, while the
        # body is still to be read through `makefile`; the exchange closes the socket after.
        pass


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: float, expired: Callable[[], bool]):
        self._sock = sock
        self._deadline = deadline
        self._expired = expired

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        count = self._sock.recv_into(buffer)
        # A socket the watchdog shut down reads as the end of the answer; http.client would
        # take truncated headers or a truncated body for complete ones.
        if count == 0 and self._expired():
            raise TimeoutError("deadline passed")
        return count


def _remaining(deadline: float) -> float:
    """Return the seconds left; TimeoutError once there are none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _open_socket(
    host: str, port: int, deadline: float, track: Callable[[socket.socket], None]
) -> socket.socket:
    """Connect to the first address of `host` that accepts, all before `deadline`."""
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        track(sock)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(address)
        except TimeoutError:
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
    sock: socket.socket,
    context: ssl.SSLContext,
    host: str,
    deadline: float,
    track: Callable[[socket.socket], None],
) -> ssl.SSLSocket:
    """Wrap `sock` in TLS, the handshake bounded as a whole by `deadline`."""
    sock.setblocking(False)
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    track(tls)
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
    tls.setblocking(True)
    return tls


def first_line(exc: BaseException) -> str:
    """Return the first line of `exc`'s message (120 characters at most), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__
