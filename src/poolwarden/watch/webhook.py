"""Post alerts to an Alertmanager-compatible webhook, with retries and an optional signature.

`WebhookNotifier` posts `alertmanager_payload(notification)` through `poolwarden._http` (one
hard wall-clock deadline per attempt, no redirects, no proxies), retries connection errors,
timeouts, 5xx and 429 (honouring a capped Retry-After) with jittered exponential backoff,
and can sign each request with HMAC-SHA256 (`sign_body`; receivers use `verify_signature`).
Secrets (the HMAC key, a URL's password or query values, header values) never appear in a
result or a log line. Reference: docs/watch-notify.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import logging
import math
import random
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from poolwarden._http import REDACTED, Exchange, HTTPFailure, parse_url, redact_url
from poolwarden.errors import ConfigError
from poolwarden.watch.notify import (
    _CONTROL,
    Notification,
    SendResult,
    alertmanager_payload,
    encode_payload,
)

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookNotifier",
    "backoff_delay",
    "redact_webhook_url",
    "sign_body",
    "verify_signature",
]

# The notifiers share one logger: people configure "notifications", not modules.
logger = logging.getLogger("poolwarden.watch.notify")

SIGNATURE_HEADER = "X-Poolwarden-Signature"
TIMESTAMP_HEADER = "X-Poolwarden-Timestamp"
DELIVERY_HEADER = "X-Poolwarden-Delivery"

_BODY_SNIPPET = 160
_READ_LIMIT = 65536


def sign_body(body: bytes, secret: str | bytes, timestamp: int) -> str:
    """Return ``sha256=<hex>``: HMAC-SHA256 with `secret` over ``b"<timestamp>." + body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    body: bytes,
    *,
    signature: str,
    timestamp: str,
    secret: str | bytes,
    now: float | None = None,
    tolerance_s: float = 300.0,
) -> bool:
    """Check a received request: the MAC matches and the timestamp is within tolerance.

    A receiver calls this with the raw body bytes and the two header values; a replayed
    request fails once its timestamp is older than `tolerance_s`.
    """
    if not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign_body(body, secret, int(timestamp)), signature)


def backoff_delay(retry: int, backoff: tuple[float, float], jitter: float, rand: float) -> float:
    """Return the pause before retry number `retry` (1-based): ``first * 2**(retry-1)``.

    Capped at ``backoff[1]``, then shortened by up to `jitter` (a fraction) times `rand`
    (uniform in [0, 1)) so that many watchers do not retry in lockstep; never above the cap.
    """
    first, cap = backoff
    delay = min(cap, first * 2.0 ** (retry - 1))
    return delay * (1.0 - jitter * rand)


def redact_webhook_url(url: str) -> str:
    """Return `url` as webhook results show it: no userinfo and no query value at all.

    Webhook URLs carry tokens under any parameter name, so every value is hidden
    (`redact_url` with ``every_query_value=True``).
    """
    return redact_url(url, every_query_value=True)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """The outcome of one POST."""

    ok: bool
    status: int
    retryable: bool
    detail: str
    retry_after: float | None = None


class WebhookNotifier:
    """POST the Alertmanager v4 payload to `url`, with retries and an optional signature.

    `retries` is the number of attempts after the first. Connection errors, timeouts, 5xx
    and 429 are retried after `backoff_delay` (or the receiver's Retry-After, capped at
    `retry_after_cap`); other statuses are not. Each attempt is cut after `timeout` seconds
    of wall-clock time, so a send takes at most `max_total_s`. Redirects are not followed
    and proxy environment variables are not used (as Alertmanager); `ssl_context` replaces
    the default verifying TLS context (for a private CA). With `hmac_secret`,
    each request carries `SIGNATURE_HEADER` over its timestamp and body (`sign_body`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: tuple[float, float] = (0.5, 2.0),
        jitter: float = 0.25,
        retry_after_cap: float = 10.0,
        hmac_secret: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_alerts: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.target = redact_webhook_url(url)
        try:
            self._url = parse_url(url)
        except ValueError:
            raise ConfigError(
                f"webhook {self.target!r}: give an http:// or https:// URL with a host"
            ) from None
        _check_webhook_options(self.target, timeout, retries, backoff, jitter)
        if retry_after_cap < 0 or max_alerts < 0:
            raise ConfigError(f"webhook {self.target}: retry_after_cap and max_alerts must be >= 0")
        if hmac_secret is not None and not hmac_secret:
            raise ConfigError(f"webhook {self.target}: hmac_secret is empty; give a secret or None")
        self._headers = dict(headers or {})
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.jitter = jitter
        self.retry_after_cap = retry_after_cap
        self.max_alerts = max_alerts
        self._secret = hmac_secret
        self._ssl_context = ssl_context
        self._sleep = sleep
        self._rng = random.Random()  # noqa: S311 - jitter spreads retries; it guards no secret
        shown_nowhere = (*self._headers.values(), self._url.authorization)
        self._secrets = _secrets_of(url, hmac_secret, shown_nowhere)

    @property
    def max_total_s(self) -> float:
        """Return the longest a `send` can take."""
        pause = max(self.backoff[1], self.retry_after_cap)
        return (self.retries + 1) * self.timeout + self.retries * pause

    def send(self, notification: Notification) -> SendResult:
        """Deliver `notification`; see the class docstring for the retry policy."""
        return self.post(
            encode_payload(alertmanager_payload(notification, max_alerts=self.max_alerts))
        )

    def post(self, body: bytes) -> SendResult:
        """POST `body` (JSON bytes) with the retry policy; return the outcome, never raise."""
        start = time.monotonic()
        delivery = uuid.uuid4().hex  # the same on every attempt, so receivers can dedupe
        attempt, outcome = 0, _Attempt(False, 0, False, "not attempted")
        while attempt <= self.retries:
            attempt += 1
            outcome = self._attempt(body, delivery)
            if outcome.ok or not outcome.retryable or attempt > self.retries:
                break
            pause = self._pause(attempt, outcome.retry_after)
            logger.info(
                "webhook %s: attempt %d failed (%s); retrying in %.2fs",
                self.target, attempt, outcome.detail, pause,
            )  # fmt: skip
            self._sleep(pause)
        elapsed = time.monotonic() - start
        detail = self._summary(outcome, attempt, elapsed)
        if not outcome.ok:
            logger.warning("%s", detail)
        return SendResult(outcome.ok, attempt, outcome.status, detail, self.target, elapsed)

    def _pause(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        return backoff_delay(attempt, self.backoff, self.jitter, self._rng.random())

    def _summary(self, outcome: _Attempt, attempts: int, elapsed: float) -> str:
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''} in {elapsed:.2f}s"
        if outcome.ok:
            return f"webhook {self.target}: delivered, {outcome.detail}, {tries}"
        advice = "" if not outcome.retryable else "; check that the receiver is up"
        if not outcome.retryable and 400 <= outcome.status < 500:
            advice = "; not retried: the receiver refused the request, fix the URL or its auth"
        return f"webhook {self.target}: not delivered, {outcome.detail}, {tries}{advice}"

    def _attempt(self, body: bytes, delivery: str) -> _Attempt:
        headers = {**self._headers, "Content-Type": "application/json", "User-Agent": "poolwarden"}
        headers[DELIVERY_HEADER] = delivery
        if self._secret is not None:
            stamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(stamp)
            headers[SIGNATURE_HEADER] = sign_body(body, self._secret, stamp)
        with Exchange(self._url, timeout=self.timeout, context=self._ssl_context) as exchange:
            outcome = _post_once(exchange, body, headers, self.timeout)
            if exchange.expired:
                # An answer cut by the deadline may have parsed as a 2xx: trust none.
                outcome = _timed_out(self.timeout)
        return _Attempt(
            outcome.ok,
            outcome.status,
            outcome.retryable,
            self._scrub(outcome.detail),
            outcome.retry_after,
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def _post_once(
    exchange: Exchange, body: bytes, headers: Mapping[str, str], timeout: float
) -> _Attempt:
    try:
        response = exchange.send("POST", headers, body)
    except HTTPFailure as exc:
        return _network_failure(exc, timeout)
    if 200 <= response.status < 300:
        # The 2xx status is the receipt: a body cut short must not cause a resend.
        with contextlib.suppress(HTTPFailure):
            exchange.read(response, _READ_LIMIT)
        return _Attempt(True, response.status, False, f"HTTP {response.status}")
    return _http_failure(exchange, response)


def _http_failure(exchange: Exchange, response: http.client.HTTPResponse) -> _Attempt:
    code = response.status
    try:
        text = exchange.read(response, _BODY_SNIPPET).decode("utf-8", "replace")
    except HTTPFailure:
        text = ""
    snippet = _CONTROL.sub(" ", text).strip()
    detail = f"HTTP {code} {response.reason}" + (f": {snippet}" if snippet else "")
    if 300 <= code < 400:
        detail += " (redirects are not followed; give the final URL)"
    retryable = code >= 500 or code == 429
    retry_after = _retry_after_seconds(response.getheader("Retry-After"), time.time())
    return _Attempt(False, code, retryable, detail, retry_after if retryable else None)


def _network_failure(exc: HTTPFailure, timeout: float) -> _Attempt:
    if exc.timed_out:
        return _timed_out(timeout)
    if isinstance(exc.cause, ssl.SSLCertVerificationError):
        return _Attempt(False, 0, False, f"TLS certificate refused: {exc.cause}")
    return _Attempt(False, 0, True, f"{type(exc.cause).__name__}: {exc.cause}")


def _timed_out(timeout: float) -> _Attempt:
    return _Attempt(False, 0, True, f"no complete answer within {timeout:g}s (timeout)")


def _retry_after_seconds(value: str | None, now: float) -> float | None:
    """Parse Retry-After (delta-seconds or an HTTP-date) into seconds from `now`."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    with contextlib.suppress(ValueError):
        seconds = float(text)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def _check_webhook_options(
    target: str, timeout: float, retries: int, backoff: tuple[float, float], jitter: float
) -> None:
    if not timeout > 0 or retries < 0:
        raise ConfigError(f"webhook {target}: timeout must be > 0 and retries >= 0")
    if not 0 <= backoff[0] <= backoff[1] or not 0 <= jitter <= 1:
        raise ConfigError(
            f"webhook {target}: backoff=(first, cap) needs 0 <= first <= cap and jitter in [0, 1]"
        )


def _secrets_of(
    url: str, secret: str | bytes | None, header_values: Sequence[str]
) -> tuple[str, ...]:
    """Every string that must never be shown, longest first (so parts are caught too)."""
    parts = urllib.parse.urlsplit(url)
    found = {url, parts.query, parts.fragment, *header_values}
    found |= {value.split()[-1] for value in header_values if value.split()}
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found |= {userinfo, *userinfo.split(":", 1)}
        found |= {urllib.parse.unquote(p) for p in userinfo.split(":", 1)}
    for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        found |= {value, urllib.parse.quote(value, safe="")}
    if secret is not None:
        found.add(secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret)
    return tuple(sorted((s for s in found if s), key=len, reverse=True))
