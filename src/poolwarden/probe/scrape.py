"""Read an application's Prometheus ``/metrics`` endpoint, within a hard deadline.

`scrape_metrics(url)` GETs the endpoint (`poolwarden._http`: the whole exchange is bounded by
`timeout`), parses the body with prometheus_client's parser and returns a frozen
`ScrapeResult` whose samples are looked up by sample or family name. Failures are one-line
`ProbeError`s (`TargetUnreachable`, `TargetTimeout`, `TargetBadResponse`) naming the URL
with its secrets redacted. Reference: docs/scrape.md.
"""

from __future__ import annotations

import http.client
import io
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_fd_to_metric_families

from poolwarden._http import (
    CONNECTING,
    Exchange,
    HTTPFailure,
    first_line,
    parse_url,
    redact_url,
)
from poolwarden.errors import (
    ConfigError,
    ProbeError,
    TargetBadResponse,
    TargetTimeout,
    TargetUnreachable,
)

__all__ = [
    "MetricFamily",
    "MetricSample",
    "ScrapeResult",
    "parse_metrics",
    "redact_url",
    "scrape_metrics",
]

# The classic text format first: it is what prometheus_client's text parser reads.
_ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
# What the parsers append to a family's name to name its samples.
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created", "_gcount", "_gsum", "_info")


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One series' value; `name` keeps its suffix (`_total`, `_bucket`, `_sum`, `_count`)."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A metric family as the parser names it: a counter's name has no `_total`."""

    name: str
    type: str  # counter, gauge, histogram, summary, unknown (untyped), ...
    documentation: str
    samples: tuple[MetricSample, ...]


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    """What an endpoint exposed at `taken_at`, looked up by sample or family name."""

    url: str  # userinfo and credential query parameters redacted
    taken_at: datetime  # UTC, when the request started
    duration_s: float  # request start to body parsed
    size_bytes: int  # body size as received
    families: dict[str, MetricFamily]

    def samples(self, name: str, /) -> tuple[MetricSample, ...]:
        """Return the samples named `name`, else those of the family `name`, else none."""
        # A sample lives in the family named after it, less one of the suffixes.
        for family_name in (name, *(name[: -len(x)] for x in _SUFFIXES if name.endswith(x))):
            family = self.families.get(family_name)
            found = tuple(s for s in family.samples if s.name == name) if family else ()
            if found:
                return found
        family = self.families.get(name)
        return family.samples if family is not None else ()

    def value(self, name: str, /, **labels: str) -> float | None:
        """Return the value of the one sample `name` (or `name_total`) carrying `labels`.

        None when no sample matches; ValueError when several do (add labels to pick one).
        """
        found = self._matching(name, labels)
        if len(found) > 1:
            differ = sorted(
                {k for s in found for k in s.labels if len({t.labels.get(k) for t in found}) > 1}
            )
            raise ValueError(
                f"{name}{_show(labels)} matches {len(found)} series in {self.url}; "
                f"add labels to pick one: {', '.join(differ)}"
            )
        return found[0].value if found else None

    def total(self, name: str, /, **labels: str) -> float:
        """Return the sum of the samples `name` (or `name_total`) carrying `labels`; 0 if none."""
        return sum((s.value for s in self._matching(name, labels)), 0.0)

    def pools(self) -> tuple[str, ...]:
        """Return the `pool_name` label values of the `db_client_connection_*` series, sorted."""
        names = {
            s.labels["pool_name"]
            for family in self.families.values()
            if family.name.startswith("db_client_connection_")
            for s in family.samples
            if "pool_name" in s.labels
        }
        return tuple(sorted(names))

    def _matching(self, name: str, labels: Mapping[str, str]) -> list[MetricSample]:
        # `name` as given first; a counter is also found by its family name, without `_total`.
        exact = [s for s in self.samples(name) if s.name == name]
        candidates = exact or self.samples(f"{name}_total")
        return [s for s in candidates if all(s.labels.get(k) == v for k, v in labels.items())]


def scrape_metrics(
    url: str,
    *,
    timeout: float = 2.0,
    max_bytes: int = 10_000_000,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> ScrapeResult:
    """GET `url` and return its Prometheus metrics, all within `timeout` seconds.

    A URL without a path reads ``/metrics``; userinfo becomes HTTP basic auth; `headers` are
    added to the request (e.g. ``Authorization``); `context` verifies https targets (default:
    the system's trust store). Raises `TargetUnreachable`, `TargetTimeout` or
    `TargetBadResponse`, and `ConfigError` for a URL that is not http(s).
    """
    if timeout <= 0 or max_bytes <= 0:
        raise ValueError(
            f"scrape_metrics(): timeout and max_bytes must be positive: {timeout}, {max_bytes}"
        )
    shown = redact_url(url)
    taken_at = datetime.now(UTC)
    started = time.monotonic()
    body, content_type = _fetch(
        url, shown, timeout=timeout, max_bytes=max_bytes, headers=headers, context=context
    )
    families = _parse(_decode(body, shown), content_type, shown, status=200)
    return ScrapeResult(
        url=shown, taken_at=taken_at, duration_s=time.monotonic() - started,
        size_bytes=len(body), families=families,
    )  # fmt: skip


def parse_metrics(
    text: str, *, content_type: str = "text/plain", url: str = "", taken_at: datetime | None = None
) -> ScrapeResult:
    """Parse Prometheus text (OpenMetrics when `content_type` says so) into a `ScrapeResult`.

    For text read some other way, and for tests; `duration_s` is 0. Raises
    `TargetBadResponse` naming the first line that does not parse.
    """
    return ScrapeResult(
        url=url,
        taken_at=taken_at if taken_at is not None else datetime.now(UTC),
        duration_s=0.0,
        size_bytes=len(text.encode()),
        families=_parse(text, content_type, url, status=None),
    )


# --- the request ------------------------------------------------------------------------


def _fetch(
    url: str,
    shown: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None,
    context: ssl.SSLContext | None,
) -> tuple[bytes, str]:
    """GET `url` within `timeout` seconds; return the body and its Content-Type."""
    try:
        target = parse_url(url, default_path="/metrics")
    except ValueError:
        raise ConfigError(
            f"{shown}: not an http(s) URL with a host and a numeric port; "
            "give one like http://127.0.0.1:8000/metrics"
        ) from None
    sent = {"Accept": _ACCEPT, "User-Agent": "poolwarden-scrape", **(headers or {})}
    try:
        with Exchange(target, timeout=timeout, context=context) as exchange:
            response = exchange.send("GET", sent)
            _check_head(response, shown, max_bytes)
            # One byte over the cap is enough to know the body is too large.
            body = exchange.read(response, max_bytes + 1)
    except HTTPFailure as exc:
        raise _failure(exc, shown, timeout) from None
    if len(body) > max_bytes:
        raise _too_large(shown, max_bytes, f"{len(body)} bytes read so far")
    # http.client asked for `Accept-Encoding: identity`; a server that compresses anyway is
    # broken, and inflating its body would need a second size cap.
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise _bad(shown, f"unsupported Content-Encoding {encoding!r}", status=200)
    return body, response.getheader("Content-Type", "")


def _check_head(response: http.client.HTTPResponse, shown: str, max_bytes: int) -> None:
    if response.status != 200:
        where = response.getheader("Location")
        moved = f" to {redact_url(where)}; scrape that URL instead" if where else ""
        raise _bad(
            shown,
            f"HTTP {response.status} {response.reason}{moved}; expected 200 with Prometheus "
            "text — check the path (usually /metrics) and that the app is healthy",
            status=response.status,
        )
    announced = response.getheader("Content-Length")
    if announced and announced.isdigit() and int(announced) > max_bytes:
        raise _too_large(shown, max_bytes, f"it announces {int(announced)} bytes")


def _failure(exc: HTTPFailure, shown: str, timeout: float) -> ProbeError:
    """Return the `ProbeError` that explains why the exchange got no complete answer."""
    if exc.timed_out:
        got = f", {exc.received} body bytes so far" if exc.received else ""
        return TargetTimeout(
            f"{shown}: no complete answer within {timeout:g} s ({exc.phase}{got}); the "
            "app may be hung or overloaded — raise the scrape timeout only if it is just slow",
            target=shown,
            timeout=timeout,
        )
    cause = exc.cause
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _bad(
            shown,
            f"its TLS certificate does not verify ({cause.verify_message}); pass "
            "scrape_metrics() an ssl context that trusts the app's CA",
        )
    if exc.phase == CONNECTING:
        return TargetUnreachable(
            f"{shown}: cannot connect ({_reason(cause)}); check the host and port, and "
            "that the app is running and serves its metrics there",
            target=shown,
        )
    return _bad(shown, f"the connection broke while {exc.phase} ({_reason(cause)})")


def _too_large(shown: str, max_bytes: int, detail: str) -> TargetBadResponse:
    return _bad(
        shown,
        f"the body is larger than max_bytes={max_bytes} ({detail}); raise max_bytes "
        "or drop high-cardinality series",
        status=200,
    )


def _bad(shown: str, detail: str, *, status: int | None = None) -> TargetBadResponse:
    return TargetBadResponse(f"{shown}: {detail}", target=shown, status=status)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return first_line(exc)


# --- parsing ------------------------------------------------------------------------------


def _parse(
    text: str, content_type: str, url: str, *, status: int | None
) -> dict[str, MetricFamily]:
    openmetrics = content_type.split(";")[0].strip().lower() == "application/openmetrics-text"
    lines = _CountedLines(text)
    parse: Callable[[Any], Iterable[Any]] = (
        openmetrics_parser.text_fd_to_metric_families if openmetrics else text_fd_to_metric_families
    )
    families: dict[str, MetricFamily] = {}
    try:
        for metric in parse(lines):
            _add_family(families, metric)
    except (ValueError, IndexError, KeyError, TypeError) as exc:  # the parser's ways to fail
        raise TargetBadResponse(
            f"{url or 'metrics text'}: not {'OpenMetrics' if openmetrics else 'Prometheus'} "
            f"text at line {lines.count} ({first_line(exc)}): {lines.current[:60]!r}; "
            "is this the app's metrics endpoint?",
            target=url,
            status=status,
        ) from None
    return families


class _CountedLines:
    """Feed the parser line by line, remembering where it is, so errors can name the line."""

    def __init__(self, text: str) -> None:
        self._lines = io.StringIO(text)
        self.count = 0
        self.current = ""

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            self.count += 1
            self.current = line.rstrip("\n")
            yield line


def _add_family(families: dict[str, MetricFamily], metric: Any) -> None:
    samples = tuple(MetricSample(s.name, dict(s.labels), float(s.value)) for s in metric.samples)
    previous = families.get(metric.name)
    if previous is not None:  # a family split by other lines; the spec forbids it, apps do it
        samples = previous.samples + samples
    families[metric.name] = MetricFamily(metric.name, metric.type, metric.documentation, samples)


def _decode(body: bytes, shown: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(
            shown,
            f"the body is not UTF-8 (bad byte at offset {exc.start}); "
            "is this the app's metrics endpoint?",
            status=200,
        ) from None


def _show(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
