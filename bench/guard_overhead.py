"""Guard overhead: acquire + SELECT 1 + release, guarded vs raw psycopg_pool, in one run.

    python bench/guard_overhead.py [--ops 20000] [--rounds 5] [--json]

Runs raw and guarded loops alternately (ABAB...) on the same pool size and server, so
drift hits both alike, and reports the median per-operation time of each, their ratio,
the time the guard adds, and the guard's hot path alone (admit + lease + release with no
database). Target (issue 3): at most 1.10x raw and at most 5 us added.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from bench._server import machine, server
from poolwarden.guard import GuardOptions, PoolGuard, PoolState, PsycopgPoolSaturated, guard


def _sync_loop(pool: Any, ops: int, query: bool = True) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        with pool.connection() as conn:
            if query:
                conn.execute("SELECT 1")
    return (time.perf_counter() - started) / ops


async def _async_loop(pool: Any, ops: int, query: bool = True) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        async with pool.connection() as conn:
            if query:
                await conn.execute("SELECT 1")
    return (time.perf_counter() - started) / ops


def _hot_path(ops: int) -> float:
    """Admit + lease + release on a PoolGuard with no database behind it."""
    state = PoolState(used=0, idle=4, max=4, idle_max=4, idle_min=4, pending=0)
    pool_guard = PoolGuard(
        "hot-path", pool_max=4, state=lambda: state, error=PsycopgPoolSaturated,
        options=GuardOptions(registry=CollectorRegistry()), asynchronous=False,
    )  # fmt: skip
    started = time.perf_counter()
    for _ in range(ops):
        requested = time.monotonic()
        admit = pool_guard.admit()
        pool_guard.release(admit, pool_guard.lease(admit, requested))
    elapsed = (time.perf_counter() - started) / ops
    pool_guard.close()
    return elapsed


def _alternate(
    raw: Callable[[], float], guarded: Callable[[], float], rounds: int
) -> dict[str, float]:
    raw_t, guarded_t = [], []
    for _ in range(rounds):
        raw_t.append(raw())
        guarded_t.append(guarded())
    r, g = statistics.median(raw_t), statistics.median(guarded_t)
    return {"raw_us": r * 1e6, "guarded_us": g * 1e6, "ratio": g / r, "added_us": (g - r) * 1e6}


def run_sync(dsn: str, ops: int, rounds: int) -> dict[str, float]:
    """Measure the sync pool, raw and guarded."""
    # Both arms use the same pool and so the same four server connections: only the
    # guard differs (separate pools would compare different backends too).
    inner = ConnectionPool(dsn, min_size=4, max_size=4, open=False)
    guarded = guard(inner, name="bench-sync", registry=CollectorRegistry())
    guarded.open(wait=True)
    raw_pool = guarded.wrapped
    try:
        _sync_loop(raw_pool, ops // 10)  # warm up both
        _sync_loop(guarded, ops // 10)
        with_query = _alternate(
            lambda: _sync_loop(raw_pool, ops), lambda: _sync_loop(guarded, ops), rounds
        )
        # Without the query the round trip's jitter is gone: this isolates what the
        # guard adds to one checkout.
        empty = _alternate(
            lambda: _sync_loop(raw_pool, ops * 5, query=False),
            lambda: _sync_loop(guarded, ops * 5, query=False),
            rounds,
        )
        return {**with_query, **{f"empty_{k}": v for k, v in empty.items()}}
    finally:
        guarded.close()


async def run_async(dsn: str, ops: int, rounds: int) -> dict[str, float]:
    """Measure the async pool, raw and guarded."""
    guarded = guard(
        AsyncConnectionPool(dsn, min_size=4, max_size=4, open=False),
        name="bench-async", registry=CollectorRegistry(),
    )  # fmt: skip
    await guarded.open(wait=True)
    raw_pool = guarded.wrapped  # the same connections for both arms
    try:
        await _async_loop(raw_pool, ops // 10)
        await _async_loop(guarded, ops // 10)
        out: dict[str, float] = {}
        for prefix, query, count in (("", True, ops), ("empty_", False, ops * 5)):
            raw_t, guarded_t = [], []
            for _ in range(rounds):
                raw_t.append(await _async_loop(raw_pool, count, query))
                guarded_t.append(await _async_loop(guarded, count, query))
            r, g = statistics.median(raw_t), statistics.median(guarded_t)
            out |= {f"{prefix}raw_us": r * 1e6, f"{prefix}guarded_us": g * 1e6,
                    f"{prefix}ratio": g / r, f"{prefix}added_us": (g - r) * 1e6}  # fmt: skip
        return out
    finally:
        await guarded.close()


def main() -> None:
    """Run the benchmark and print a Markdown table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    with server(fsync=False, synchronous_commit=False) as dsn:
        results = {
            "sync": run_sync(dsn, args.ops, args.rounds),
            "async": asyncio.run(run_async(dsn, args.ops, args.rounds)),
        }
    hot = statistics.median(_hot_path(args.ops * 5) for _ in range(args.rounds))
    report = {"machine": machine(), "ops": args.ops, "rounds": args.rounds,
              "hot_path_us": hot * 1e6, **results}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}; {args.ops} ops x {args.rounds} rounds, median")
    print("| psycopg_pool | operation | raw µs/op | guarded µs/op | ratio | added µs |")
    print("|---|---|---|---|---|---|")
    for kind in ("sync", "async"):
        r = results[kind]
        for prefix, what in (("", "acquire + SELECT 1 + release"), ("empty_", "acquire + release")):
            print(f"| {kind} | {what} | {r[prefix + 'raw_us']:.1f} | "
                  f"{r[prefix + 'guarded_us']:.1f} | {r[prefix + 'ratio']:.3f}x | "
                  f"{r[prefix + 'added_us']:.1f} |")  # fmt: skip
    print(f"| - | guard hot path alone (admit + lease + release, no pool) | | "
          f"{report['hot_path_us']:.2f} | | |")  # fmt: skip


if __name__ == "__main__":
    main()
