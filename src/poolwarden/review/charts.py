"""Draw an incident's charts from the samples watch recorded: connections, errors, latency.

`write_charts(incident, samples, out_dir)` writes up to three PNGs over the incident
window (`incident_window`): ``connections.png`` (connections in use by application,
stacked, against the usable slots), ``errors.png`` (requests/s and failed/s) and
``latency.png`` (HTTP p99 in ms). Each marks the alerts' firing times, the root cause's
time and shades the incident. A chart without data is not written. Files go through a
temporary file and a rename. Needs matplotlib (the ``plan`` extra); it draws on a bare
`Figure`, so no pyplot state or backend is touched. Reference: docs/postmortem.md.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from poolwarden.errors import ConfigError
from poolwarden.review.postmortem import incident_window
from poolwarden.watch.incidents import Incident
from poolwarden.watch.samples import Sample, SampleName, counter_rates

__all__ = ["CHART_FILES", "write_charts"]

CHART_FILES = ("connections.png", "errors.png", "latency.png")

# Axes are typed Any: matplotlib's stubs want floats where its unit converters take the
# datetimes drawn here.
_Axes = Any
_Draw = Callable[[_Axes, Sequence[Sample]], bool]


def write_charts(incident: Incident, samples: Iterable[Sample], out_dir: Path) -> tuple[Path, ...]:
    """Write the incident's charts into `out_dir`; return the paths written (maybe none).

    Only samples in the incident's window and scope (its labels) are drawn.

    Raises `ConfigError` when matplotlib is missing or `out_dir` cannot be written.
    """
    kept = tuple(samples)
    # An ongoing incident is drawn up to its latest sample.
    start, end = incident_window(incident, max((s.at for s in kept), default=None))
    inside = [
        s
        for s in kept
        if start <= _utc(s.at)
        and (end is None or _utc(s.at) <= end)
        # In scope unless it names another database or target than the incident's.
        and all(s.labels.get(k, v) == v for k, v in incident.labels.items())
    ]
    if not inside:
        return ()
    figure_class = _figure_class()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"charts: cannot create {out_dir} ({exc.strerror}); choose a writable --out"
        ) from None
    drawers: Sequence[tuple[str, str, _Draw]] = (
        ("connections.png", "Connections", _connections),
        ("errors.png", "Requests and failures", _errors),
        ("latency.png", "HTTP latency p99", _latency),
    )
    written = []
    for name, title, draw in drawers:
        figure = figure_class(figsize=(9, 4), dpi=100)
        axes = figure.add_subplot()
        if not draw(axes, inside):
            continue
        _decorate(axes, incident, title, end)
        figure.autofmt_xdate()
        figure.tight_layout()
        written.append(_save(figure, out_dir / name))
    return tuple(written)


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "the postmortem's charts need matplotlib: pip install 'poolwarden[plan]'"
        ) from None
    return Figure


# -- the three charts ----------------------------------------------------------------------


def _connections(axes: _Axes, samples: Sequence[Sample]) -> bool:
    """Stack the connections by application; draw in use and usable as lines."""
    by_app: dict[str, dict[datetime, float]] = defaultdict(dict)
    for s in samples:
        if s.name == SampleName.APP_CONNECTIONS:
            by_app[s.labels.get("application_name") or "(no name)"][s.at] = s.value
    if by_app:
        stamps = sorted({t for points in by_app.values() for t in points})
        apps = sorted(by_app, key=lambda a: -max(by_app[a].values()))
        rows = [[by_app[a].get(t, 0.0) for t in stamps] for a in apps]
        axes.stackplot(stamps, rows, labels=apps, alpha=0.6)
    drew = bool(by_app)
    for name, label, style in (
        (SampleName.SERVER_CONNECTIONS, "in use", "-"),
        (SampleName.SERVER_USABLE, "usable", "--"),
    ):
        for database, points in _series(samples, name, "database").items():
            times, values = zip(*points, strict=True)
            axes.plot(times, values, style, color="black", label=f"{label} ({database})")
            drew = True
    axes.set_ylabel("connections")
    return drew


def _errors(axes: _Axes, samples: Sequence[Sample]) -> bool:
    """Requests/s and failed/s, summed over the apps, between consecutive samples."""
    drew = False
    for name, label, color in (
        (SampleName.HTTP_REQUESTS, "requests/s", "tab:blue"),
        (SampleName.HTTP_ERRORS, "failed/s (5xx)", "tab:red"),
    ):
        rates = counter_rates(samples, name)
        if rates:
            times, values = zip(*rates, strict=True)
            axes.plot(times, values, color=color, label=label)
            drew = True
    axes.set_ylabel("per second")
    return drew


def _latency(axes: _Axes, samples: Sequence[Sample]) -> bool:
    """The HTTP p99 of each interval, per app, in milliseconds."""
    series = _series(samples, SampleName.HTTP_P99, "target")
    for target, points in series.items():
        times, values = zip(*points, strict=True)
        axes.plot(times, [v * 1000 for v in values], label=f"p99 {target}")
    axes.set_ylabel("ms")
    return bool(series)


# -- plumbing ------------------------------------------------------------------------------


def _series(
    samples: Sequence[Sample], name: str, label: str
) -> dict[str, list[tuple[datetime, float]]]:
    """Return the samples `name` as time-ordered points, by the value of `label`."""
    found: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for s in samples:
        if s.name == name:
            found[s.labels.get(label, "")].append((s.at, s.value))
    return {key: sorted(points) for key, points in sorted(found.items())}


def _decorate(axes: _Axes, incident: Incident, title: str, end: datetime | None) -> None:
    """Shade the incident, mark the alerts firing and the root cause, add the legend."""
    from matplotlib.dates import DateFormatter

    axes.axvspan(incident.opened_at, incident.resolved_at or end or incident.opened_at,
                 color="tab:orange", alpha=0.12, label="incident")  # fmt: skip
    for n, alert in enumerate(incident.alerts.values()):
        label = "alert fired" if n == 0 else None
        axes.axvline(alert.fired_at, color="tab:red", linestyle=":", label=label)
    diagnosed = _root_cause_at(incident)
    if diagnosed is not None:
        axes.axvline(diagnosed, color="tab:purple", linestyle="-.", label="root cause")
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M:%S", tz=UTC))  # type: ignore[no-untyped-call]
    axes.set_xlabel("UTC")
    axes.set_title(f"{title} - incident {incident.id}")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")


def _root_cause_at(incident: Incident) -> datetime | None:
    """Return when the root cause (its class and culprit) entered the timeline."""
    cause = incident.root_cause
    if cause is None:
        return None
    return next(
        (
            e.at
            for e in incident.timeline
            if e.kind == "diagnosis"
            and (e.data.get("cause"), e.data.get("culprit")) == (cause.cause, cause.culprit)
        ),
        None,
    )


def _save(figure: Any, path: Path) -> Path:
    """Write the figure to `path` through a temporary file and a rename."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide it from a web server
            figure.savefig(handle, format="png")
        os.replace(name, path)
    except OSError as exc:
        raise ConfigError(
            f"charts: cannot write {path} ({exc.strerror}); choose a writable --out"
        ) from None
    finally:
        Path(name).unlink(missing_ok=True)
    return path


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
