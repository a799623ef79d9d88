"""The fault library: seven ways a connection pool takes an API down, each set up for real.

Every scenario names its server (`max_connections`), its fleet (replicas and pool sizes),
its load, the fault (`inject`), the root cause the diagnosis must name, how soon an alert
must fire, and the remedy (`fix`) the runner applies once the cause is known - from the
diagnosis's evidence, the way an on-call engineer would. Reference: docs/drill.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from poolwarden.watch.incidents import RootCause

__all__ = ["DEFAULT_SCENARIO", "DrillContext", "SCENARIOS", "Scenario", "get_scenario"]


class DrillContext(Protocol):
    """What a scenario may do to the running drill (the runner implements it)."""

    guard: bool
    quick: bool

    def deploy(self, *, startup_s: float = 0.0, **changes: Any) -> None:
        """Roll the fleet to a new app configuration, one replica at a time.

        `startup_s`: how long each new version takes to start after the old one stopped.
        """

    def set_fault(self, kind: str, **params: Any) -> None:
        """Switch an app-side bug on in every replica (``"none"`` turns it off)."""

    def sql(self, statement: str) -> None:
        """Run `statement` on the drill's database as its owner."""

    def hold_sessions(self, count: int, application: str, *, in_transaction: bool) -> int:
        """Open up to `count` idle sessions named `application`; return how many opened."""

    def release_sessions(self, application: str) -> None:
        """Close the sessions held for `application`."""

    def restart_database(self, down_s: float) -> None:
        """Stop the server, keep it down `down_s` seconds, start it again."""

    def spike(self, factor: float, seconds: float) -> None:
        """Add `factor` x the base rate of extra arrivals for `seconds` (returns at once)."""


Action = Callable[[DrillContext], str]
Fix = Callable[[DrillContext, RootCause | None], str]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One fault, its setting, what the watch must find, and the remedy."""

    name: str
    title: str
    story: str
    cause: str  # the root-cause class the diagnosis must name
    detect_within_s: float  # from the fault to the first alert
    inject: Action
    fix: Fix
    max_connections: int = 30
    replicas: int = 3
    app: Mapping[str, Any] = field(default_factory=dict)  # AppConfig fields for the baseline
    rate: float = 60.0  # requests per second
    neighbours: int = 0  # idle sessions of another service ("billing-worker") all along
    rules: tuple[Mapping[str, Any], ...] = ()  # rule overrides (time compressed)


# -- oversized_pool: the postmortem -------------------------------------------------------


def _oversize(ctx: DrillContext) -> str:
    # The new version takes 2 s to start: the replicas already on it, their pools short of
    # 20, retry connecting meanwhile and take the slots each old replica frees.
    ctx.deploy(pool_min=20, pool_max=20, startup_s=2.0)
    return "deploy: orders-api's pool set to 20 connections per replica (min_size = max_size = 20)"


def _resize(ctx: DrillContext, cause: RootCause | None) -> str:
    size = int(cause.evidence.get("recommended_max_size", 0)) if cause is not None else 0
    size = size if size >= 1 else 5
    ctx.deploy(pool_min=min(2, size), pool_max=size, guard=True)
    return f"deploy: orders-api's pool max_size {size} per replica (the diagnosis's size), guard on"


# -- connection_leak ----------------------------------------------------------------------


def _leak(ctx: DrillContext) -> str:
    ctx.set_fault("leak", rate=0.15)
    return "deploy: a code path in POST /orders that never returns its connection (15 % of orders)"


def _rollback_leak(ctx: DrillContext, cause: RootCause | None) -> str:
    ctx.set_fault("none")
    ctx.deploy(guard=True, leak_threshold=2.0)  # the restart gives the leaked connections back
    return (
        "rollback: the leaking release reverted, replicas restarted, guard on with leak detection"
    )


# -- idle_in_transaction ------------------------------------------------------------------


def _idle_in_tx(ctx: DrillContext) -> str:
    ctx.set_fault("idle_in_transaction", rate=0.5, seconds=3.0)
    return "deploy: POST /orders calls the payment provider (3 s) inside its transaction"


def _timeout_idle_tx(ctx: DrillContext, cause: RootCause | None) -> str:
    ctx.set_fault("none")
    ctx.sql("ALTER ROLE orders_app SET idle_in_transaction_session_timeout = '5s'")
    ctx.deploy(guard=True)
    return (
        "rollback: the payment call moved out of the transaction; "
        "idle_in_transaction_session_timeout = 5s for role orders_app; guard on"
    )


# -- slow_query_storm ---------------------------------------------------------------------


def _slow_report(ctx: DrillContext) -> str:
    ctx.set_fault("slow_report", seconds=3.5)
    return "the revenue report's plan regressed: each report now runs for 3.5 s"


def _fix_report(ctx: DrillContext, cause: RootCause | None) -> str:
    ctx.set_fault("none")
    ctx.sql("ALTER ROLE orders_app SET statement_timeout = '2s'")
    ctx.deploy(guard=True)
    return "the report's plan fixed; statement_timeout = 2s for role orders_app; guard on"


# -- noisy_neighbor -----------------------------------------------------------------------


def _neighbour(ctx: DrillContext) -> str:
    held = ctx.hold_sessions(60, "reporting", in_transaction=False)
    return f"the reporting job opens connections until the server is full ({held} at first) and keeps them"


def _cap_neighbour(ctx: DrillContext, cause: RootCause | None) -> str:
    ctx.sql("ALTER ROLE reporting CONNECTION LIMIT 5")
    ctx.release_sessions("reporting")
    return "role reporting limited to 5 connections; its extra sessions closed"


# -- database_restart ---------------------------------------------------------------------


def _restart(ctx: DrillContext) -> str:
    ctx.restart_database(3.0 if ctx.quick else 10.0)
    return "the database restarted (down for a few seconds, as in a failover)"


def _wait_out(ctx: DrillContext, cause: RootCause | None) -> str:
    return "nothing to change: the server is back and the pools reconnected"


# -- traffic_spike ------------------------------------------------------------------------


def _spike(ctx: DrillContext) -> str:
    ctx.spike(2.0, 10.0 if ctx.quick else 30.0)
    return "traffic spike: 3x the usual request rate"


def _grow(ctx: DrillContext, cause: RootCause | None) -> str:
    size = int(cause.evidence.get("recommended_max_size", 0)) if cause is not None else 0
    size = max(size, 8)
    ctx.deploy(guard=True, pool_max=size)
    return f"pool max_size raised to {size} per replica (the diagnosis's size), guard on to shed the rest"


# A handler holds its connection ~0.1 s: 30 requests/s per replica need ~3 connections.
_APP: Mapping[str, Any] = {"pool_min": 2, "pool_max": 8, "work_ms": 100}

_COMPRESSED = (
    {"name": "PoolwardenIdleInTransactionTooLong", "threshold": 2, "clear": 1},
    {"name": "PoolwardenLongRunningQuery", "threshold": 2, "clear": 1},
)

SCENARIOS: Mapping[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "oversized_pool", "The postmortem: a pool allowed more connections than the server has",
            "A deploy sets orders-api's pool to 20 connections per replica. Four replicas "
            "want 80 of the server's 27 usable slots: the first replica restarted takes most "
            "of them, the others are left with one or two and their requests queue until "
            "the clients give up.",
            "pool_oversized", 15.0, _oversize, _resize,
            replicas=4, app={"pool_min": 4, "pool_max": 4, "work_ms": 150}, neighbours=3,
        ),
        Scenario(
            "connection_leak", "A code path that never returns its connection",
            "A release leaks the connection of 15 % of orders. The pools drain until "
            "requests wait for connections that never come back.",
            "connection_leak", 20.0, _leak, _rollback_leak,
            max_connections=60, replicas=2, app={**_APP, "leak_threshold": 1.0},
        ),
        Scenario(
            "idle_in_transaction", "Transactions left open while calling another service",
            "POST /orders now calls the payment provider inside its transaction: its "
            "connection sits idle in transaction, holding its locks, for seconds.",
            "idle_in_transaction", 15.0, _idle_in_tx, _timeout_idle_tx,
            max_connections=60, replicas=2, app=_APP, rules=_COMPRESSED,
        ),
        Scenario(
            "slow_query_storm", "A report whose plan regressed holds the connections",
            "The revenue report now runs for seconds. Every report holds its connection "
            "all along; the pools fill with slow queries and the fast requests wait.",
            "slow_queries", 15.0, _slow_report, _fix_report,
            max_connections=60, replicas=2, app=_APP, rules=_COMPRESSED,
        ),
        Scenario(
            "noisy_neighbor", "Another service takes the slots the API needs",
            "The reporting job opens connections until the server is full and keeps them. "
            "orders-api's pools recycle their connections and cannot open new ones.",
            "noisy_neighbor", 15.0, _neighbour, _cap_neighbour,
            max_connections=40, replicas=2, app={**_APP, "pool_max_lifetime": 3.0},
        ),
        Scenario(
            "database_restart", "The database restarts under load",
            "The server restarts (a failover, a crash, a minor-version upgrade). Every "
            "connection breaks; the pools must notice and reconnect.",
            "database_down", 10.0, _restart, _wait_out,
            max_connections=60, replicas=2, app=_APP,
        ),
        Scenario(
            "traffic_spike", "Three times the traffic for a while",
            "A marketing e-mail goes out: three times the usual requests. The pools are "
            "too small for it; requests queue for connections until clients give up.",
            "pool_undersized", 15.0, _spike, _grow,
            max_connections=60, replicas=2, app={**_APP, "pool_max": 4},
        ),
    )
}  # fmt: skip

DEFAULT_SCENARIO = "oversized_pool"


def get_scenario(name: str) -> Scenario:
    """Return the scenario called `name`; raise ValueError naming the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise ValueError(f"unknown scenario {name!r}; choose one of: {known}") from None
