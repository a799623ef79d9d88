"""The text a rule holds: Prometheus durations and the annotation templates.

Templates are the subset of Prometheus' Go templates a rule may use, so one text serves
the in-process engine and the exported rule file: ``{{ $labels.NAME }}``, ``{{ $value }}``
and ``{{ $threshold }}`` (ours; written out as a literal on export), optionally piped to
``humanize``, ``humanizePercentage``, ``humanizeDuration`` or ``printf "%.Nf"``, which
format as Prometheus' do. Nothing else is evaluated: no code, no other functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

__all__ = ["format_duration", "parse_duration"]

# --- durations ----------------------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_UNITS = (604800.0, 86400.0, 3600.0, 60.0, 1.0, 0.001)
DURATION_FIX = "write it with a unit, like '5s', '2m' or '1h30m'"


def parse_duration(text: str) -> float:
    """Return the seconds in a Prometheus duration like ``5s``, ``2m``, ``1h30m`` or ``0``.

    Raises `ValueError` whose message says "problem; fix".
    """
    stripped = text.strip()
    if stripped == "0":
        return 0.0
    match = _DURATION.fullmatch(stripped)
    if not stripped or match is None:
        raise ValueError(f"{text[:40]!r} is not a duration; {DURATION_FIX}")
    return sum(int(n) * unit for n, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if n)


def format_duration(seconds: float) -> str:
    """Return `seconds` as a Prometheus duration (``90`` -> ``1m30s``), to the millisecond."""
    millis, parts = round(seconds * 1000), []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# --- templates ----------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPRESSION = re.compile(
    r"\s*\$(?:labels\.(?P<label>[A-Za-z_][A-Za-z0-9_]*)|(?P<var>value|threshold))"
    r"\s*(?:\|\s*(?P<pipe>humanizePercentage|humanizeDuration|humanize"
    r"|printf\s+\"%\.(?P<digits>[0-9])f\")\s*)?"
)
_TEMPLATE_FIX = (
    "use {{ $labels.NAME }}, {{ $value }} or {{ $threshold }}, optionally followed by "
    '| humanize, | humanizePercentage, | humanizeDuration or | printf "%.2f"'
)


def template_problem(text: str) -> str | None:
    """Say what in `text` is not a supported template ("problem; fix"), or None."""
    for match in _PLACEHOLDER.finditer(text):
        if _EXPRESSION.fullmatch(match[1]) is None:
            return f"unsupported template {match[0][:60]!r}; {_TEMPLATE_FIX}"
    if "{{" in _PLACEHOLDER.sub("", text):
        return "a '{{' is never closed; close it with '}}'"
    return None


def render_template(text: str, labels: Mapping[str, str], value: float, threshold: float) -> str:
    """Expand ``{{ $labels.x }}``, ``{{ $value }}`` and ``{{ $threshold }}`` as Prometheus would.

    A missing label renders empty, as Prometheus renders a missing key of ``$labels``.
    """

    def expand(match: re.Match[str]) -> str:
        expr = _EXPRESSION.fullmatch(match[1])
        if expr is None:  # rules are validated on load; leave anything else as written
            return match[0]
        if expr["label"] is not None:
            return labels.get(expr["label"], "")
        return _format(expr, value if expr["var"] == "value" else threshold)

    return _PLACEHOLDER.sub(expand, text)


def prometheus_template(text: str, threshold: float, rename: Mapping[str, str]) -> str:
    """Return `text` as a Prometheus template: ``$threshold`` written out, labels renamed."""

    def convert(match: re.Match[str]) -> str:
        expr = _EXPRESSION.fullmatch(match[1])
        if expr is None or expr["var"] == "value":
            return match[0]
        if expr["label"] is not None:
            name = rename.get(expr["label"], expr["label"])
            pipe = f" | {expr['pipe']}" if expr["pipe"] else ""
            return f"{{{{ $labels.{name}{pipe} }}}}"
        return _format(expr, threshold)

    return _PLACEHOLDER.sub(convert, text)


# --- Prometheus' number formats (Go's fmt) --------------------------------------------------


def format_number(v: float) -> str:
    """Format like Go's ``%v`` of a float64, as Prometheus prints ``{{ $value }}``."""
    if math.isnan(v) or math.isinf(v):
        return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    return repr(v)


def _g4(v: float) -> str:
    """Go's ``%.4g``."""
    return format_number(v) if math.isnan(v) or math.isinf(v) else f"{v:.4g}"


def _scaled(v: float, up: str, down: str) -> tuple[float, str]:
    """Scale `v` by thousands toward 1 <= |v| < 1000; return it with its SI prefix."""
    prefix = ""
    if abs(v) >= 1:
        for p in up:
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in down:
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return v, prefix


def _humanize(v: float) -> str:
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    scaled, prefix = _scaled(v, "kMGTPEZY", "munpfazy")
    return f"{_g4(scaled)}{prefix}"


def _humanize_duration(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    if v == 0:
        return "0s"
    if abs(v) < 1:
        scaled, prefix = _scaled(v, "", "munpfazy")
        return f"{_g4(scaled)}{prefix}s"
    sign, whole = ("-" if v < 0 else ""), int(abs(v))
    days, hours, minutes, seconds = whole // 86400, whole // 3600 % 24, whole // 60 % 60, whole % 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{sign}{minutes}m {seconds}s"
    return f"{sign}{_g4(abs(v))}s"


def _format(expr: re.Match[str], number: float) -> str:
    if expr["digits"] is not None:  # printf "%.Nf", as Go formats it
        return (
            _g4(number)
            if math.isnan(number) or math.isinf(number)
            else f"{number:.{expr['digits']}f}"
        )
    return _FORMATS[expr["pipe"] or ""](number)


_FORMATS: dict[str, Callable[[float], str]] = {
    "": format_number,
    "humanize": _humanize,
    "humanizePercentage": lambda v: f"{_g4(v * 100)}%",
    "humanizeDuration": _humanize_duration,
}
