"""One run of a scenario: the fleet, the watch, the load, and the phases (see runner.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from poolwarden.drill._drill_server import DATABASE, DrillServer
from poolwarden.drill._fleet import Fleet
from poolwarden.drill._traffic import Ledger, PhaseTally, Traffic, classify
from poolwarden.drill.demoapp import AppConfig
from poolwarden.drill.load import open_loop
from poolwarden.drill.scenarios import Scenario
from poolwarden.watch.incidents import RootCause
from poolwarden.watch.loop import Watcher, WatchEvent
from poolwarden.watch.rules import load_rules
from poolwarden.watch.samples import sample_recorder
from poolwarden.watch.store import Store

_log = logging.getLogger("poolwarden.drill")

# Bounds of every run, whatever happens: the load stops by itself after this long.
_MAX_RUN_S = 600.0
_USERS = 1000
_CUSTOMERS = 1000
_ORDERS = 20000
_CLIENT_TIMEOUT_S = 5.0  # a user (or the load balancer) gives up after this long: failed
# A rolling deploy takes each replica's /metrics away for a second or two; a scrape config
# drops terminating pods, the drill keeps its targets and waits longer before calling one down.
_DRILL_RULES = (
    {"name": "PoolwardenTargetDown", "for": "10s"},
)  # a user gives up after this long: the request failed


@dataclass(frozen=True, slots=True)
class RunSettings:
    """One run: the scenario, the guard, quick or full, and where its files go."""

    scenario: Scenario
    guard: bool
    quick: bool
    out_dir: Path
    interval: float = 1.0  # the watch's tick

    @property
    def baseline_s(self) -> float:
        """Return how long the healthy baseline lasts."""
        return 4.0 if self.quick else 20.0

    @property
    def window_s(self) -> float:
        """Return how long after the fault the run waits for the root cause at most."""
        return self.scenario.detect_within_s + (15.0 if self.quick else 30.0)

    @property
    def quiet_s(self) -> float:
        """Return how long a run with no alert watches the fault before it ends."""
        return 12.0 if self.quick else 40.0

    @property
    def hold_s(self) -> float:
        """Return how long the fault stays before the remedy, at least.

        The watch names the cause in seconds; people and deploys take longer. Holding the
        fault a while makes its impact measurable, and the same for both guard settings.
        """
        return 12.0 if self.quick else 30.0

    @property
    def recovery_s(self) -> float:
        """Return how long the load goes on after the remedy."""
        return 5.0 if self.quick else 30.0


@dataclass
class _Seen:
    """What the watch reported, written by the watcher's thread, read by the driver."""

    fault_at: float = 0.0  # epoch; 0 until the fault is injected
    first_alert: WatchEvent | None = None
    fired: list[WatchEvent] = field(default_factory=list)  # after the fault
    causes: list[WatchEvent] = field(default_factory=list)
    resolved: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RunContext:
    """A run in progress; implements `scenarios.DrillContext` for the scenario's actions."""

    def __init__(
        self,
        settings: RunSettings,
        server: DrillServer,
        on_progress: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.settings, self.server, self._progress = settings, server, on_progress
        self.guard, self.quick = settings.guard, settings.quick
        scenario = settings.scenario
        self.store_url = f"sqlite:///{settings.out_dir / 'poolwarden.db'}"
        config = AppConfig(dsn=server.dsn(), name="orders-api", guard=settings.guard,
                           **dict(scenario.app))  # fmt: skip
        self.fleet = Fleet(config, scenario.replicas, settings.out_dir / "logs", DATABASE)
        self.ledger = Ledger()
        self.seen = _Seen()
        self._sessions: dict[str, list[psycopg.Connection[Any]]] = {}
        self._grabbers: dict[str, threading.Event] = {}
        self._held_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_load: asyncio.Event | None = None
        self._extra: list[concurrent.futures.Future[Any]] = []
        self._notes: list[tuple[datetime, str, dict[str, Any]]] = []
        self.watcher: Watcher | None = None
        self.traffic: Traffic | None = None

    # -- DrillContext -----------------------------------------------------------------

    def deploy(self, *, startup_s: float = 0.0, **changes: Any) -> None:
        """Roll the fleet to a new configuration, one replica at a time."""
        self.fleet.deploy(
            lambda name: self._progress("deployed", {"replica": name}), startup_s=startup_s,
            **changes,
        )  # fmt: skip

    def set_fault(self, kind: str, **params: Any) -> None:
        """Switch an app-side bug on (or off) in every replica."""
        self.fleet.set_fault(kind, **params)

    def sql(self, statement: str) -> None:
        """Run `statement` on the orders database as the superuser."""
        with psycopg.connect(self.server.admin_dsn(), autocommit=True) as conn:
            conn.execute(statement.encode())

    def hold_sessions(self, count: int, application: str, *, in_transaction: bool) -> int:
        """Open up to `count` sessions of `application` (its own role) and keep them.

        Returns how many opened at once; a thread keeps taking every slot that frees up
        until `count` are held or the sessions are released - a job with an unbounded pool.
        """
        role = application.replace("-", "_")
        held = self._sessions.setdefault(application, [])
        stop = self._grabbers.setdefault(application, threading.Event())

        def take() -> bool:
            try:
                conn = psycopg.connect(self.server.dsn(role), application_name=application,
                                       autocommit=not in_transaction, connect_timeout=2)  # fmt: skip
                conn.execute("SELECT 1")
            except psycopg.OperationalError:
                return False  # the server is full (or this role's limit reached)
            with self._held_lock:
                if stop.is_set():  # released while connecting: nobody would close it
                    conn.close()
                    return False
                held.append(conn)
            return True

        while len(held) < count and take():
            pass
        opened = len(held)

        def grab() -> None:
            deadline = time.monotonic() + _MAX_RUN_S
            while not stop.is_set() and len(held) < count and time.monotonic() < deadline:
                if not take():
                    stop.wait(0.05)

        threading.Thread(target=grab, name=f"drill-{application}", daemon=True).start()
        return opened

    def release_sessions(self, application: str) -> None:
        """Stop taking slots for `application` and close its sessions."""
        with self._held_lock:
            stop = self._grabbers.pop(application, None)
            if stop is not None:
                stop.set()
            held = self._sessions.pop(application, [])
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()

    def restart_database(self, down_s: float) -> None:
        """Stop the server for `down_s` seconds, then start it again."""
        self.server.restart(down_s)

    def spike(self, factor: float, seconds: float) -> None:
        """Add `factor` x the base rate of arrivals for `seconds`, on the load's event loop."""
        assert self._loop is not None
        assert self.traffic is not None
        assert self._stop_load
        rate = self.settings.scenario.rate * factor
        extra = open_loop(self.traffic.request, rate=rate, duration=seconds, drain=3.0,
                          classify=classify, stop=self._stop_load, record=self.ledger.record)  # fmt: skip
        self._extra.append(asyncio.run_coroutine_threadsafe(extra, self._loop))

    # -- the run -------------------------------------------------------------------------

    def execute(self) -> Any:
        """Run the phases; return the `RunResult`."""
        from poolwarden.drill._drill_result import finish

        scenario = self.settings.scenario
        (self.settings.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        store = Store(self.store_url)
        stop_watch = threading.Event()
        try:
            if scenario.neighbours:
                self.hold_sessions(scenario.neighbours, "billing-worker", in_transaction=False)
            self.fleet.start()
            rules = load_rules(overrides=[*_DRILL_RULES, *scenario.rules])
            self.watcher = Watcher(
                store=store, rules=rules,
                databases={DATABASE: self.server.admin_dsn()}, targets=self.fleet.targets(),
                interval=self.settings.interval, probe_timeout=1.0, on_event=self._on_event,
                # A fault develops over seconds (a neighbour fills the server, then the
                # pools starve): look again every 3 ticks, not 10, for the better cause.
                diagnose_every=3,
            )  # fmt: skip
            self.watcher.add_recorder(sample_recorder(store))  # for the postmortem's charts
            self.watcher.start()
            ticking = threading.Thread(target=self.watcher.run, kwargs={"stop": stop_watch},
                                       name="poolwarden-drill-watch", daemon=True)  # fmt: skip
            ticking.start()
            timeline = asyncio.run(self._drive())
            stop_watch.set()
            ticking.join(timeout=10)
            self.watcher.close()
            return finish(self, store, timeline)
        finally:
            stop_watch.set()
            self.fleet.stop()
            for application in list(self._sessions):
                self.release_sessions(application)
            store.close()

    def _on_event(self, event: WatchEvent) -> None:
        seen = self.seen
        with seen.lock:
            if event.kind == "alert_fired":
                if seen.fault_at:  # an alert before the fault is no detection of it
                    seen.fired.append(event)
                    seen.first_alert = seen.first_alert or event
            elif event.kind == "root_cause" and seen.fault_at:
                seen.causes.append(event)
            elif event.kind == "incident_resolved":
                seen.resolved.add(str(event.data.get("incident_id", "")))
        if event.kind in ("alert_fired", "root_cause", "incident_resolved"):
            self._progress(event.kind, {"text": event.text, **event.data})

    async def _drive(self) -> dict[str, Any]:
        """Keep the load on while the phases run; return what happened when."""
        self._loop = asyncio.get_running_loop()
        self._stop_load = asyncio.Event()
        self.traffic = Traffic(self.fleet, users=_USERS, customers=_CUSTOMERS, orders=_ORDERS,
                               timeout=_CLIENT_TIMEOUT_S)  # fmt: skip
        rate = self.settings.scenario.rate
        load = asyncio.create_task(open_loop(
            self.traffic.request, rate=rate, duration=_MAX_RUN_S, drain=_CLIENT_TIMEOUT_S + 1,
            classify=classify, stop=self._stop_load, record=self.ledger.record,
        ))  # fmt: skip
        display = asyncio.create_task(self._display())
        try:
            return await self._phases()
        finally:
            self.ledger.ended = time.monotonic()
            self._stop_load.set()
            await load
            for extra in self._extra:
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(extra)
            display.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await display
            await self.traffic.close()

    async def _phases(self) -> dict[str, Any]:
        s, scenario = self.settings, self.settings.scenario
        timeline: dict[str, Any] = {}
        self._begin("baseline")
        await asyncio.sleep(s.baseline_s)
        self._begin("fault")
        fault_at = time.time()
        with self.seen.lock:
            self.seen.fault_at = fault_at
        # A deploy takes seconds: the watch may see its effect before it ends.
        injecting = asyncio.create_task(asyncio.to_thread(scenario.inject, self))
        cause = await self._await_cause(fault_at)
        fault = await injecting
        self._note(fault_at, f"fault injected: {fault}")
        timeline |= {"fault": fault, "fault_at": fault_at, "cause": cause,
                     "fleet_config": self.fleet.config}  # fmt: skip
        if self.seen.first_alert is None:
            await asyncio.sleep(max(0.0, fault_at + s.quiet_s - time.time()))
            return timeline
        await asyncio.sleep(max(0.0, fault_at + s.hold_s - time.time()))
        # The diagnosis is refreshed while the fault lasts (a replica restarting when it
        # was first made is missing from its replica count): act on the latest.
        cause = await asyncio.to_thread(self._latest_cause) or cause
        timeline["cause"] = cause
        self._begin("fix")
        fix = await asyncio.to_thread(scenario.fix, self, cause)
        self._note(time.time(), f"remedy applied: {fix}")
        timeline["fix"] = fix
        self._begin("recovery")
        await asyncio.sleep(s.recovery_s)
        if not s.quick:  # a quick run ends with its incident open: its 1-minute rates lag
            await self._settle(time.time() + s.recovery_s)
        return timeline

    async def _settle(self, deadline: float) -> None:
        """Keep the load on until every incident of the run resolved (bounded by `deadline`).

        A postmortem with a duration needs the end; an alert on a one-minute rate (the API
        error ratio) clears only once the window has slid past the failures.
        """
        while time.time() < deadline:
            with self.seen.lock:
                opened = {str(e.data.get("incident_id")) for e in self.seen.fired}
                if opened <= self.seen.resolved:
                    return
            await asyncio.sleep(0.5)

    async def _await_cause(self, fault_at: float) -> RootCause | None:
        """Wait for the expected root cause (bounded); return it with its evidence."""
        s, expected = self.settings, self.settings.scenario.cause
        deadline = fault_at + s.window_s
        quiet_until = fault_at + s.quiet_s
        diagnosing = False
        while time.time() < deadline:
            await asyncio.sleep(0.2)
            with self.seen.lock:
                alert, causes = self.seen.first_alert, list(self.seen.causes)
            if alert is None and time.time() > quiet_until:
                return None  # nothing fired: nothing to diagnose or fix
            if alert is not None and not diagnosing:
                self._begin("diagnosis")
                diagnosing = True
            match = next((c for c in causes if c.data.get("cause") == expected), None)
            if match is not None:
                return await asyncio.to_thread(self._root_cause, match)
        with self.seen.lock:
            last = self.seen.causes[-1] if self.seen.causes else None
        return await asyncio.to_thread(self._root_cause, last) if last else None

    def _latest_cause(self) -> RootCause | None:
        """Return the root cause now on the incident of the expected cause's last naming."""
        expected = self.settings.scenario.cause
        with self.seen.lock:
            named = [c for c in self.seen.causes if c.data.get("cause") == expected]
        if not named:
            return None
        cause = self._root_cause(named[-1])
        return cause if cause is not None and cause.cause == expected else None

    def _root_cause(self, event: WatchEvent) -> RootCause | None:
        """Read the root cause the event announced, with its evidence, from the store."""
        assert self.watcher is not None
        incident_id = str(event.data.get("incident_id", ""))
        for _ in range(25):  # the tick that announced it persists it at its end
            incident = self.watcher.store.get_incident(incident_id)
            if incident is not None and incident.root_cause is not None:
                return incident.root_cause
            time.sleep(0.1)
        return None

    def _begin(self, phase: str) -> PhaseTally:
        self._progress("phase", {"phase": phase})
        return self.ledger.begin(phase)

    def _note(self, at: float, text: str) -> None:
        self._notes.append((datetime.fromtimestamp(at, UTC), text, {}))
        self._progress("note", {"text": text})

    async def _display(self) -> None:
        """Report the request rate, errors and connections once a second."""
        while True:
            await asyncio.sleep(1.0)
            served, rejected, failed = self.ledger.last_second()
            connections = None
            if self.watcher is not None:
                obs = self.watcher.state().observation
                snap = obs.server(DATABASE) if obs is not None else None
                if snap is not None:
                    connections = (snap.client_connections, snap.usable_connections)
            phase = self.ledger.phases[-1].name if self.ledger.phases else ""
            self._progress("tick", {"phase": phase, "served": served, "rejected": rejected,
                                    "failed": failed, "connections": connections})  # fmt: skip

    @property
    def notes(self) -> list[tuple[datetime, str, dict[str, Any]]]:
        """Return the notes the run made (fault injected, remedy applied)."""
        return self._notes
