"""`poolwarden plan`: measure the best pool size on the real database.

Exit codes: 0 a recommendation was made, 2 bad input (a `PoolwardenError`, which the CLI
prints as one line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from poolwarden._dsn import resolve_dsn
from poolwarden.embedded import EmbeddedServer
from poolwarden.plan._live import read_server_settings
from poolwarden.plan.capacity import CapacityResult, Point, niced, plan_capacity
from poolwarden.plan.report import to_json, write_reports
from poolwarden.plan.split import BudgetSplit, split_budget
from poolwarden.plan.topology import Topology, load_topology
from poolwarden.plan.workload import load_workload, validate

__all__ = ["register"]

_SERVER_NICE = 10


def register(app: typer.Typer) -> None:
    """Add the `plan` command to `app` (once; a second call changes nothing)."""
    if not any(command.name == "plan" for command in app.registered_commands):
        app.command("plan")(plan_cmd)


def plan_cmd(
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            help="Server to measure [default: $POOLWARDEN_DSN, $DATABASE_URL, else the embedded one].",
        ),
    ] = None,
    workload: Annotated[
        str, typer.Option("--workload", help="oltp-rw, oltp-ro, a SQL file or a pgbench script.")
    ] = "oltp-rw",
    max_size: Annotated[int, typer.Option("--max-size", help="Largest pool size to try.")] = 64,
    slo_ms: Annotated[
        float | None, typer.Option("--slo-ms", help="p99 latency the pick must stay within.")
    ] = None,
    seconds: Annotated[float, typer.Option("--seconds", help="Seconds per measured size.")] = 5.0,
    scale: Annotated[
        int, typer.Option("--scale", help="pgbench -i scale for the built-in workloads.")
    ] = 10,
    out: Annotated[
        Path, typer.Option("--out", help="Directory for plan.json, plan.md and plan.png.")
    ] = Path("poolwarden-plan"),
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    topology_path: Annotated[
        Path | None,
        typer.Option("--topology", help="Topology file whose services share the budget."),
    ] = None,
) -> int:
    """Measure throughput and latency by pool size and recommend the size to use."""
    spec = load_workload(workload)
    # Read the topology (and its server) before measuring: a bad file fails in a second.
    topology = usable = None
    if topology_path is not None:
        topology = load_topology(topology_path)
        usable = read_server_settings(topology).usable_connections
        split_budget(topology, server_active=1, usable=usable)  # a fleet that cannot fit
    resolved = resolve_dsn(dsn)
    pid = None
    if resolved.dsn is None:
        server = EmbeddedServer()
        target = server.ensure_running()
        pid = server.status().pid
    else:
        target = resolved.dsn
    validate(spec, target)  # before the progress bar: a bad file fails with one clean line
    console = Console(stderr=True, highlight=False)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console, transient=True, disable=json_ or not console.is_terminal,
    ) as progress, niced(pid, _SERVER_NICE):  # fmt: skip
        task = progress.add_task(f"preparing {spec.name}", total=None)

        def on_point(point: Point) -> None:
            progress.update(task, description=_describe(point))

        result = plan_capacity(
            target, spec, max_size=max_size, slo_ms=slo_ms, seconds=seconds, scale=scale,
            on_point=on_point,
        )  # fmt: skip
    split = _split(topology, result, usable)
    paths = write_reports(result, out, split)
    if json_:
        print(to_json(result, split))
    else:
        _print_text(result, paths, Console(highlight=False, soft_wrap=True))
        if split is not None:
            print(split.explain())
    return 0


def _split(
    topology: Topology | None, result: CapacityResult, usable: int | None
) -> BudgetSplit | None:
    if topology is None or usable is None:
        return None
    return split_budget(topology, server_active=result.pick.size, usable=usable)


def _describe(point: Point) -> str:
    return f"measured size {point.size}: {point.tps:.0f} tps, p99 {point.p99_ms:.1f} ms"


def _print_text(result: CapacityResult, paths: dict[str, Path], console: Console) -> None:
    console.print(f"Recommended pool size: {result.pick.size}", style="bold green")
    console.print(result.reason, markup=False)
    for p in result.points:
        mark = "  <- pick" if p.size == result.pick.size else ""
        console.print(
            f"  size {p.size:>3}: {p.tps:>9.0f} tps  p50 {p.p50_ms:7.2f} ms  "
            f"p99 {p.p99_ms:7.2f} ms{mark}",
            markup=False,
        )
    if result.fit is not None:
        f = result.fit
        console.print(
            f"USL fit: sigma {f.sigma:.4f}, kappa {f.kappa:.5f}, peak at "
            f"{f.peak_size if f.peak_size else 'none'}",
            markup=False,
        )
    console.print(f"reports: {paths['json']}, {paths['md']}, {paths['png']}", markup=False)
