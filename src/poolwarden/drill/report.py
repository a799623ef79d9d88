"""The drill's results for people: guard off against guard on, and each run's phases.

`comparison_rows` and `phase_rows` hold the figures as strings; `render_markdown` lays
them out as the Markdown written to ``drill.md`` (and pasted into docs/drill.md);
the CLI prints the same rows as terminal tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from poolwarden.drill.runner import DrillReport, RunResult

__all__ = ["comparison_rows", "phase_rows", "render_markdown"]

_DASH = "—"


def _seconds(value: float | None, bound: float | None = None) -> str:
    if value is None:
        return _DASH
    text = f"{value:.1f} s"
    return text if bound is None else f"{text} (bound {bound:g} s)"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else _DASH


def _label(run: RunResult) -> str:
    return "guard on" if run.guard else "guard off"


def comparison_rows(runs: Sequence[RunResult]) -> list[list[str]]:
    """Return rows of (figure, one column per run)."""
    return [
        ["time to detect"] + [_seconds(r.detected_s, r.detect_within_s) for r in runs],
        ["time to root cause"] + [_seconds(r.diagnosed_s) for r in runs],
        ["root cause named"] + [_cause(r) for r in runs],
        ["failed requests"] + [_pct(sum(p.failed for p in r.phases), r.requests) for r in runs],
        ["shed (503 + Retry-After)"]
        + [_pct(sum(p.rejected for p in r.phases), r.requests) for r in runs],
        ["users affected"] + [f"{r.users_affected} of {r.users}" for r in runs],
        ["remedy applied"] + [r.fix or "none needed" for r in runs],
    ]


def _cause(run: RunResult) -> str:
    if run.cause is None:
        return "no incident" if run.detected_s is None else "not found"
    ok = "" if run.cause == run.expected_cause else f" (expected {run.expected_cause})"
    return f"{run.cause}, culprit {run.culprit}{ok}"


def phase_rows(run: RunResult) -> list[list[str]]:
    """Return one row per phase: name, seconds, requests, failed, shed, goodput, p50, p99."""
    return [
        [
            p.name,
            f"{p.seconds:.1f}",
            str(p.requests),
            f"{p.failed_pct:.1f} %",
            f"{p.rejected_pct:.1f} %",
            f"{p.goodput_rps:.1f}",
            _DASH if p.p50_ms is None else f"{p.p50_ms:.0f}",
            _DASH if p.p99_ms is None else f"{p.p99_ms:.0f}",
        ]
        for p in run.phases
    ]


PHASE_HEADER = ["phase", "s", "requests", "failed", "shed", "goodput/s", "p50 ms", "p99 ms"]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: DrillReport) -> str:
    """Return the report as Markdown: the comparison, then each run's phases."""
    parts = [
        f"## `{report.scenario}` — {report.title}",
        "",
        report.story,
        "",
        _md_table(["", *(_label(r) for r in report.runs)], comparison_rows(report.runs)),
    ]
    for run in report.runs:
        parts += ["", f"**{_label(run)}** — phases", "", _md_table(PHASE_HEADER, phase_rows(run))]
        if run.postmortem:
            parts += ["", f"Postmortem: `{run.postmortem}`"]
    return "\n".join(parts) + "\n"
