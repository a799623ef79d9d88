"""The watch loop: probe -> measure -> evaluate -> group -> diagnose -> record -> notify.

`Watcher.tick()` probes every database, PgBouncer and app target at once in a thread pool,
each bounded by `probe_timeout` (a probe still running from an earlier tick is not started
again: it counts as a timeout), builds one `Observation`, steps the rule engine, groups the
alert events into incidents, attaches the diagnosis, persists everything in the `Store`
and hands each firing or resolved alert to the notifiers once (claimed in the store before
it is sent). `Watcher.start()` restores the engine's state and the open incidents, so a
restart, even after ``kill -9``, continues the incident with no second notification.
What happens is reported as `WatchEvent`s to `on_event`; nothing is printed here.
Readers in other threads (the dashboard) take `Watcher.state()`, an immutable
`StateSnapshot` published at the end of each tick, and read the series through
`Watcher.read_series()`; both hold the watcher's lock, as the tick does while it appends.
Reference: docs/watch.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from poolwarden._dsn import redact_dsn
from poolwarden.errors import DatabaseUnreachable, ProbeError, TargetTimeout
from poolwarden.probe.pgbouncer import pgbouncer_snapshot
from poolwarden.probe.postgres import snapshot
from poolwarden.probe.scrape import scrape_metrics
from poolwarden.watch.incidents import Incident, IncidentBook, IncidentUpdate, notification_key
from poolwarden.watch.measures import compute_measures, record_measures
from poolwarden.watch.notify import Notification, Notifier, NotifyAlert, SendResult
from poolwarden.watch.observation import Observation, TargetInfo
from poolwarden.watch.rules import Alert, AlertEvent, Rule, RuleEngine
from poolwarden.watch.series import SeriesStore
from poolwarden.watch.store import Store

try:  # diagnose is optional at import time: the loop runs (without root causes) without it
    from poolwarden.watch.diagnose import DiagnosisThresholds, diagnose, record_diagnosis

    _DIAGNOSE: bool = True
except ImportError:  # pragma: no cover - only while diagnose.py is being written
    _DIAGNOSE = False

__all__ = [
    "Probes",
    "StateSnapshot",
    "TickReport",
    "WatchEvent",
    "Watcher",
    "once_rules",
]

logger = logging.getLogger("poolwarden.watch.loop")

EventKind = Literal[
    "alert_fired", "alert_resolved", "root_cause", "incident_resolved",
    "notification", "probe_failed", "probe_recovered", "tick",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """Something the loop did or saw: `kind`, when (epoch s), one line, and JSON-ready data."""

    kind: EventKind
    at: float
    text: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TickReport:
    """One tick: its observation, the alert events, and how long it took (monotonic s)."""

    observation: Observation
    alerts: tuple[AlertEvent, ...]
    duration_s: float


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the loop knew after its latest tick, safe to read from any thread.

    `observation` is None before the first tick. `alerts` are the pending and firing
    alerts (most severe first); `open_incidents` oldest first; `recent_incidents` the
    last resolved ones, newest first (at most 20).
    """

    ticks: int
    interval: float
    observation: Observation | None
    alerts: tuple[Alert, ...]
    open_incidents: tuple[Incident, ...]
    recent_incidents: tuple[Incident, ...]


# Appends to the series each tick, after the loop's own (e.g. the dashboard's gauges).
_Recorder = Callable[[SeriesStore, Observation], None]
_RECENT_INCIDENTS = 20
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Probes:
    """The probe functions (name-free): database DSN, PgBouncer admin DSN, target URL."""

    database: Callable[[str, float], object] = lambda dsn, t: snapshot(dsn, connect_timeout=t)
    pgbouncer: Callable[[str, float], object] = lambda dsn, t: pgbouncer_snapshot(
        dsn, connect_timeout=t, query_timeout=t
    )
    target: Callable[[str, float], object] = lambda url, t: scrape_metrics(url, timeout=t)


def once_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """Return `rules` with every `for:` set to 0, as ``watch --once`` evaluates them."""
    return tuple(rule.model_copy(update={"for_": 0.0}) for rule in rules)


class Watcher:
    """Run the watch loop over named databases, PgBouncers and app targets.

    `databases` and `pgbouncers` map names to DSNs; `notifiers` map a channel name to a
    `Notifier`. `clock` (epoch seconds) and `sleep` are injectable for tests; `probes`
    replaces the real probe functions. Call `start()` once, then `tick()` or `run()`;
    `close()` waits (bounded) for notifications in flight. One thread ticks; any thread
    may call `state()`, `read_series()` and `add_recorder()`.
    """

    def __init__(
        self,
        *,
        store: Store,
        rules: Sequence[Rule],
        databases: Mapping[str, str] | None = None,
        pgbouncers: Mapping[str, str] | None = None,
        targets: Sequence[TargetInfo] = (),
        notifiers: Mapping[str, Notifier] | None = None,
        interval: float = 1.0,
        probe_timeout: float = 2.0,
        diagnose_every: int = 10,
        on_event: Callable[[WatchEvent], None] = lambda event: None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
        probes: Probes | None = None,
    ) -> None:
        self.store, self.interval, self.probe_timeout = store, interval, probe_timeout
        self._databases, self._pgbouncers = dict(databases or {}), dict(pgbouncers or {})
        self._targets = {t.name: t for t in targets}
        self._notifiers = dict(notifiers or {})
        self._diagnose_every = max(1, diagnose_every)
        self._emit, self._clock, self._sleep = on_event, clock, sleep
        self._probes = probes or Probes()
        self.engine = RuleEngine(rules, stale_after=max(10.0, 3 * interval))
        self._thresholds = _thresholds(rules)
        self.series = SeriesStore(max_age_s=600.0)
        self.book = IncidentBook()
        count = len(self._databases) + len(self._pgbouncers) + len(self._targets)
        self._pool = ThreadPoolExecutor(max(1, count), thread_name_prefix="poolwarden-probe")
        self._running: dict[tuple[str, str], Future[object]] = {}
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="poolwarden-notify")
        self._sent: list[tuple[str, str, str, str, Future[SendResult]]] = []
        self._failing: set[tuple[str, str]] = set()
        self.ticks = 0
        # Guards the series while the tick appends and `_state` while it is replaced.
        self._lock = threading.Lock()
        self._recorders: list[_Recorder] = []
        self._state = StateSnapshot(0, interval, None, (), (), ())

    # -- readers in other threads ------------------------------------------------------

    def state(self) -> StateSnapshot:
        """Return the snapshot published by the latest tick (immutable; share it freely)."""
        with self._lock:
            return self._state

    def read_series(self, read: Callable[[SeriesStore], _T]) -> _T:
        """Return `read(self.series)`, run while no tick appends; `read` must copy what it keeps.

        The lock is not re-entrant: `read` must not call `state()` or `read_series()`.
        """
        with self._lock:
            return read(self.series)

    def add_recorder(self, recorder: _Recorder) -> None:
        """Call `recorder(series, observation)` each tick, after the loop's own recording."""
        with self._lock:
            self._recorders.append(recorder)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Create the store's schema; restore the engine's state and the open incidents."""
        self.store.create_schema()
        saved = self.store.load_alert_state().get("engine")
        if saved is not None:
            try:
                self.engine.restore_state(saved, now=self._clock())
            except ValueError as exc:  # a damaged state costs a re-evaluation, not the loop
                logger.warning("not restoring the rule engine's state: %s", exc)
        self.book = IncidentBook(incidents=self.store.open_incidents())

    def run(self, *, max_ticks: int | None = None, stop: threading.Event | None = None) -> None:
        """Tick every `interval` until `stop` is set (or `max_ticks` ticks ran)."""
        stop = stop or threading.Event()
        while not stop.is_set() and (max_ticks is None or self.ticks < max_ticks):
            report = self.tick()
            if stop.is_set() or (max_ticks is not None and self.ticks >= max_ticks):
                break
            pause = max(0.0, self.interval - report.duration_s)
            # Event.wait wakes at once on SIGINT/SIGTERM; an injected sleep is for tests.
            if self._sleep is time.sleep:
                stop.wait(pause)
            else:
                self._sleep(pause)

    def close(self, timeout: float = 10.0) -> None:
        """Record the notifications in flight (waiting up to `timeout`), stop the threads."""
        wait_futures([sent[-1] for sent in self._sent], timeout=timeout)
        self._collect_sent()
        self._sender.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one tick ----------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Probe, evaluate, group, diagnose, persist and notify once."""
        started = time.monotonic()
        self.ticks += 1
        self._collect_sent()
        obs = self.observe(self._clock())
        with self._lock:  # readers of the series wait; this thread's own reads need no lock
            record_measures(self.series, obs)
            if _DIAGNOSE:
                record_diagnosis(self.series, obs)
            for recorder in self._recorders:
                recorder(self.series, obs)
        alerts = self.engine.evaluate(obs.at, compute_measures(self.series, obs))
        # The incidents changed this tick, by id; each is saved once at the end.
        touched: dict[str, Incident] = {}
        fresh: set[str] = set()
        for event in alerts:
            for update in self.book.observe(event):
                self._keep(update, touched)
                if event.kind == "firing" and len(update.incident.timeline) == 1:
                    fresh.add(update.incident.id)
        for update in self.book.tick(obs.at):
            self._keep(update, touched)
        self._diagnose(obs, fresh, touched)
        for incident in touched.values():
            self.store.save(incident)
        self._announce(alerts, touched)
        self.store.save_alert_state({"engine": self.engine.snapshot_state()})
        self._publish(obs, touched)
        duration = time.monotonic() - started
        self._emit(WatchEvent("tick", obs.at, f"tick {self.ticks}", {"duration_s": duration}))
        return TickReport(obs, tuple(alerts), duration)

    def _publish(self, obs: Observation, touched: Mapping[str, Incident]) -> None:
        """Replace the state snapshot: built from immutable values, swapped under the lock."""
        closed = [i for i in touched.values() if i.status == "resolved"]
        kept = [i for i in self._state.recent_incidents if i.id not in touched]
        recent = sorted(closed, key=lambda i: (i.resolved_at or i.opened_at, i.id), reverse=True)
        state = StateSnapshot(
            ticks=self.ticks,
            interval=self.interval,
            observation=obs,
            alerts=tuple(self.engine.active()),
            open_incidents=self.book.open_incidents(),
            recent_incidents=tuple([*recent, *kept][:_RECENT_INCIDENTS]),
        )
        with self._lock:
            self._state = state

    def observe(self, at: float) -> Observation:
        """Run every probe concurrently, each bounded by `probe_timeout`; never raise."""
        jobs = [("database", n, d, self._probes.database) for n, d in self._databases.items()]
        jobs += [("pgbouncer", n, d, self._probes.pgbouncer) for n, d in self._pgbouncers.items()]
        jobs += [("target", n, t.url, self._probes.target) for n, t in self._targets.items()]
        futures: dict[tuple[str, str], Future[object] | None] = {}
        for kind, name, where, probe in jobs:
            previous = self._running.get((kind, name))
            if previous is not None and not previous.done():
                futures[kind, name] = None  # still hung from an earlier tick: not twice
                continue
            future = self._pool.submit(probe, where, self.probe_timeout)
            futures[kind, name] = self._running[kind, name] = future
        wait_futures([f for f in futures.values() if f is not None], timeout=self.probe_timeout)
        results = {key: self._result(key, future) for key, future in futures.items()}
        return Observation(
            at=at,
            databases={n: r for (k, n), r in results.items() if k == "database"},  # type: ignore[misc]
            pgbouncers={n: r for (k, n), r in results.items() if k == "pgbouncer"},  # type: ignore[misc]
            targets={n: r for (k, n), r in results.items() if k == "target"},  # type: ignore[misc]
            target_info=dict(self._targets),
        )

    def _result(self, key: tuple[str, str], future: Future[object] | None) -> object:
        kind, name = key
        if future is None or not future.done():
            shown = f"{kind} {name!r}"
            message = f"{shown}: no answer within {self.probe_timeout:g} s (probe_timeout)"
            error: object = (
                TargetTimeout(message, target=name, timeout=self.probe_timeout)
                if kind == "target"
                else DatabaseUnreachable(message, target=name)
            )
        else:
            try:
                error = future.result()
            except ProbeError as exc:
                error = exc
            except Exception as exc:  # a probe bug must not end the loop; it is a failure
                error = ProbeError(f"{kind} {name!r}: {type(exc).__name__}: {exc}", target=name)
        self._report_probe(kind, name, error)
        return error

    def _report_probe(self, kind: str, name: str, result: object) -> None:
        """Emit a probe failing or recovering, once per change rather than every tick."""
        failed = isinstance(result, ProbeError)
        if failed == ((kind, name) in self._failing):
            return
        at = self._clock()
        data = {"probe": kind, "name": name}
        if failed:
            self._failing.add((kind, name))
            text = redact_dsn(str(result))
            self._emit(WatchEvent("probe_failed", at, text, {**data, "error": text}))
        else:
            self._failing.discard((kind, name))
            self._emit(WatchEvent("probe_recovered", at, f"{kind} {name!r} answers again", data))

    # -- incidents, diagnosis, notifications ----------------------------------------------

    def _keep(self, update: IncidentUpdate, touched: dict[str, Incident]) -> None:
        touched[update.incident.id] = update.incident
        for event in update.events:
            if event.kind == "resolved":
                data = {"incident_id": event.incident_id, **event.data}
                self._emit(WatchEvent("incident_resolved", event.at.timestamp(), event.text, data))

    def _diagnose(self, obs: Observation, fresh: set[str], touched: dict[str, Incident]) -> None:
        """Attach the best finding to incidents just opened, and to open ones every N ticks."""
        periodic = self.ticks % self._diagnose_every == 0
        wanted = [i for i in self.book.open_incidents() if i.id in fresh or periodic]
        if not _DIAGNOSE or not wanted:
            return
        findings = diagnose(obs, self.series, thresholds=self._thresholds)
        for incident in wanted:
            database, target = self._database_of(incident), incident.labels.get("target", "")
            # A hung target is its own culprit, whatever database it uses.
            best = next((f for f in findings if f.cause == "target_down" and f.culprit == target),
                        None) or next((f for f in findings if f.database == database), None)  # fmt: skip
            if best is None:
                continue
            update = self.book.diagnose(incident.id, best, obs.at)
            if update is None:
                continue
            touched[incident.id] = update.incident
            if update.events:
                data = {"incident_id": incident.id, "cause": best.cause, "culprit": best.culprit,
                        "confidence": best.confidence, "summary": best.summary,
                        "remedy": best.remedy}  # fmt: skip
                text = f"root cause {best.cause} ({best.confidence:.0%}): {best.summary}"
                self._emit(WatchEvent("root_cause", obs.at, redact_dsn(text), data))

    def _database_of(self, incident: Incident) -> str:
        # A PgBouncer alert's `database` is PgBouncer's database name, not a key of ours.
        if incident.labels.get("database", "") in self._databases:
            return incident.labels["database"]
        target = self._targets.get(incident.labels.get("target", ""))
        if target is not None and target.database:
            return target.database
        return next(iter(self._databases)) if len(self._databases) == 1 else ""

    def _announce(self, alerts: Sequence[AlertEvent], touched: Mapping[str, Incident]) -> None:
        """Emit each firing/resolved alert and send it to every notifier, once."""
        for event in alerts:
            if event.kind == "pending":
                continue
            incident = self._incident_of(event, touched)
            cause = incident.root_cause if incident is not None else None
            data: dict[str, Any] = {
                "rule": event.rule, "severity": event.severity, "labels": event.labels,
                "value": event.value, "summary": event.summary,
                "incident_id": incident.id if incident else None,
                "root_cause": cause.cause if cause else None,
                "culprit": cause.culprit if cause else None,
            }  # fmt: skip
            kind: EventKind = "alert_fired" if event.kind == "firing" else "alert_resolved"
            self._emit(WatchEvent(kind, event.at, redact_dsn(event.summary), data))
            if incident is not None:
                self._notify(event, incident)

    def _incident_of(self, event: AlertEvent, touched: Mapping[str, Incident]) -> Incident | None:
        """Return the incident `event` belongs to: changed this tick, else open on its key."""
        key = self.book.key_for(event.labels)
        for incident in touched.values():
            if incident.key == key and event.fingerprint in incident.alerts:
                return incident
        return next((i for i in self.book.open_incidents() if i.key == key), None)

    def _notify(self, event: AlertEvent, incident: Incident) -> None:
        status = "firing" if event.kind == "firing" else "resolved"
        for channel, notifier in self._notifiers.items():
            key = notification_key(incident.id, event.fingerprint, status, channel)
            if not self.store.claim_notification(key):
                continue  # sent (or being sent) before, maybe by an earlier run: never twice
            message = _notification(event, incident)
            future = self._sender.submit(notifier.send, message)
            self._sent.append((key, incident.id, channel, event.fingerprint, future))

    def _collect_sent(self) -> None:
        """Record the notifications whose sending finished, in the store and the timeline."""
        pending = []
        for key, incident_id, channel, fingerprint, future in self._sent:
            if not future.done():
                pending.append((key, incident_id, channel, fingerprint, future))
                continue
            result = future.result()
            self.store.mark_notification(key, result.ok, result.detail)
            status = key.rsplit("/", 2)[-2]
            at = self._clock()
            if self.book.get(incident_id) is not None:
                update = self.book.record_notification(
                    incident_id, channel=channel, ok=result.ok, detail=result.detail,
                    at=at, fingerprint=fingerprint, status=status,
                )  # fmt: skip
                if update is not None:
                    self.store.save(update.incident)
            data = {"incident_id": incident_id, "channel": channel, "status": status,
                    "ok": result.ok, "detail": result.detail}  # fmt: skip
            self._emit(WatchEvent("notification", at, redact_dsn(result.detail), data))
        self._sent = pending


def _notification(event: AlertEvent, incident: Incident) -> Notification:
    cause = incident.root_cause
    notes = {"summary": event.summary, "description": event.description, "runbook": event.runbook}
    if cause is not None:
        notes |= {"root_cause": cause.cause, "culprit": cause.culprit, "remedy": cause.remedy}
    alert = NotifyAlert(
        status="firing" if event.kind == "firing" else "resolved",
        labels=event.labels,
        annotations={k: v for k, v in notes.items() if v},
        starts_at=datetime.fromtimestamp(event.started_at, UTC),
        ends_at=datetime.fromtimestamp(event.at, UTC) if event.kind == "resolved" else None,
        fingerprint=event.fingerprint,
    )
    return Notification("poolwarden", (alert,), incident.labels, incident_id=incident.id)


def _thresholds(rules: Sequence[Rule]) -> Any:
    """Return diagnosis thresholds that agree with the rules that page for the same thing."""
    if not _DIAGNOSE:
        return None
    limits = {rule.name: rule.threshold for rule in rules if rule.threshold > 0}
    base = DiagnosisThresholds()
    return replace(
        base,
        idle_in_transaction_s=limits.get(
            "PoolwardenIdleInTransactionTooLong", base.idle_in_transaction_s
        ),
        slow_query_s=limits.get("PoolwardenLongRunningQuery", base.slow_query_s),
        pgbouncer_wait_s=limits.get("PoolwardenPgbouncerMaxWaitHigh", base.pgbouncer_wait_s),
    )
