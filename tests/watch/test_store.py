"""The store keeps incidents, events, notification claims and alert state, on SQLite and PostgreSQL.

Every test that takes `url` runs twice: on a SQLite file in tmp_path and on a fresh database
of the session's real PostgreSQL. The crash test kills a writer with SIGKILL mid-stream and
checks that exactly what it committed is there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fixtures.alerts import T0, Event, alert_event, at, counter_ids
from tests.fixtures.pg import PgServer, free_port

from poolwarden.errors import ConfigError
from poolwarden.watch.incidents import (
    IncidentBook,
    IncidentUpdate,
    RootCause,
    notification_key,
)
from poolwarden.watch.samples import Sample
from poolwarden.watch.store import STORE_SCHEMA_VERSION, Store

FP_A, FP_B = "a" * 16, "b" * 16
SECRET = "hunter2-do-not-store"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL: a SQLite file, or a database created for this test on the real server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'poolwarden.db'}"
        return
    pg: PgServer = request.getfixturevalue("pg")
    name = f"pw_store_{uuid.uuid4().hex[:12]}"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/{name}"
    with pg.connect() as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store(url) as opened:
        opened.create_schema()
        yield opened


def alert(kind: str, fp: str, seconds: float, *, database: str = "orders", **labels: str) -> Event:
    return alert_event(
        kind,
        fp,
        seconds,
        rule="PoolSaturated",
        severity="critical",
        database=database,
        summary=f"pool for {database} saturated",
        description="20/20 connections in use",
        value=seconds + 0.1,
        **labels,
    )


def new_book() -> IncidentBook:
    return IncidentBook(new_id=counter_ids())


def story(book: IncidentBook) -> list[IncidentUpdate]:
    """An incident from its first alert to its resolution, every kind of event once at least."""
    updates = [*book.observe(alert("firing", FP_A, 0)), *book.observe(alert("firing", FP_B, 1.5))]
    finding = RootCause("pool_oversized", 0.8, "orders-api", {"demand": 160.0}, "lower pool_max")
    more = [
        book.diagnose("INC001", finding, at(2)),
        book.record_notification(
            "INC001",
            channel="webhook",
            ok=False,
            detail="HTTP 503",
            at=at(3),
            fingerprint=FP_A,
            status="firing",
        ),
        book.record_notification(
            "INC001",
            channel="webhook",
            ok=True,
            detail="",
            at=at(4),
            fingerprint=FP_A,
            status="firing",
        ),
    ]
    updates += [u for u in more if u is not None]
    updates += [
        *book.observe(alert("resolved", FP_A, 10)),
        *book.observe(alert("resolved", FP_B, 12)),
    ]
    return updates


def test_create_schema_is_idempotent(url: str) -> None:
    """create_schema twice on the same database keeps one version row and the data."""
    with Store(url) as first:
        first.create_schema()
        (update,) = new_book().observe(alert("firing", FP_A, 0))
        first.append_events(update.incident, update.events)
    with Store(url) as second:
        second.create_schema()
        assert second.get_incident("INC001") == update.incident
        with second._engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version FROM poolwarden_schema_version").all()
    assert [tuple(r) for r in rows] == [(STORE_SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused(url: str) -> None:
    """A store written by a newer poolwarden is refused with one line naming both versions."""
    with Store(url) as store:
        store.create_schema()
        with store._engine.begin() as conn:
            conn.exec_driver_sql("UPDATE poolwarden_schema_version SET version = 99")
        with pytest.raises(ConfigError) as info:
            store.create_schema()
    message = str(info.value)
    assert "schema version 99 is newer than this poolwarden understands (1)" in message
    assert "\n" not in message


def test_an_incident_round_trips_exactly(store: Store) -> None:
    """Every update of an incident's story, stored in turn, reads back equal to the last one."""
    updates = story(new_book())
    for update in updates:
        store.append_events(update.incident, update.events)
    final = updates[-1].incident
    assert final.status == "resolved"
    assert len(final.timeline) == 8
    assert store.get_incident(final.id) == final
    assert store.get_incident("missing") is None


def test_replayed_events_are_ignored(store: Store) -> None:
    """Appending events already stored inserts nothing and leaves the incident unchanged."""
    updates = story(new_book())
    counts = [store.append_events(u.incident, u.events) for u in updates]
    final = updates[-1].incident
    assert sum(counts) == len(final.timeline)
    before = store.get_incident(final.id)
    assert [store.append_events(u.incident, u.events) for u in updates] == [0] * len(updates)
    assert store.save(final) == 0
    assert store.get_incident(final.id) == before


def test_a_stale_snapshot_never_overwrites_a_newer_one(store: Store) -> None:
    """Upserting an older snapshot of an incident (fewer events) leaves the newer row."""
    updates = story(new_book())
    store.save(updates[-1].incident)
    store.upsert_incident(updates[0].incident)
    stored = store.get_incident("INC001")
    assert stored is not None
    assert (stored.status, len(stored.alerts)) == ("resolved", 2)


def test_save_heals_a_lost_write(store: Store) -> None:
    """save() stores the whole timeline, so events of an update that was never written arrive."""
    updates = story(new_book())
    store.append_events(updates[0].incident, updates[0].events)
    assert store.save(updates[-1].incident) == len(updates[-1].incident.timeline) - 1
    stored = store.get_incident("INC001")
    assert stored is not None
    assert [e.id for e in stored.timeline] == [e.id for e in updates[-1].incident.timeline]


def test_events_of_another_incident_are_refused(store: Store) -> None:
    """append_events refuses an event that belongs to another incident."""
    book = new_book()
    (one,) = book.observe(alert("firing", FP_A, 0))
    (two,) = book.observe(alert("firing", FP_B, 0, database="billing"))
    with pytest.raises(ValueError, match="do not belong to incident INC001"):
        store.append_events(one.incident, two.events)


def test_open_and_list_incidents(store: Store) -> None:
    """open_incidents gives the open ones oldest first; list_incidents newest first, by status."""
    book = new_book()
    for database, second in (("a", 0), ("b", 10), ("c", 20)):
        (update,) = book.observe(alert("firing", FP_A, second, database=database))
        store.save(update.incident)
    for update in book.observe(alert("resolved", FP_A, 30, database="b")):
        store.save(update.incident)
    assert [i.id for i in store.open_incidents()] == ["INC001", "INC003"]
    assert [i.id for i in store.list_incidents()] == ["INC003", "INC002", "INC001"]
    assert [i.id for i in store.list_incidents(limit=2)] == ["INC003", "INC002"]
    assert [i.id for i in store.list_incidents(status="resolved")] == ["INC002"]
    assert all(i.timeline for i in store.list_incidents())


def test_claim_notification_lifecycle(store: Store) -> None:
    """A key is claimed once; a failed send may be claimed again, a pending or sent one not."""
    key = notification_key("INC001", FP_A, "firing", "webhook")
    assert store.get_notification(key) is None
    assert store.claim_notification(key) is True
    assert store.claim_notification(key) is False
    store.mark_notification(key, ok=False, detail="HTTP 503")
    failed = store.get_notification(key)
    assert failed is not None
    assert (failed.status, failed.attempts, failed.detail) == ("failed", 1, "HTTP 503")
    assert store.claim_notification(key) is True
    assert store.claim_notification(key) is False
    store.mark_notification(key, ok=True, detail="202 Accepted")
    sent = store.get_notification(key)
    assert sent is not None
    assert (sent.status, sent.attempts, sent.detail) == ("sent", 2, "202 Accepted")
    assert store.claim_notification(key) is False


def test_concurrent_claims_have_one_winner(url: str) -> None:
    """Eight stores claiming the same 25 keys at once: each key is won exactly once."""
    with Store(url) as setup:
        setup.create_schema()
    keys = [notification_key("INC001", f"{n:016x}", "firing") for n in range(25)]
    wins: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8, timeout=30)

    def claimer() -> None:
        with Store(url) as mine:
            barrier.wait()
            for key in keys:
                if mine.claim_notification(key):
                    with lock:
                        wins.append(key)

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(wins) == sorted(keys)


def test_alert_state_round_trips_and_is_replaced(store: Store) -> None:
    """save_alert_state replaces the whole state; load_alert_state returns what was saved."""
    assert store.load_alert_state() == {}
    first = {
        FP_A: {"state": "pending", "since": 12.5, "labels": {"database": "orders"}},
        FP_B: [1, 2],
    }
    store.save_alert_state(first)
    assert store.load_alert_state() == first
    store.save_alert_state({FP_A: {"value": float("nan")}})
    assert math.isnan(store.load_alert_state()[FP_A]["value"])
    store.save_alert_state({FP_B: {"state": "firing"}})
    assert store.load_alert_state() == {FP_B: {"state": "firing"}}


def test_a_book_resumes_from_the_store(store: Store) -> None:
    """A new book over the stored open incidents finishes them; the store records the end."""
    book = new_book()
    for update in [
        *book.observe(alert("firing", FP_A, 0)),
        *book.observe(alert("firing", FP_B, 1)),
    ]:
        store.append_events(update.incident, update.events)
    resumed = IncidentBook(incidents=store.open_incidents())
    assert resumed.observe(alert("firing", FP_A, 0)) == ()
    updates = [
        *resumed.observe(alert("resolved", FP_A, 5)),
        *resumed.observe(alert("resolved", FP_B, 6)),
    ]
    for update in updates:
        store.append_events(update.incident, update.events)
    last = updates[-1]
    assert store.open_incidents() == ()
    assert store.get_incident("INC001") == last.incident


def test_no_password_reaches_the_database(
    store: Store, url: str, request: pytest.FixtureRequest
) -> None:
    """A DSN password in labels, texts, notification details or alert state is never written."""
    dsn = f"postgresql://app:{SECRET}@db:5432/orders"
    book = IncidentBook(group_by=("target",), new_id=lambda _at: "INC001")
    (update,) = book.observe(alert("firing", FP_A, 0, target=dsn))
    store.append_events(update.incident, update.events)
    store.claim_notification("k")
    store.mark_notification("k", ok=False, detail=f"cannot reach {dsn}")
    store.save_alert_state({FP_A: {"target": dsn, "note": f"password={SECRET}"}})
    assert SECRET not in _everything_stored(store, url, request)
    stored = store.get_incident("INC001")
    assert stored is not None
    assert stored.key == '{target="postgresql://app:***@db:5432/orders"}'


def _everything_stored(store: Store, url: str, request: pytest.FixtureRequest) -> str:
    """Return every byte the store holds, as text (files for SQLite, table dumps for PostgreSQL)."""
    store.close()
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        return "".join(p.read_bytes().decode("latin-1") for p in files)
    pg: PgServer = request.getfixturevalue("pg")
    with pg.connect(dbname=url.rsplit("/", 1)[1]) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'poolwarden_%'"
            )
        ]
        return "".join(str(conn.execute(f"SELECT t::text FROM {t} t").fetchall()) for t in tables)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (f"not a url with password={SECRET}", "cannot parse it"),
        (f"mysql://root:{SECRET}@127.0.0.1/db", "'mysql' is not supported"),
        (f"postgresql+asyncpg://root:{SECRET}@h/db", "'postgresql+asyncpg' is not supported"),
        ("sqlite:////proc/no/such/dir/pw.db", "cannot create '/proc/no/such/dir'"),
    ],
)
def test_a_bad_url_is_one_redacted_line(bad: str, expected: str) -> None:
    """An unparsable or unsupported store URL is a one-line ConfigError without the password."""
    with pytest.raises(ConfigError) as info:
        Store(bad)
    message = str(info.value)
    assert expected in message
    assert SECRET not in message
    assert "\n" not in message
    assert info.value.__cause__ is None


def test_an_unreachable_store_is_one_redacted_line() -> None:
    """A PostgreSQL store nobody answers for fails at create_schema with one redacted line."""
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{free_port()}/db?connect_timeout=3"
    with Store(url) as store, pytest.raises(ConfigError) as info:
        store.create_schema()
    message = str(info.value)
    assert message.startswith("store postgresql+psycopg://app:***@127.0.0.1:")
    assert "cannot open it" in message
    assert SECRET not in message
    assert "\n" not in message


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    """The SQLite store uses the WAL journal and synchronous=FULL on every connection."""
    with Store(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'pw.db'}") as store:
        store.create_schema()
        with store._engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    assert (mode, sync) == ("wal", 2)


# -- kill -9 ---------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace
    from poolwarden.watch.incidents import IncidentBook, notification_key
    from poolwarden.watch.store import Store

    url, log_path, ready_path = sys.argv[1:4]
    T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def fire(fp, second):
        labels = {"alertname": "PoolSaturated", "severity": "critical", "database": "orders"}
        return SimpleNamespace(kind="firing", rule="PoolSaturated", fingerprint=fp,
                               labels=labels, severity="critical", summary="saturated",
                               description="", value=1.0, at=T0 + timedelta(seconds=second))

    store = Store(url)
    store.create_schema()
    book = IncidentBook(new_id=lambda at: "INC001")
    (first,) = book.observe(fire("0" * 16, 0))
    store.append_events(first.incident, first.events)
    assert store.claim_notification(notification_key("INC001", "0" * 16, "firing"))
    with open(log_path, "a") as log:
        deadline = time.monotonic() + 15
        batch = 0
        while time.monotonic() < deadline and batch < 5000:
            batch += 1
            updates = [u for i in range(20) for u in book.observe(fire(f"{batch:08x}{i:08x}", batch))]
            ids = [e.id for u in updates for e in u.events]
            log.write(json.dumps(["intent", ids]) + "\\n")
            log.flush()
            store.append_events(updates[-1].incident, [e for u in updates for e in u.events])
            log.write(json.dumps(["done", ids]) + "\\n")
            log.flush()
            if batch == 3:
                open(ready_path, "w").close()
    """
)


def _wait_for(path: Path, child: subprocess.Popen[bytes], stderr: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.poll() is None, stderr.read_text()
        assert time.monotonic() < deadline, "the child never got ready"
        time.sleep(0.02)


def _read_log(path: Path) -> tuple[list[list[str]], set[str]]:
    """Return the batches the child meant to commit and the ids it saw committed."""
    intents: list[list[str]] = []
    done: set[str] = set()
    for line in path.read_text().splitlines():
        try:
            what, ids = json.loads(line)
        except json.JSONDecodeError:  # the line the kill cut short
            continue
        if what == "intent":
            intents.append(ids)
        else:
            done.update(ids)
    return intents, done


def test_kill_9_loses_nothing_committed_and_duplicates_nothing(url: str, tmp_path: Path) -> None:
    """After SIGKILL mid-stream: the incident is open, committed batches are all there and whole,
    nothing is duplicated, the claimed notification stays claimed, and a replay adds nothing."""
    script, log, ready = tmp_path / "child.py", tmp_path / "events.log", tmp_path / "ready"
    script.write_text(CHILD)
    with (tmp_path / "child.err").open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(script), url, str(log), str(ready)], stderr=stderr, cwd=tmp_path
        )
        try:
            _wait_for(ready, child, tmp_path / "child.err", timeout=30)
            time.sleep(0.2 + (os.getpid() % 7) / 20)  # somewhere in the middle of a batch
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    intents, done = _read_log(log)
    with Store(url) as store:
        store.create_schema()
        (incident,) = store.open_incidents()
        stored = [e.id for e in incident.timeline]
        assert len(stored) == len(set(stored))
        with store._engine.connect() as conn:
            count = conn.exec_driver_sql("SELECT count(*) FROM poolwarden_events").scalar()
        assert count == len(stored)
        later = set(stored[1:])
        assert done <= later, "a committed event was lost"
        assert later <= {i for ids in intents for i in ids}, "an event nobody wrote appeared"
        for ids in intents:
            assert set(ids) <= later or not set(ids) & later, "a batch was stored in part"
        fired = [e.fingerprint for e in incident.timeline if e.kind == "alert_fired"]
        assert list(incident.alerts) == fired, "the incident row and its events disagree"
        assert len(done) >= 3 * 20

        assert store.claim_notification(notification_key("INC001", "0" * 16, "firing")) is False
        assert store.append_events(incident, incident.timeline) == 0
        assert store.get_incident("INC001") == incident
        resumed = IncidentBook(incidents=store.open_incidents())
        replay = Event(
            "firing",
            "PoolSaturated",
            "0" * 16,
            {"alertname": "PoolSaturated", "severity": "critical", "database": "orders"},
            "critical",
            "saturated",
            "",
            1.0,
            T0,
        )
        assert resumed.observe(replay) == ()


# -- samples and notes ---------------------------------------------------------------------


def sample(seconds: float, name: str = "poolwarden_sample_server_connections", value: float = 1.0,
           **labels: str) -> Sample:  # fmt: skip
    """A sample at T0 + `seconds`, labelled database=main plus `labels`."""
    return Sample(at(seconds), name, {"database": "main", **labels}, value)


def test_samples_round_trip_in_time_order_and_by_name(store: Store) -> None:
    """Samples read back equal what was written, sorted by time, cut to the window and names."""
    written = [
        sample(2, value=7.0),
        sample(1, "poolwarden_sample_http_requests_total", 10.0, target="api"),
        sample(0, value=5.0),
        sample(3, value=9.0),
    ]
    assert store.record_samples(written) == 4
    assert store.read_samples(at(0), at(2)) == (written[2], written[1], written[0])
    wanted = store.read_samples(at(0), at(3), names=["poolwarden_sample_server_connections"])
    assert [s.value for s in wanted] == [5.0, 7.0, 9.0]
    assert store.record_samples([]) == 0


def test_samples_past_the_retention_are_pruned_at_most_once_a_minute(url: str) -> None:
    """With a 100 s retention a write deletes samples older than its newest - 100 s, but
    only when the last prune is a minute (of sample time) old."""
    with Store(url, sample_retention_s=100) as store:
        store.create_schema()

        def kept_after(*seconds: float) -> list[float]:
            store.record_samples([sample(s) for s in seconds])
            return [(s.at - at(0)).total_seconds() for s in store.read_samples(at(0), at(999))]

        assert kept_after(0, 30) == [0, 30]  # the first write prunes: nothing is old yet
        assert kept_after(80) == [0, 30, 80]  # 50 s after that prune: none
        assert kept_after(135) == [80, 135]  # 105 s after: prunes before 35
        assert kept_after(190) == [80, 135, 190]  # 55 s after: 80 is old but stays
        assert kept_after(195) == [135, 190, 195]  # 60 s after: prunes before 95


def test_an_older_store_gets_the_samples_table_at_the_next_start(url: str) -> None:
    """A store made before samples existed keeps its incidents, version and gains the table."""
    with Store(url) as first:
        first.create_schema()
        (update,) = new_book().observe(alert("firing", FP_A, 0))
        first.append_events(update.incident, update.events)
        with first._engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE poolwarden_samples")
        assert first.read_samples(at(0), at(10)) == ()
    with Store(url) as second:
        second.create_schema()
        assert second.get_incident("INC001") == update.incident
        second.record_samples([sample(1)])
        assert len(second.read_samples(at(0), at(10))) == 1
        with second._engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version FROM poolwarden_schema_version").all()
    assert [tuple(r) for r in rows] == [(STORE_SCHEMA_VERSION,)]


def test_a_note_joins_the_timeline_once_and_needs_a_known_incident(store: Store) -> None:
    """add_note appends a 'note' event with its data (redacted), once; unknown ids refused."""
    (update,) = new_book().observe(alert("firing", FP_A, 0))
    store.append_events(update.incident, update.events)
    text = f"fault injected: 90 sessions from postgresql://app:{SECRET}@db/main"
    note = store.add_note("INC001", at(5), text, {"requests": 100, "failed": 7})
    again = store.add_note("INC001", at(5), text, {"requests": 100, "failed": 7})
    assert note == again
    assert (note.kind, note.at, note.fingerprint) == ("note", at(5), "")
    assert SECRET not in note.text
    loaded = store.get_incident("INC001")
    assert loaded is not None
    assert [e.kind for e in loaded.timeline] == ["alert_fired", "note"]
    assert loaded.timeline[-1] == note
    assert dict(loaded.timeline[-1].data) == {"requests": 100, "failed": 7}
    # watch saving its own snapshot (which lacks the note) keeps the note
    store.save(update.incident)
    reloaded = store.get_incident("INC001")
    assert reloaded is not None
    assert [e.kind for e in reloaded.timeline] == ["alert_fired", "note"]
    with pytest.raises(ValueError, match="incident 'NOPE': not in store"):
        store.add_note("NOPE", at(5), "x")
