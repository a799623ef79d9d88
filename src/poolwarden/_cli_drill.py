"""`poolwarden drill`: replay an outage on a real PostgreSQL, guard off then on.

`register(app)` adds the command. While it runs it shows one live line (phase, requests
per second, errors, server connections) and the events that matter (alerts, the root
cause, the remedy); at the end it prints the comparison and each run's phases, and says
where the postmortem and its charts are. ``--json`` prints the report as JSON on stdout
(progress goes to stderr). An unknown scenario or a bad flag is a one-line error, exit 2.
Reference: docs/drill.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from poolwarden.errors import ConfigError

__all__ = ["drill_cmd", "register"]


def register(app: typer.Typer) -> None:
    """Add the `drill` command to `app` (once; a second call changes nothing)."""
    if not any(command.name == "drill" for command in app.registered_commands):
        app.command("drill")(drill_cmd)


def drill_cmd(
    scenario: Annotated[
        str, typer.Argument(help="The fault to replay; --list shows them all.")
    ] = "oversized_pool",
    quick: Annotated[
        bool, typer.Option("--quick", help="Short phases (CI, a first look).")
    ] = False,
    guard: Annotated[
        str, typer.Option("--guard", help="Run with the guard off, on, or both (compared).")
    ] = "both",
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the postmortems, charts and report.")
    ] = Path("poolwarden-drill"),
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the scenarios and exit.")] = False,
) -> int:
    """Break a real service on a real PostgreSQL; watch detect it, diagnose it, fix it."""
    from poolwarden.drill.scenarios import SCENARIOS

    if list_:
        for s in SCENARIOS.values():
            print(f"{s.name:22} {s.title}")
        return 0
    if scenario not in SCENARIOS:
        raise ConfigError(
            f"drill: unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}"
        )
    if guard not in ("off", "on", "both"):
        raise ConfigError(f"drill: --guard {guard!r} must be off, on or both")
    _check_out(out)
    from poolwarden.drill.runner import GuardMode, run_drill

    console = Console(stderr=True) if json_ else Console()
    live = _Live(console)
    picked = SCENARIOS[scenario]
    console.print(f"[bold]poolwarden drill[/] — {picked.name}: {picked.title}")
    console.print(picked.story, style="dim")
    report = run_drill(
        scenario,
        guard=cast("GuardMode", guard),  # one of the three: checked above
        quick=quick,
        out_dir=out,
        on_progress=live.on_progress,
    )
    live.done()
    if json_:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(console, report)
    from poolwarden.drill.report import render_markdown

    (out / "drill.md").write_text(render_markdown(report))
    return 0


def _check_out(out: Path) -> None:
    """Refuse an --out that is a file or cannot be created, before anything starts."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"drill: --out {out} is a file; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"drill: cannot create --out {out}: {exc.strerror}") from None


class _Live:
    """Print the drill's progress: events as lines, the running figures as a status line."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.guard = False
        self.ticks = 0
        self.status = console.status("starting", spinner="dots") if console.is_terminal else None
        if self.status is not None:
            self.status.start()

    def on_progress(self, kind: str, data: dict[str, Any]) -> None:
        """Show one progress report from the runner."""
        text = self._line(kind, data)
        if kind == "tick":
            self.ticks += 1
            if self.status is not None and text:
                self.status.update(text)
            elif text and self.ticks % 5 == 0:  # no terminal (CI, a log): a line each 5 s
                self.console.print(f"      {text}", highlight=False, style="dim")
            return
        if text:
            self.console.print(text, highlight=False)

    def _line(self, kind: str, data: dict[str, Any]) -> str:
        tag = "[magenta]on [/]" if self.guard else "[cyan]off[/]"
        if kind == "server":
            return f"PostgreSQL 18 started (max_connections {data['max_connections']}) in {data['seconds']:.1f} s"
        if kind == "run":
            self.guard = bool(data["guard"])
            state = (
                "ON: admission control + connection budget"
                if self.guard
                else "OFF: the app as in the postmortem"
            )
            return f"\n[bold]— run with the guard {state}[/]  (files: {data['dir']})"
        if kind == "phase":
            return f"{tag} [bold]{data['phase']}[/]"
        if kind == "note":
            return f"{tag}   {data['text']}"
        if kind == "alert_fired":
            return f"{tag}   [red]alert[/] {data.get('rule')}: {data['text']}"
        if kind == "root_cause":
            return f"{tag}   [yellow]root cause[/] {data['text']}\n{tag}   [yellow]remedy[/] {data.get('remedy', '')}"
        if kind == "incident_resolved":
            return f"{tag}   [green]incident resolved[/]"
        if kind == "tick":
            conns = data.get("connections")
            slots = f"{conns[0]}/{conns[1]} connections" if conns else "server not answering"
            return (
                f"{data['phase']}: {data['served']} ok/s, {data['failed']} failed/s, "
                f"{data['rejected']} shed/s, {slots}"
            )
        return ""

    def done(self) -> None:
        """Stop the status line."""
        if self.status is not None:
            self.status.stop()


def _print_report(console: Console, report: Any) -> None:
    from poolwarden.drill.report import PHASE_HEADER, comparison_rows, phase_rows

    runs = report.runs
    table = Table(title=f"{report.scenario}: guard off against guard on", title_justify="left")
    table.add_column("")
    for run in runs:
        table.add_column("guard on" if run.guard else "guard off")
    for row in comparison_rows(runs):
        table.add_row(*row)
    console.print()
    console.print(table)
    for run in runs:
        phases = Table(title=f"{'guard on' if run.guard else 'guard off'}: each phase",
                       title_justify="left")  # fmt: skip
        for name in PHASE_HEADER:
            phases.add_column(name, justify="left" if name == "phase" else "right")
        for row in phase_rows(run):
            phases.add_row(*row)
        console.print(phases)
    console.print(
        "failed = errors and timeouts (5 s); shed = 503 + Retry-After from the guard; "
        "latency from each request's scheduled start.",
        style="dim",
    )
    for run in runs:
        if run.postmortem:
            charts = ", ".join(Path(c).name for c in run.charts) or "no charts"
            console.print(f"postmortem ({'guard on' if run.guard else 'guard off'}): "
                          f"{run.postmortem}  (charts: {charts})")  # fmt: skip
            console.print(f"  again any time: poolwarden postmortem {run.incident_id} "
                          f"--store {run.store_url}", style="dim")  # fmt: skip
    console.print(
        f"report: {Path(report.out_dir) / 'drill.md'}, {Path(report.out_dir) / 'drill.json'}"
    )
