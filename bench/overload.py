"""Overload: open-loop arrivals against a plain pool of 100 and a guarded pool, in one run.

    python -m bench.overload [--duration 5] [--loads 0.5,1,3,10] [--json]

1. Measures the capacity of a short write transaction (UPDATE + COMMIT) on the server with
   a closed-loop sweep over concurrency, and keeps the best concurrency.
2. For each load factor, sends requests at a fixed rate (load x capacity) for `duration`
   seconds. Arrivals are scheduled in advance and latency is measured from the scheduled
   start, so a stalled client cannot hide queueing (no coordinated omission, as in wrk2).
3. Runs the same arrivals through a plain psycopg_pool of max 100 (timeout 30 s, its
   default) and through the guard with its limit at the best concurrency.

Reports served throughput, p50/p99 of served requests, rejections and how fast they came.
Every loop is bounded: arrivals stop after `duration`, and whatever is still running
`drain` seconds later is cancelled and counted as unserved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bench._server import machine, server
from poolwarden.drill import open_loop
from poolwarden.guard import guard

ROWS = 10_000
# A short write transaction that also costs the server some CPU (the generate_series
# count is calibrated to --work-ms), so the server, not this Python client, saturates
# first: on a small machine a bare UPDATE is cheaper for PostgreSQL than for asyncio.
SQL = (
    "WITH w AS (SELECT count(*) FROM generate_series(1, %s)) "
    "UPDATE bench_accounts SET balance = balance + (SELECT count(*) FROM w) WHERE id = %s"
)
_WORK = {"n": 1}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One arm at one load: what was served and how fast, what was refused."""

    arm: str
    load: float
    offered_rps: float
    served_rps: float
    served: int
    rejected: int
    unserved: int
    p50_ms: float
    p99_ms: float
    reject_p50_ms: float
    reject_p99_ms: float
    client_cpu: float  # cores the load generator itself used: taken from the server


def _ms(seconds: float | None) -> float:
    return float("nan") if seconds is None else seconds * 1000


def _rejected(exc: BaseException) -> str:
    return "rejected" if isinstance(exc, PoolTimeout) else "failed"


async def _prepare(dsn: str, work_ms: float) -> None:
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_accounts")
        await conn.execute("CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint)")
        await conn.execute(
            "INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, %s) g", (ROWS,)
        )
        probe = 200_000
        started = time.perf_counter()
        await conn.execute("SELECT count(*) FROM generate_series(1, %s)", (probe,))
        per_row = (time.perf_counter() - started) / probe
    await pool.close()
    _WORK["n"] = max(1, int(work_ms / 1000 / per_row))


async def _closed_loop(dsn: str, concurrency: int, seconds: float) -> float:
    pool = AsyncConnectionPool(dsn, min_size=concurrency, max_size=concurrency, open=False)
    await pool.open(wait=True)
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            async with pool.connection() as conn:
                await conn.execute(SQL, (_WORK["n"], random.randint(1, ROWS)))
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await pool.close()
    return done / seconds


async def capacity(dsn: str, seconds: float) -> tuple[float, int, dict[int, float]]:
    """Return (peak throughput, the knee, the sweep).

    The knee is the smallest concurrency within 90 % of the peak: past it, more
    connections add latency, not throughput (HikariCP's "small pool, saturated").
    """
    sweep = {c: await _closed_loop(dsn, c, seconds) for c in (1, 2, 4, 8, 16, 32)}
    peak = max(sweep.values())
    knee = min(c for c, x in sweep.items() if x >= 0.90 * peak)
    return peak, knee, sweep


async def run_arm(dsn: str, arm: str, best: int, rate: float, load: float, args: Any) -> Outcome:
    """Run one arm (plain or guarded) at one load."""
    if arm == "plain pool (max 100)":
        pool: Any = AsyncConnectionPool(dsn, min_size=100, max_size=100, open=False)
    else:
        pool = guard(
            AsyncConnectionPool(dsn, min_size=best, max_size=best, open=False),
            name=f"overload-{load}", registry=CollectorRegistry(),
            max_waiting=best, timeout=args.guard_timeout,
        )  # fmt: skip
    await pool.open(wait=True)
    cpu_before = time.process_time()

    async def request() -> None:
        async with pool.connection() as conn:
            await conn.execute(SQL, (_WORK["n"], random.randint(1, ROWS)))

    try:
        result = await open_loop(
            request, rate=rate, duration=args.duration, drain=args.drain, classify=_rejected
        )
    finally:
        cpu = time.process_time() - cpu_before
        await pool.close()
    return Outcome(
        arm=arm, load=load, offered_rps=rate, served_rps=result.served_rps,
        served=result.served, rejected=result.rejected,
        # Failures other than a pool timeout count as unserved, as they always have here.
        unserved=result.offered - result.served - result.rejected,
        p50_ms=_ms(result.served_p50_s), p99_ms=_ms(result.served_p99_s),
        reject_p50_ms=_ms(result.rejected_p50_s), reject_p99_ms=_ms(result.rejected_p99_s),
        client_cpu=cpu / result.window_s,
    )  # fmt: skip


async def bench(dsn: str, args: Any) -> dict[str, Any]:
    """Measure capacity, then every arm at every load."""
    await _prepare(dsn, args.work_ms)
    peak, best, sweep = await capacity(dsn, args.sweep_seconds)
    outcomes = []
    for load in args.loads:
        for arm in ("plain pool (max 100)", f"guard (limit {best})"):
            outcomes.append(await run_arm(dsn, arm, best, peak * load, load, args))
    return {"peak_rps": peak, "best_concurrency": best, "sweep": sweep, "work_ms": args.work_ms,
            "outcomes": [asdict(o) for o in outcomes]}  # fmt: skip


def _print(report: dict[str, Any]) -> None:
    print(f"machine: {report['machine']}")
    sweep = ", ".join(f"{c}: {x:.0f}" for c, x in report["sweep"].items())
    print(f"workload: UPDATE one row + {report['work_ms']} ms of server CPU, then COMMIT; "
          f"server at nice {report['server_nice']}")  # fmt: skip
    print(f"capacity (closed loop, tx/s by concurrency): {sweep}")
    print(f"peak {report['peak_rps']:.0f} tx/s; knee (smallest concurrency within 90 % of "
          f"peak) {report['best_concurrency']}: the guard's limit\n")  # fmt: skip
    print("| load | arm | offered/s | served/s | % of peak | p50 ms | p99 ms | rejected "
          "| reject p50 ms | reject p99 ms | unserved | client CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for o in report["outcomes"]:
        print(f"| {o['load']}x | {o['arm']} | {o['offered_rps']:.0f} | {o['served_rps']:.0f} | "
              f"{100 * o['served_rps'] / report['peak_rps']:.0f} % | {o['p50_ms']:.1f} | "
              f"{o['p99_ms']:.1f} | {o['rejected']} | {o['reject_p50_ms']:.2f} | "
              f"{o['reject_p99_ms']:.2f} | {o['unserved']} | {o['client_cpu']:.2f} |")  # fmt: skip
    guard_rows = {o["load"]: o for o in report["outcomes"] if o["arm"].startswith("guard")}
    if 0.5 in guard_rows and 10.0 in guard_rows:
        g10, half = guard_rows[10.0], guard_rows[0.5]
        print(f"\nguard at 10x: serves {100 * g10['served_rps'] / report['peak_rps']:.0f} % of "
              f"peak (target >= 95 %); p99 {g10['p99_ms']:.1f} ms = "
              f"{g10['p99_ms'] / half['p99_ms']:.2f}x the p99 at 0.5x (target <= 3x)")  # fmt: skip


def main() -> None:
    """Parse flags, run against a private embedded server, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of arrivals per run")
    parser.add_argument(
        "--drain", type=float, default=10.0, help="seconds to finish after arrivals stop"
    )
    parser.add_argument(
        "--sweep-seconds", type=float, default=2.0, help="seconds per capacity point"
    )
    parser.add_argument("--loads", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.5, 1.0, 3.0, 10.0], help="load factors, comma-separated")  # fmt: skip
    parser.add_argument("--work-ms", type=float, default=20.0, help="server CPU per transaction")
    parser.add_argument("--guard-timeout", type=float, default=0.5, help="guard's acquire timeout")
    parser.add_argument("--server-nice", type=int, default=10,
                        help="CPU niceness of the server, so the client is not starved")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    # Cancelling what is still running after the drain makes psycopg log each cancel.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    with server(max_connections=120, nice=args.server_nice) as dsn:
        report = {"machine": machine(), "server_nice": args.server_nice,
                  **asyncio.run(bench(dsn, args))}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)


if __name__ == "__main__":
    main()
