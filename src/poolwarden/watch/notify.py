"""Tell people about alerts: the alert model, the Alertmanager v4 payload, console, apprise.

`alertmanager_payload(notification)` is a pure function that builds the JSON document
Alertmanager's webhook receiver sends (version "4"), so every existing receiver works. The
notifiers deliver a `Notification` and return a `SendResult`; none raises for a delivery
failure. `ConsoleNotifier` and `AppriseNotifier` live here; `WebhookNotifier` (retries,
deadline, HMAC signature) lives in `poolwarden.watch.webhook`. Reference: docs/watch-notify.md.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TextIO

from poolwarden.errors import ConfigError
from poolwarden.watch._fingerprint import alert_fingerprint

__all__ = [
    "AppriseNotifier",
    "ConsoleNotifier",
    "INCIDENT_ANNOTATION",
    "Notification",
    "Notifier",
    "NotifyAlert",
    "SendResult",
    "Status",
    "alertmanager_payload",
    "apprise_message",
    "console_line",
    "encode_payload",
]

logger = logging.getLogger("poolwarden.watch.notify")

# An annotation, not a label: labels are the alert's identity (fingerprint, grouping).
INCIDENT_ANNOTATION = "incident_id"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

Status = Literal["firing", "resolved"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True, slots=True)
class NotifyAlert:
    """One alert as Alertmanager shows it; `fingerprint` is computed from labels when empty.

    `ends_at` is None while firing and required once resolved; times must be aware.
    Annotations the product fills: summary, description, runbook, root_cause, culprit.
    """

    status: Status
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    starts_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ends_at: datetime | None = None
    generator_url: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("firing", "resolved"):
            raise ValueError(f"alert status {self.status!r}: use 'firing' or 'resolved'")
        if self.status == "resolved" and self.ends_at is None:
            raise ValueError("a resolved alert needs ends_at")
        for name, value in (("starts_at", self.starts_at), ("ends_at", self.ends_at)):
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"alert {name} must be timezone-aware, got {value!r}")
        object.__setattr__(self, "labels", dict(self.labels))
        object.__setattr__(self, "annotations", dict(self.annotations))
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", alert_fingerprint(self.labels))


@dataclass(frozen=True, slots=True)
class Notification:
    """A group of alerts sent together to one receiver, as Alertmanager groups them.

    `incident_id` is added to each alert's annotations as ``incident_id``; `route_key`
    is the route part of the group key (``{}`` for the root route).
    """

    receiver: str
    alerts: tuple[NotifyAlert, ...]
    group_labels: Mapping[str, str] = field(default_factory=dict)
    external_url: str = ""
    incident_id: str = ""
    route_key: str = "{}"

    def __post_init__(self) -> None:
        if not self.alerts:
            raise ValueError(f"notification for {self.receiver!r} holds no alert")
        object.__setattr__(self, "alerts", tuple(self.alerts))
        object.__setattr__(self, "group_labels", dict(self.group_labels))

    @property
    def status(self) -> Status:
        """Return "firing" if any alert fires, else "resolved"."""
        return _group_status(self.alerts)

    @property
    def group_key(self) -> str:
        """Return Alertmanager's group key: ``<route key>:<group labels>``."""
        return f"{self.route_key}:{_label_set_string(self.group_labels)}"


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a delivery did; `status` is the last HTTP status, 0 when there was none.

    `target` names where it went without secrets; `detail` is one line for people.
    """

    ok: bool
    attempts: int
    status: int
    detail: str
    target: str
    elapsed_s: float


class Notifier(Protocol):
    """Anything that delivers a `Notification` and reports how it went without raising."""

    def send(self, notification: Notification) -> SendResult:
        """Deliver `notification`; return the outcome, never raise for a delivery failure."""
        ...


# --- the Alertmanager v4 payload (pure) -------------------------------------------------


def alertmanager_payload(notification: Notification, *, max_alerts: int = 0) -> dict[str, Any]:
    """Build the Alertmanager webhook document (version "4") for `notification`.

    With `max_alerts` > 0 only the first `max_alerts` alerts are sent and
    ``truncatedAlerts`` counts the rest; status and common labels then describe what is
    sent, as Alertmanager does.
    """
    if max_alerts < 0:
        raise ValueError(f"max_alerts={max_alerts}: use 0 (no limit) or a positive number")
    alerts = notification.alerts
    truncated = 0
    if max_alerts and len(alerts) > max_alerts:
        alerts, truncated = alerts[:max_alerts], len(alerts) - max_alerts
    annotations = [_annotations(alert, notification.incident_id) for alert in alerts]
    return {
        "receiver": notification.receiver,
        "status": _group_status(alerts),
        "alerts": [_alert_json(a, notes) for a, notes in zip(alerts, annotations, strict=True)],
        "groupLabels": _sorted(notification.group_labels),
        "commonLabels": _common([alert.labels for alert in alerts]),
        "commonAnnotations": _common(annotations),
        "externalURL": notification.external_url,
        "version": "4",
        "groupKey": notification.group_key,
        "truncatedAlerts": truncated,
    }


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Serialise a payload to the compact UTF-8 JSON bytes that are sent and signed."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _alert_json(alert: NotifyAlert, annotations: Mapping[str, str]) -> dict[str, Any]:
    # Alertmanager clears endsAt to Go's zero time while an alert fires.
    ends = alert.ends_at if alert.status == "resolved" else None
    return {
        "status": alert.status,
        "labels": _sorted(alert.labels),
        "annotations": _sorted(annotations),
        "startsAt": _rfc3339(alert.starts_at),
        "endsAt": GO_ZERO_TIME if ends is None else _rfc3339(ends),
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }


def _annotations(alert: NotifyAlert, incident_id: str) -> dict[str, str]:
    notes = dict(alert.annotations)
    if incident_id:
        notes.setdefault(INCIDENT_ANNOTATION, incident_id)
    return notes


def _group_status(alerts: Iterable[NotifyAlert]) -> Status:
    return "firing" if any(alert.status == "firing" for alert in alerts) else "resolved"


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in sorted(first.items()) if all(m.get(k) == v for m in maps[1:])}


def _sorted(labels: Mapping[str, str]) -> dict[str, str]:
    return dict(sorted(labels.items()))


def _rfc3339(moment: datetime) -> str:
    """Format like Go's RFC3339Nano in UTC: fraction only when non-zero, trailing Z."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def _label_set_string(labels: Mapping[str, str]) -> str:
    pairs = (f"{name}={_go_quote(labels[name])}" for name in sorted(labels))
    return "{" + ", ".join(pairs) + "}"


_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t"}
_GO_ESCAPES |= {"\v": r"\v", "\\": "\\\\", '"': '\\"'}


def _go_quote(value: str) -> str:
    """Quote `value` as Go's strconv.Quote does (printable Unicode is kept as is)."""
    out = []
    for char in value:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable() or char == " ":
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


# --- console ---------------------------------------------------------------------------


def console_line(alert: NotifyAlert, *, incident_id: str = "") -> str:
    """Return one line for people: time, status, severity, alert, summary, root cause."""
    when = alert.ends_at if alert.status == "resolved" and alert.ends_at else alert.starts_at
    name = alert.labels.get("alertname", "alert")
    severity = alert.labels.get("severity", "none")
    notes = alert.annotations
    text = f"{_rfc3339(when)} {alert.status.upper()} {severity} {name}"
    text += f": {notes.get('summary') or _labels_text(alert.labels)}"
    if alert.status == "resolved" and alert.ends_at is not None:
        text += f" (after {_duration(alert.ends_at - alert.starts_at)})"
    elif notes.get("root_cause"):
        text += f"; root cause: {notes['root_cause']}"
    incident = incident_id or notes.get(INCIDENT_ANNOTATION, "")
    if incident:
        text += f" [incident {incident}]"
    # Annotations come from templates over probed data: keep one line, no terminal escapes.
    return " ".join(_CONTROL.sub(" ", text).split())


class ConsoleNotifier:
    """Write one line per alert to a text stream (standard output by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def send(self, notification: Notification) -> SendResult:
        """Write the notification's lines; report a closed or failing stream, never raise."""
        start = time.monotonic()
        stream = self._stream if self._stream is not None else sys.stdout
        lines = [console_line(a, incident_id=notification.incident_id) for a in notification.alerts]
        try:
            stream.write("".join(line + "\n" for line in lines))
            stream.flush()
        except (OSError, ValueError) as exc:
            detail = f"console: cannot write {len(lines)} line(s): {exc}"
            return SendResult(False, 1, 0, detail, "console", time.monotonic() - start)
        detail = f"console: wrote {len(lines)} line(s)"
        return SendResult(True, 1, 0, detail, "console", time.monotonic() - start)


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# --- apprise ---------------------------------------------------------------------------


class AppriseNotifier:
    """Send a short text per notification to apprise URLs (Slack, e-mail, ntfy, ...).

    Needs the optional `apprise` package; without it, constructing one raises ConfigError.
    Apprise makes one attempt per URL; `SendResult.ok` is true when every URL took it.
    """

    def __init__(self, urls: str | Sequence[str]) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        self.target = ", ".join(f"{urllib.parse.urlsplit(u).scheme}://…" for u in url_list)
        try:
            # apprise imports the deprecated imghdr on Python < 3.13; the warning is theirs.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import apprise

                self._apprise = apprise.Apprise()
                for index, url in enumerate(url_list, start=1):
                    if not self._apprise.add(url):
                        scheme = urllib.parse.urlsplit(url).scheme or "?"
                        raise ConfigError(
                            f"apprise URL #{index} ({scheme}://…) is not one apprise understands;"
                            " check it against apprise's list of services"
                        )
        except ImportError:
            raise ConfigError(
                "apprise URLs need the optional 'apprise' package: pip install apprise"
            ) from None
        if not url_list:
            raise ConfigError("AppriseNotifier needs at least one apprise URL")
        self._types = apprise.NotifyType

    def send(self, notification: Notification) -> SendResult:
        """Notify every URL once; report failures in the result, never raise."""
        start = time.monotonic()
        title, body = apprise_message(notification)
        firing_critical = any(
            a.status == "firing" and a.labels.get("severity") == "critical"
            for a in notification.alerts
        )
        kind = self._types.SUCCESS
        if notification.status == "firing":
            kind = self._types.FAILURE if firing_critical else self._types.WARNING
        try:
            ok = bool(self._apprise.notify(body=body, title=title, notify_type=kind))
        except Exception as exc:  # apprise plugins may raise anything; delivery must not
            ok, reason = False, type(exc).__name__
        else:
            reason = "" if ok else "apprise reported a failure (see the 'apprise' logger)"
        elapsed = time.monotonic() - start
        detail = f"apprise {self.target}: " + ("delivered" if ok else f"not delivered, {reason}")
        if not ok:
            logger.warning("%s", detail)
        return SendResult(ok, 1, 0, detail, self.target, elapsed)


def apprise_message(notification: Notification) -> tuple[str, str]:
    """Return the (title, body) text sent to apprise for `notification`."""
    first = notification.alerts[0]
    name = notification.group_labels.get("alertname") or first.labels.get("alertname", "alert")
    count = len(notification.alerts)
    title = f"[{notification.status.upper()}] {name}" + (f" ({count} alerts)" if count > 1 else "")
    lines = [console_line(a, incident_id=notification.incident_id) for a in notification.alerts]
    runbooks = sorted(
        {a.annotations["runbook"] for a in notification.alerts if a.annotations.get("runbook")}
    )
    lines += [f"runbook: {text}" for text in runbooks]
    return title, "\n".join(lines)
