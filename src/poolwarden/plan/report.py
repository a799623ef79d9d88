"""Reports of a capacity plan: JSON, Markdown and a PNG chart.

The chart needs matplotlib (the ``plan`` extra); it is drawn with the Agg backend, so no
display is needed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from poolwarden.errors import ConfigError
from poolwarden.plan.capacity import CapacityResult
from poolwarden.plan.split import BudgetSplit

__all__ = [
    "write_reports",
]


def to_json(result: CapacityResult, split: BudgetSplit | None = None) -> str:
    """Return `result` as a JSON document (every field, points sorted by size).

    With `split`, the document also holds it under ``"split"``.
    """
    doc = dataclasses.asdict(result)
    if split is not None:
        doc["split"] = dataclasses.asdict(split)
    return json.dumps(_finite(doc), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    # JSON has no NaN: a size without a finished transaction has no latency, so null.
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render_markdown(result: CapacityResult, split: BudgetSplit | None = None) -> str:
    """Return `result` as a Markdown report: the pick, the fit, the points and the split."""
    fit = result.fit
    fit_line = (
        f"USL fit over {fit.points} sizes: sigma = {fit.sigma:.4f}, kappa = {fit.kappa:.5f}, "
        f"lambda = {fit.lam:.0f} tps; peak at N* = {fit.peak_size if fit.peak_size else 'none (kappa = 0)'}"
        if fit
        else "USL fit: too few sizes measured."
    )
    lines = [
        f"# Capacity plan: `{result.workload}` on {result.target}", "",
        f"**Recommended pool size: {result.pick.size}** ({result.pick.tps:.0f} tps, "
        f"p99 {result.pick.p99_ms:.1f} ms)", "",
        result.reason, "", fit_line, "",
        "| size | tps | p50 ms | p99 ms | transactions |", "|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for p in result.points:
        mark = " **pick**" if p.size == result.pick.size else ""
        lines.append(
            f"| {p.size}{mark} | {p.tps:.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.transactions} |"
        )
    lines += ["", f"{len(result.points)} sizes measured in {result.measuring_seconds:.0f} s.", ""]
    if split is not None:
        lines += ["## Budget split", "", *(f"- {line}" for line in split.explain().splitlines())]
        lines.append("")
    return "\n".join(lines)


def write_chart(result: CapacityResult, path: Path) -> Path:
    """Draw throughput and p99 against pool size, the USL fit and the pick, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        raise ConfigError("the chart needs matplotlib: pip install 'poolwarden[plan]'") from None
    sizes = [p.size for p in result.points]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        ax.plot(sizes, [p.tps for p in result.points], "o", color="tab:blue", label="throughput")
        if result.fit is not None:
            grid = [1 + i * (max(sizes) - 1) / 200 for i in range(201)]
            fitted = [result.fit.throughput(n) for n in grid]
            ax.plot(grid, fitted, "-", color="tab:blue", alpha=0.5, label="USL fit")
        ax.axvline(result.pick.size, color="tab:green", linestyle="--", label="pick")
        ax.set_xlabel("pool size (connections)")
        ax.set_ylabel("throughput (tps)")
        lat = ax.twinx()
        lat.plot(sizes, [p.p99_ms for p in result.points], "s-", color="tab:red", label="p99")
        if result.slo_ms is not None:
            lat.axhline(result.slo_ms, color="tab:red", linestyle=":", label="p99 SLO")
        lat.set_ylabel("p99 latency (ms)")
        handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower right")
        ax.set_title(f"{result.workload}: pick {result.pick.size} connections")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def write_reports(
    result: CapacityResult, out: Path, split: BudgetSplit | None = None
) -> dict[str, Path]:
    """Write plan.json, plan.md and plan.png into `out`; return their paths by format."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    paths = {"json": out / "plan.json", "md": out / "plan.md", "png": out / "plan.png"}
    paths["json"].write_text(to_json(result, split) + "\n")
    paths["md"].write_text(render_markdown(result, split))
    write_chart(result, paths["png"])
    return paths
