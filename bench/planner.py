"""Planner vs exhaustive sweep: does the search find the peak for a fraction of the cost?

    python -m bench.planner [--max-size 64] [--seconds 3] [--scale 64] [--workload oltp-rw]

On one niced embedded server (bench/_server.py), measures every size 1..max-size, then
runs the planner's search on the same server. Reports the pick's throughput against the
sweep's best (target: within 5 %) and the planner's measuring time against the sweep's
(target: at most 25 %).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench._server import machine, server
from poolwarden.plan.capacity import (
    PgbenchMeter,
    choose,
    fill_for_fit,
    refine_pick,
    search,
)
from poolwarden.plan.workload import initialise, load_workload


def main() -> None:
    """Run the sweep and the planner; print their figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--scale", type=int, default=64)
    parser.add_argument("--workload", default="oltp-rw")
    args = parser.parse_args()
    workload = load_workload(args.workload)
    with server(max_connections=args.max_size + 20, nice=10) as dsn:
        if workload.needs_init():
            initialise(dsn, args.scale)
        with tempfile.TemporaryDirectory() as tmp:
            meter = PgbenchMeter(dsn, workload, args.seconds, Path(tmp))
            meter(2)  # warm-up
            sweep = {n: meter(n) for n in range(1, args.max_size + 1)}
            cache = search(meter, args.max_size)
            refine_pick(meter, cache, None)
            fill_for_fit(meter, cache, args.max_size)
    best = max(sweep.values(), key=lambda p: p.tps)
    pick, _, _ = choose(cache, None)
    # Judge the pick on the sweep's measurement of the same size: one run each, no luck.
    ratio_tps = sweep[pick.size].tps / best.tps
    ratio_time = sum(p.seconds for p in cache.values()) / sum(p.seconds for p in sweep.values())
    print(json.dumps({
        "machine": machine(), "workload": workload.name, "seconds": args.seconds,
        "sweep_best_size": best.size, "sweep_best_tps": round(best.tps),
        "pick": pick.size, "pick_tps_in_sweep": round(sweep[pick.size].tps),
        "pick_vs_best": round(ratio_tps, 3), "planner_sizes": sorted(cache),
        "time_ratio": round(ratio_time, 3),
        "targets_met": ratio_tps >= 0.95 and ratio_time <= 0.25,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
