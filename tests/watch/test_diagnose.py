"""Each root cause is named with its culprit, its evidence and its remedy; health is silent."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

import psycopg
import pytest
from tests.fixtures.pg import PgServer

from poolwarden.errors import (
    ConfigError,
    DatabaseUnreachable,
    TargetBadResponse,
    TargetTimeout,
    TooManyConnections,
)
from poolwarden.probe.pgbouncer import (
    PgBouncerConfig,
    PgBouncerDatabase,
    PgBouncerPool,
    PgBouncerSnapshot,
)
from poolwarden.probe.postgres import (
    PROBE_APPLICATION_NAME,
    STATES,
    ActiveQuery,
    ConnectionGroup,
    IdleInTransaction,
    LockWait,
    ServerSnapshot,
    snapshot,
)
from poolwarden.probe.scrape import ScrapeResult, parse_metrics
from poolwarden.watch.diagnose import (
    CAUSES,
    DiagnosisThresholds,
    Finding,
    diagnose,
    record_diagnosis,
)
from poolwarden.watch.observation import Observation, TargetInfo
from poolwarden.watch.series import SeriesStore

NOW = datetime(2024, 4, 5, 17, 0, tzinfo=UTC)

# --- builders -------------------------------------------------------------------------------


def server(
    apps: Mapping[str, Mapping[str, int]] | None = None,
    *,
    max_connections: int = 100,
    idle_in_transaction: tuple[IdleInTransaction, ...] = (),
    oldest: ActiveQuery | None = None,
    lock_waits: tuple[LockWait, ...] = (),
) -> ServerSnapshot:
    """A snapshot with `apps` ({application: {state: count}}), the probe and 3 reserved slots."""
    groups = [
        ConnectionGroup(app, f"{app}_user", "app", state, n)
        for app, states in (apps or {}).items()
        for state, n in states.items()
        if n
    ]
    groups.append(ConnectionGroup(PROBE_APPLICATION_NAME, "postgres", "app", "active", 1))
    by_state = dict.fromkeys(STATES, 0)
    for g in groups:
        by_state[g.state] += g.count
    return ServerSnapshot(
        target="postgres@127.0.0.1:5432/app", taken_at=NOW, server_version="18.1",
        server_version_num=180001, max_connections=max_connections,
        superuser_reserved_connections=3, reserved_connections=0,
        usable_connections=max_connections - 3,
        client_connections=sum(g.count for g in groups), by_state=by_state,
        groups=tuple(groups), idle_in_transaction=idle_in_transaction, oldest_active_query=oldest,
        oldest_active_query_s=oldest.age_s if oldest else 0.0, lock_waits=lock_waits,
        role_limits=(), database_limits=(), background=(), background_processes=0,
        probe_pid=1, session_user="postgres", database="app", superuser=True,
        full_visibility=True,
    )  # fmt: skip


def pool_text(
    pool: str,
    *,
    max: int = 10,
    used: int = 0,
    idle: int = 0,
    pending: int = 0,
    leaks: int = 0,
    rejections: int = 0,
    checkouts: int = 0,
    use_seconds: float = 0.0,
    waits: Mapping[str, int] | None = None,
) -> str:
    """The guard's metric lines for one pool (`waits`: cumulative wait buckets by `le`)."""
    lab = f'pool_name="{pool}"'
    buckets = waits or {"0.01": 0, "+Inf": 0}
    lines = [
        f'db_client_connection_count{{{lab},state="used"}} {used}',
        f'db_client_connection_count{{{lab},state="idle"}} {idle}',
        f"db_client_connection_max{{{lab}}} {max}",
        f"db_client_connection_pending_requests{{{lab}}} {pending}",
        f"poolwarden_pool_leaks_total{{{lab}}} {leaks}",
        f'poolwarden_pool_rejections_total{{{lab},reason="queue_full"}} {rejections}',
        *(f'db_client_connection_wait_time_seconds_bucket{{{lab},le="{le}"}} {n}'
          for le, n in buckets.items()),
        f"db_client_connection_wait_time_seconds_count{{{lab}}} {buckets['+Inf']}",
        f"db_client_connection_wait_time_seconds_sum{{{lab}}} 0",
        f'db_client_connection_use_time_seconds_bucket{{{lab},le="+Inf"}} {checkouts}',
        f"db_client_connection_use_time_seconds_count{{{lab}}} {checkouts}",
        f"db_client_connection_use_time_seconds_sum{{{lab}}} {use_seconds}",
    ]  # fmt: skip
    return "\n".join(lines)


HEADER = """\
# TYPE db_client_connection_count gauge
# TYPE db_client_connection_max gauge
# TYPE db_client_connection_pending_requests gauge
# TYPE poolwarden_pool_leaks counter
# TYPE poolwarden_pool_rejections counter
# TYPE db_client_connection_wait_time_seconds histogram
# TYPE db_client_connection_use_time_seconds histogram
"""


def scrape(*pools: str) -> ScrapeResult:
    """Parse the lines of `pools` (from `pool_text`) as one app target's /metrics."""
    return parse_metrics(HEADER + "\n".join(pools) + "\n", url="http://127.0.0.1:8000/metrics")


def observe(
    db: ServerSnapshot | Exception,
    targets: Mapping[str, ScrapeResult] | None = None,
    *,
    at: float = 1000.0,
    pgbouncers: Mapping[str, PgBouncerSnapshot] | None = None,
) -> Observation:
    """One tick over database 'main' and app targets that all use it."""
    targets = targets or {}
    return Observation(
        at=at,
        databases={"main": db},  # type: ignore[dict-item]
        targets=dict(targets),
        pgbouncers=dict(pgbouncers or {}),
        target_info={t: TargetInfo(t, f"http://{t}/metrics", "main") for t in targets},
    )


def causes(findings: list[Finding]) -> list[str]:
    return [f.cause for f in findings]


def the(cause: str, findings: list[Finding]) -> Finding:
    """Return the one finding of `cause`."""
    matching = [f for f in findings if f.cause == cause]
    assert len(matching) == 1, causes(findings)
    return matching[0]


def idle_tx(pid: int, app: str, idle_s: float) -> IdleInTransaction:
    return IdleInTransaction(pid, app, f"{app}_user", "app", idle_s, idle_s + 1, aborted=False)


def lock_wait(pid: int, app: str, waiting_s: float, blockers: dict[int, str]) -> LockWait:
    return LockWait(
        pid, app, f"{app}_user", "app", waiting_s, "transactionid", "ShareLock",
        tuple(blockers), tuple(blockers.values()),
    )  # fmt: skip


# --- health -----------------------------------------------------------------------------------


def test_a_healthy_server_yields_no_finding() -> None:
    """A server at a third of its slots, a calm pool, short idle transactions: nothing to say."""
    snap = server(
        {"orders-api": {"idle": 20, "active": 5}, "billing": {"idle": 5}},
        idle_in_transaction=(idle_tx(7, "billing", 2.0),),
        oldest=ActiveQuery(8, "orders-api", "u", "app", 0.3, ""),
    )
    targets = {"orders-api": scrape(pool_text("orders-api", max=30, used=5, idle=20))}
    assert diagnose(observe(snap, targets)) == []


# --- pool_oversized -----------------------------------------------------------------------


def seed_server() -> ServerSnapshot:
    """The postmortem: orders-api holds 90 of 97 usable slots, 85 of them idle."""
    return server({"orders-api": {"idle": 85, "active": 5}, "billing": {"idle": 5}})


def test_the_seed_scenario_is_pool_oversized_naming_the_app_and_the_remedy_arithmetic() -> None:
    """One app with pool max 100 holding 90 of 97 usable, mostly idle: pool_oversized, first."""
    targets = {"orders-api": scrape(pool_text("orders-api", max=100, used=5, idle=85, pending=4))}
    findings = diagnose(observe(seed_server(), targets))
    top = findings[0]
    assert (top.cause, top.culprit, top.database) == ("pool_oversized", "orders-api", "main")
    assert top.confidence >= 0.9
    assert top.evidence["held_by_culprit"] == 90
    assert top.evidence["culprit_idle"] == 85
    assert top.evidence["usable"] == 97
    assert top.evidence["pool_max"] == 100
    # 85 % of 97 = 82 slots, less billing's 5: 77 for the one replica.
    assert top.remedy == (
        "lower orders-api's pool max_size from 100 to 77 (1 replica x 77 = 77 fits 97 usable)"
        " - see 'poolwarden plan'"
    )
    assert "orders-api holds 90 (85 idle)" in top.summary
    # The app's own pool is the one waiting, so no other service is to blame.
    assert "noisy_neighbor" not in causes(findings)


def test_replicas_share_the_budget_in_the_remedy() -> None:
    """Four replicas of one pool: the remedy divides the budget by four."""
    snap = server({"orders-api": {"idle": 80, "active": 10}})
    targets = {f"orders-api-{i}": scrape(pool_text("orders-api", max=100)) for i in range(4)}
    top = diagnose(observe(snap, targets))[0]
    assert (top.cause, top.culprit) == ("pool_oversized", "orders-api")
    assert top.evidence["replicas"] == 4
    assert top.evidence["pools_max_total"] == 400
    assert "from 100 to 20 (4 replicas x 20 = 80 fits 97 usable)" in top.remedy


def test_a_refused_server_is_diagnosed_from_the_last_recorded_tick() -> None:
    """When the probe gets 53300, the store's last tick still says who holds the slots."""
    store = SeriesStore()
    record_diagnosis(store, observe(seed_server(), at=999.0))
    full = TooManyConnections("postgres@127.0.0.1:5432/app: sorry, too many clients already")
    top = diagnose(observe(full, at=1000.0), store)[0]
    assert (top.cause, top.culprit) == ("pool_oversized", "orders-api")
    assert top.evidence["refused"] == 1
    assert top.evidence["held_by_culprit"] == 90
    assert "refuses connections (53300" in top.summary


def test_pools_allowed_more_than_usable_blame_the_largest_pool() -> None:
    """Spread load on a full server whose pools may open 160 > 97: the largest pool is named."""
    snap = server({f"svc{i}": {"idle": 20, "active": 4} for i in range(4)})
    targets = {
        "svc0": scrape(pool_text("svc0", max=100)),
        "svc1": scrape(pool_text("svc1", max=60)),
    }
    findings = diagnose(observe(snap, targets))
    assert findings[0].cause == "pool_oversized"
    assert findings[0].culprit == "svc0"
    assert findings[0].evidence["pools_max_total"] == 160
    assert findings[0].confidence > the("server_saturated", findings).confidence


# --- server_saturated -----------------------------------------------------------------------


def test_a_full_server_with_load_spread_evenly_is_server_saturated_not_pool_oversized() -> None:
    """Four apps with 24 connections each fill the server: the load, not one pool, is the cause."""
    snap = server({f"svc{i}": {"active": 16, "idle": 8} for i in range(4)})
    findings = diagnose(observe(snap))
    assert causes(findings) == ["server_saturated"]
    f = findings[0]
    assert f.culprit == "main"
    assert f.evidence["active"] == 65  # 64 + the probe
    assert f.evidence["applications"] == 4
    assert f.confidence == 0.8


def test_many_active_sessions_saturate_a_server_that_is_not_full() -> None:
    """60 of 97 slots active at once, spread over three apps: server_saturated."""
    snap = server({"a": {"active": 20}, "b": {"active": 20}, "c": {"active": 20}})
    f = the("server_saturated", diagnose(observe(snap)))
    assert f.evidence["client_connections"] == 61


def test_a_refused_server_without_history_says_the_holder_is_unknown() -> None:
    """53300 with no recorded tick: a low-confidence server_saturated that says what it lacks."""
    findings = diagnose(observe(TooManyConnections("sorry, too many clients already")))
    f = the("server_saturated", findings)
    assert (f.culprit, f.confidence) == ("main", 0.4)
    assert "no earlier snapshot says who holds the slots" in f.summary
    assert causes(findings) == ["server_saturated"]


# --- noisy_neighbor -------------------------------------------------------------------------


def test_a_neighbour_holding_the_slots_while_our_pool_waits_is_noisy_neighbor() -> None:
    """reporting (unguarded) holds 80 of 97 while orders-api's pool waits: blame reporting."""
    snap = server({"reporting": {"idle": 70, "active": 10}, "orders-api": {"active": 10}})
    targets = {"orders-api": scrape(pool_text("orders-api", max=10, used=10, pending=6))}
    findings = diagnose(observe(snap, targets))
    top = findings[0]
    assert (top.cause, top.culprit) == ("noisy_neighbor", "reporting")
    assert top.evidence["held_by_culprit"] == 80
    assert top.evidence["victim_pending"] == 6
    assert "ALTER ROLE reporting_user CONNECTION LIMIT" in top.remedy
    assert "pool_undersized" not in causes(findings)  # the server is full, not roomy


# --- pool_undersized ------------------------------------------------------------------------


def test_a_waiting_pool_on_a_roomy_quiet_server_is_pool_undersized() -> None:
    """Pool at 10/10 with 8 waiting and rejections, server at 21/97 and quiet: raise the pool."""
    snap = server({"orders-api": {"active": 10}, "billing": {"idle": 10}})
    waits = {"0.01": 10, "0.5": 60, "1.0": 100, "+Inf": 100}
    targets = {
        "orders-api": scrape(
            pool_text("orders-api", max=10, used=10, pending=8, rejections=3, waits=waits)
        )
    }
    f = the("pool_undersized", diagnose(observe(snap, targets)))
    assert f.culprit == "orders-api"
    assert f.evidence["pending"] == 8
    assert f.evidence["free"] == 97 - 21
    assert f.evidence["wait_p95_s"] == 0.938  # 0.5 + 0.5 * (95 - 60) / 40
    assert f.confidence == 0.85
    assert f.remedy.startswith("raise orders-api's pool max_size from 10 to 20")


def test_a_waiting_pool_on_a_busy_server_is_not_undersized() -> None:
    """With 60 of 97 slots active, a bigger pool would only add load: no pool_undersized."""
    snap = server({"orders-api": {"active": 10}, "batch": {"active": 50}})
    targets = {"orders-api": scrape(pool_text("orders-api", max=10, used=10, pending=8))}
    assert "pool_undersized" not in causes(diagnose(observe(snap, targets)))


def pgbouncer(cl_waiting: int, maxwait_s: float) -> PgBouncerSnapshot:
    pool = PgBouncerPool(
        "app", "app_user", 20, cl_waiting, 0, 0, 5, 0, 0, 0, 0, 0, 0, maxwait_s, "transaction"
    )
    db = PgBouncerDatabase("app", "127.0.0.1", 5432, "app", "", 5, 0, 0, "transaction", 0, 5,
                           paused=False, disabled=False)  # fmt: skip
    config = PgBouncerConfig(100, 20, 0, 0, 5.0, 0, 0, "transaction", 120.0, 600.0, 3600.0, 0.0, {})
    return PgBouncerSnapshot(
        "pgbouncer@127.0.0.1:6432/pgbouncer", NOW, "1.25.0", (1, 25, 0), (pool,), (), (db,),
        config, 20, cl_waiting, 5, 0, 0, maxwait_s, {},
    )  # fmt: skip


def test_pgbouncer_clients_waiting_while_the_server_has_room_is_pool_undersized() -> None:
    """15 clients wait 3 s on a pool_size of 5 while the server is nearly empty."""
    obs = observe(server({"pgbouncer": {"active": 5}}), pgbouncers={"edge": pgbouncer(15, 3.0)})
    f = the("pool_undersized", diagnose(obs))
    assert f.culprit == "pgbouncer 'edge' pool app/app_user"
    assert f.evidence["clients_waiting"] == 15
    assert "from 5 to 10" in f.remedy
    assert f.confidence == 0.75


# --- connection_leak ----------------------------------------------------------------------


def test_the_guards_leak_counter_rising_is_connection_leak() -> None:
    """Leaks counted in the last minute (from the store) name the pool, with high confidence."""
    store = SeriesStore()
    for at, leaks in ((990.0, 1), (1000.0, 3)):
        targets = {"orders-api": scrape(pool_text("orders-api", used=4, leaks=leaks))}
        record_diagnosis(store, observe(server(), targets, at=at))
    f = the("connection_leak", diagnose(observe(server(), targets), store))
    assert (f.culprit, f.confidence) == ("orders-api", 0.9)
    assert f.evidence["leaks"] > 0


def test_leaks_counted_while_the_sessions_sit_idle_in_transaction_name_that_first() -> None:
    """Checkouts held past the threshold, idle in a transaction on the server: that is the cause."""
    store = SeriesStore()
    tx = tuple(idle_tx(100 + i, "orders-api", 45.0) for i in range(3))
    snap = server({"orders-api": {"idle in transaction": 3, "active": 1}}, idle_in_transaction=tx)
    for at, leaks in ((990.0, 1), (1000.0, 3)):
        targets = {"orders-api": scrape(pool_text("orders-api", used=4, leaks=leaks))}
        record_diagnosis(store, observe(snap, targets, at=at))
    findings = diagnose(observe(snap, targets), store)
    assert findings[0].cause == "idle_in_transaction"
    leak = the("connection_leak", findings)
    assert leak.confidence == 0.6
    assert leak.summary.endswith("its sessions are idle in transaction on the server")


def test_a_leak_counter_without_a_store_is_a_weaker_connection_leak() -> None:
    """Without trends, leaks since start still point at the pool, less surely."""
    targets = {"orders-api": scrape(pool_text("orders-api", used=4, leaks=2))}
    f = the("connection_leak", diagnose(observe(server(), targets)))
    assert (f.culprit, f.confidence, f.evidence["leaks"]) == ("orders-api", 0.6, 2)


def _full_pool_ticks(store: SeriesStore, use_seconds_per_s: float) -> Observation:
    """Record 3 s of a pool all checked out (8 of 8, 2 waiting) whose sessions the server
    sees idle; its completed checkouts add `use_seconds_per_s` seconds of use per second."""
    snap = server({"orders-api": {"idle": 8}})
    obs = observe(snap, {})
    for second in range(4):
        text = pool_text("orders-api", max=8, used=8, pending=2, checkouts=10 * second,
                         use_seconds=use_seconds_per_s * second)  # fmt: skip
        obs = observe(snap, {"orders-api": scrape(text)}, at=997.0 + second)
        record_diagnosis(store, obs)
    return obs


def test_connections_checked_out_idle_and_never_completing_are_a_leak() -> None:
    """All 8 checked out, idle on the server, almost no completed use: connection_leak."""
    store = SeriesStore()
    obs = _full_pool_ticks(store, use_seconds_per_s=0.5)
    f = diagnose(obs, store)[0]
    assert (f.cause, f.culprit, f.confidence) == ("connection_leak", "orders-api", 0.9)
    assert (f.evidence["idle_on_server"], f.evidence["completing"]) == (8, 0.5)


def test_a_busy_pool_whose_handlers_work_while_holding_is_not_a_leak() -> None:
    """Idle on the server but completing 8 connection-seconds a second: busy, not leaked."""
    store = SeriesStore()
    obs = _full_pool_ticks(store, use_seconds_per_s=8.0)
    assert "connection_leak" not in {f.cause for f in diagnose(obs, store)}


def record_ticks(
    store: SeriesStore, ticks: list[tuple[ServerSnapshot, dict[str, ScrapeResult]]]
) -> None:
    """Record one tick every 15 s, ending at t=1000."""
    for i, (snap, targets) in enumerate(ticks):
        record_diagnosis(store, observe(snap, targets, at=1000.0 - 15 * (len(ticks) - 1 - i)))


@pytest.mark.parametrize(("checkout_step", "leak"), [(10, True), (40, False)])
def test_used_climbing_while_throughput_does_not_is_connection_leak(
    checkout_step: int, leak: bool
) -> None:
    """Used 2 -> 8 over 90 s at flat throughput is a leak; with throughput surging it is load."""
    store = SeriesStore()
    ticks = []
    checkouts = 0
    for i in range(7):
        checkouts += 10 if i < 3 else checkout_step
        text = pool_text("orders-api", max=20, used=2 + i, checkouts=checkouts)
        ticks.append((server(), {"orders-api": scrape(text)}))
    record_ticks(store, ticks)
    findings = diagnose(observe(*ticks[-1]), store)
    assert ("connection_leak" in causes(findings)) is leak
    if leak:
        assert the("connection_leak", findings).evidence["used_growth"] == 6


def test_an_apps_idle_in_transaction_count_growing_steadily_is_connection_leak() -> None:
    """billing's idle-in-transaction sessions go 1 -> 6 over 90 s without falling: a leak."""
    store = SeriesStore()
    ticks = [(server({"billing": {"idle in transaction": n, "idle": 3}}), {}) for n in range(1, 7)]
    record_ticks(store, ticks)  # type: ignore[arg-type]
    f = the("connection_leak", diagnose(observe(ticks[-1][0]), store))
    assert (f.culprit, f.evidence["growth"], f.confidence) == ("billing", 5, 0.75)


# --- idle_in_transaction, slow_queries, lock_contention -----------------------------------


def test_long_idle_transactions_blame_the_app_holding_the_most() -> None:
    """billing holds three sessions idle in a transaction for minutes, batch one: billing."""
    sessions = (
        idle_tx(11, "billing", 400.0), idle_tx(12, "billing", 90.0), idle_tx(13, "billing", 45.0),
        idle_tx(21, "batch", 600.0), idle_tx(31, "orders-api", 5.0),
    )  # fmt: skip
    snap = server({"billing": {"idle in transaction": 3}, "batch": {"idle in transaction": 1}},
                  idle_in_transaction=sessions)  # fmt: skip
    f = the("idle_in_transaction", diagnose(observe(snap)))
    assert f.culprit == "billing"
    assert f.evidence["sessions"] == 4  # orders-api's 5 s is under the 30 s threshold
    assert f.evidence["culprit_sessions"] == 3
    assert f.evidence["oldest_idle_s"] == 400
    assert "ALTER ROLE billing_user SET idle_in_transaction_session_timeout = '60s'" in f.remedy


def test_a_long_running_statement_is_slow_queries_naming_its_app() -> None:
    """reporting's statement has run for 5 minutes among 8 active sessions: slow_queries."""
    snap = server(
        {"reporting": {"active": 8}}, oldest=ActiveQuery(77, "reporting", "rep", "app", 300.0, "IO")
    )
    f = the("slow_queries", diagnose(observe(snap)))
    assert (f.culprit, f.evidence["pid"], f.evidence["oldest_query_s"]) == ("reporting", 77, 300)
    assert f.confidence == 0.8


def test_a_statement_slow_only_because_it_waits_on_a_lock_ranks_below_the_lock() -> None:
    """The oldest statement waits on a lock: lock_contention outranks slow_queries."""
    waits = tuple(lock_wait(pid, "orders-api", 120.0, {5: "batch"}) for pid in (1001, 1002, 1003))
    snap = server({"orders-api": {"active": 3}, "batch": {"idle in transaction": 1}},
                  oldest=ActiveQuery(1001, "orders-api", "u", "app", 120.0, "Lock"),
                  lock_waits=waits)  # fmt: skip
    findings = diagnose(observe(snap))
    assert findings[0].cause == "lock_contention"
    assert the("slow_queries", findings).confidence < findings[0].confidence


def test_a_lock_queue_blames_the_holder_at_its_head() -> None:
    """Three waiters, two queued behind the first, all behind pid 5 of batch: blame pid 5."""
    waits = (
        lock_wait(101, "orders-api", 12.5, {5: "batch"}),
        lock_wait(102, "orders-api", 10.0, {101: "orders-api"}),
        lock_wait(103, "billing", 8.0, {101: "orders-api", 102: "orders-api"}),
    )
    f = the("lock_contention", diagnose(observe(server(lock_waits=waits))))
    assert f.culprit == "pid 5 (batch)"
    assert f.evidence == {"waiting": 3, "blocked_by_culprit": 3, "longest_wait_s": 12.5,
                          "blocking_pid": 5}  # fmt: skip
    assert f.confidence == 0.9


def test_a_deadlock_cycle_blames_the_member_most_waits_lead_to() -> None:
    """101 and 102 wait on each other and 103 on 101: the cycle has no head, 101 is blamed."""
    waits = (
        lock_wait(101, "a", 3.0, {102: "b"}),
        lock_wait(102, "b", 3.0, {101: "a"}),
        lock_wait(103, "c", 1.0, {101: "a"}),
    )
    f = the("lock_contention", diagnose(observe(server(lock_waits=waits))))
    assert (f.culprit, f.evidence["blocked_by_culprit"]) == ("pid 101 (a)", 2)


def test_two_lock_waits_are_not_contention() -> None:
    """Below `lock_waits` (3) waiting sessions, a lock wait is ordinary."""
    waits = tuple(lock_wait(pid, "a", 1.0, {5: "b"}) for pid in (101, 102))
    assert diagnose(observe(server(lock_waits=waits))) == []


# --- database_down ------------------------------------------------------------------------


def test_an_unreachable_database_is_database_down_with_the_error_redacted() -> None:
    """The probe could not connect: database_down names the database, never a password."""
    error = DatabaseUnreachable("postgresql://app:hunter2@db:5432/app: connection refused")
    f = the("database_down", diagnose(observe(error)))
    assert (f.culprit, f.database, f.evidence) == ("main", "main", {"database_up": 0.0})
    assert "connection refused" in f.summary
    assert "hunter2" not in f.summary


# --- target_down --------------------------------------------------------------------------


def test_a_hung_target_is_target_down_naming_it_and_its_database() -> None:
    """A scrape that timed out names the target, its database and the redacted error."""
    error = TargetTimeout(
        "http://u:hunter2@orders-api/metrics: no answer in 1.0s", target="orders-api", timeout=1.0
    )
    obs = Observation(
        at=1000.0,
        databases={"main": DatabaseUnreachable("down")},
        targets={"orders-api": error},
        pgbouncers={},
        target_info={"orders-api": TargetInfo("orders-api", "http://orders-api/metrics", "main")},
    )
    f = the("target_down", diagnose(obs))
    assert (f.culprit, f.database, f.confidence) == ("orders-api", "main", 0.9)
    assert f.evidence == {"timed_out": 1.0, "status": 0.0}
    assert f.summary.startswith("orders-api cannot be scraped")
    assert "hunter2" not in f.summary
    assert "probe_timeout" in f.remedy


def test_a_bad_response_is_target_down_with_its_status_and_no_database() -> None:
    """A 500 from /metrics of a target without a database: status 500, database ""."""
    error = TargetBadResponse("HTTP 500", target="orders-api", status=500)
    obs = Observation(
        at=1000.0,
        databases={},
        targets={"orders-api": error},
        pgbouncers={},
        target_info={"orders-api": TargetInfo("orders-api", "http://orders-api/metrics")},
    )
    (f,) = diagnose(obs)
    assert (f.cause, f.culprit, f.database) == ("target_down", "orders-api", "")
    assert f.evidence == {"timed_out": 0.0, "status": 500.0}


# --- the contract ---------------------------------------------------------------------------


def test_findings_are_sorted_by_confidence_and_every_field_is_set() -> None:
    """Several causes at once come most certain first, each with every field filled in."""
    waits = tuple(lock_wait(pid, "orders-api", 5.0, {5: "batch"}) for pid in (101, 102, 103))
    snap = server(
        {"orders-api": {"idle": 85, "active": 5}, "batch": {"idle in transaction": 1}},
        idle_in_transaction=(idle_tx(5, "batch", 100.0),),
        lock_waits=waits,
    )
    findings = diagnose(observe(snap))
    assert len(findings) >= 3
    assert [f.confidence for f in findings] == sorted(
        (f.confidence for f in findings), reverse=True
    )
    for f in findings:
        assert f.cause in CAUSES
        assert 0 < f.confidence <= 1
        assert f.culprit
        assert f.database == "main"
        assert f.summary
        assert f.remedy
        assert all(isinstance(v, float) for v in f.evidence.values())


def test_thresholds_must_be_positive() -> None:
    """A zero or negative threshold is a ConfigError naming the field."""
    with pytest.raises(ConfigError, match="near_full_ratio"):
        DiagnosisThresholds(near_full_ratio=0)


# --- against a real server ----------------------------------------------------------------


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@contextlib.contextmanager
def _lock_pileup(pg: PgServer, waiters: int) -> Iterator[int]:
    """Hold a row lock from 'batch' and queue `waiters` sessions behind it; yield its pid."""
    with pg.connect() as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS diagnose_lock (id int PRIMARY KEY, n int)")
        admin.execute("INSERT INTO diagnose_lock VALUES (1, 0) ON CONFLICT DO NOTHING")
    with psycopg.connect(pg.dsn, application_name="batch") as holder:
        holder.execute("SELECT id FROM diagnose_lock WHERE id = 1 FOR UPDATE")
        conns = [psycopg.connect(pg.dsn, application_name="orders-api", autocommit=True)
                 for _ in range(waiters)]  # fmt: skip
        threads = []
        for conn in conns:
            conn.execute("SET statement_timeout = '20s'")  # they give up if the test fails
            threads.append(threading.Thread(
                target=conn.execute, args=("UPDATE diagnose_lock SET n = n + 1 WHERE id = 1",),
                daemon=True))  # fmt: skip
            threads[-1].start()
        try:
            _wait_for(lambda: len(snapshot(pg.dsn).lock_waits) >= waiters)
            yield holder.info.backend_pid
        finally:
            holder.rollback()
            for thread in threads:
                thread.join(timeout=20)
            for conn in conns:
                conn.close()


def test_real_sessions_are_diagnosed_with_the_right_culprits(pg: PgServer) -> None:
    """20 idle orders-api, 2 billing idle in a transaction, 3 waiters behind batch: named right."""
    with contextlib.ExitStack() as stack:
        for _ in range(20):
            stack.enter_context(psycopg.connect(pg.dsn, application_name="orders-api"))
        for _ in range(2):
            conn = stack.enter_context(psycopg.connect(pg.dsn, application_name="billing"))
            conn.execute("SELECT 1")  # opens the transaction, then sits idle in it
        time.sleep(0.4)
        holder = stack.enter_context(_lock_pileup(pg, 3))
        obs = Observation(at=time.time(), databases={"main": snapshot(pg.dsn)})
        findings = diagnose(obs, thresholds=DiagnosisThresholds(idle_in_transaction_s=0.3))
    idle = the("idle_in_transaction", findings)
    assert (idle.culprit, idle.evidence["culprit_sessions"]) == ("billing", 2)
    lock = the("lock_contention", findings)
    assert lock.culprit == f"pid {holder} (batch)"
    assert lock.evidence["waiting"] == 3
    assert lock.evidence["blocked_by_culprit"] == 3
    # 20 idle of 97 usable is no pressure: nothing blames orders-api's pool.
    assert "pool_oversized" not in causes(findings)
    assert findings[0].cause == "lock_contention"
