"""Alerts become incidents with timelines: grouping, resolution, idempotence. Pure, no clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC

import pytest
from tests.fixtures.alerts import T0, Event, alert_event, at, counter_ids

from poolwarden.errors import ConfigError
from poolwarden.watch.incidents import (
    IncidentBook,
    RootCause,
    new_incident_id,
    notification_key,
    timeline_event_id,
)

FP_A, FP_B, FP_C = "a" * 16, "b" * 16, "c" * 16


def alert(
    kind: str,
    fingerprint: str,
    seconds: float,
    *,
    severity: str = "warning",
    database: str = "orders",
    rule: str = "PoolSaturated",
    summary: str = "",
    **labels: str,
) -> Event:
    return alert_event(
        kind,
        fingerprint,
        seconds,
        rule=rule,
        severity=severity,
        database=database,
        summary=summary or f"{rule} on {database}",
        description=f"{rule} description",
        value=float(seconds),
        **labels,
    )


def book(**kwargs: object) -> IncidentBook:
    return IncidentBook(new_id=counter_ids(), **kwargs)  # type: ignore[arg-type]


FINDING = RootCause(
    cause="pool_oversized",
    confidence=0.6,
    culprit="orders-api",
    evidence={"pool_max_total": 160.0, "usable_connections": 97.0},
    remedy="lower pool_max to 10",
)


def test_pending_events_open_nothing() -> None:
    """A pending alert opens no incident and returns no update."""
    incidents = book()
    assert incidents.observe(alert("pending", FP_A, 0)) == ()
    assert incidents.open_incidents() == ()


def test_first_firing_opens_an_incident() -> None:
    """The first firing alert opens an incident keyed by its database, with an alert_fired event."""
    (update,) = book().observe(alert("firing", FP_A, 1, severity="critical", summary="20/20 used"))
    incident = update.incident
    assert (incident.id, incident.key, incident.labels) == (
        "INC001",
        '{database="orders"}',
        {"database": "orders"},
    )
    assert (incident.status, incident.severity, incident.title) == (
        "open",
        "critical",
        "20/20 used",
    )
    assert (incident.opened_at, incident.resolved_at, incident.root_cause) == (at(1), None, None)
    assert incident.alerts[FP_A].status == "firing"
    assert incident.alerts[FP_A].fired_at == at(1)
    assert [e.kind for e in update.events] == ["alert_fired"]
    assert update.events == incident.timeline
    assert update.events[0].data["summary"] == "20/20 used"


def test_alerts_on_the_same_database_join_and_others_open_their_own() -> None:
    """A second alert on the same database joins the open incident; another database gets one."""
    incidents = book()
    (first,) = incidents.observe(alert("firing", FP_A, 0))
    (joined,) = incidents.observe(alert("firing", FP_B, 2, rule="ServerConnectionsHigh"))
    (other,) = incidents.observe(alert("firing", FP_C, 3, database="billing"))
    assert joined.incident.id == first.incident.id == "INC001"
    assert list(joined.incident.alerts) == [FP_A, FP_B]
    assert [e.kind for e in joined.events] == ["alert_fired"]
    assert (other.incident.id, other.incident.key) == ("INC002", '{database="billing"}')
    assert [i.id for i in incidents.open_incidents()] == ["INC001", "INC002"]


def test_group_by_is_configurable_and_missing_labels_are_left_out() -> None:
    """Grouping uses the configured labels; an alert lacking all of them has the key {}."""
    incidents = book(group_by=("application",))
    (by_app,) = incidents.observe(alert("firing", FP_A, 0, application="orders-api"))
    (same_app,) = incidents.observe(
        alert("firing", FP_B, 1, database="x", application="orders-api")
    )
    (no_label,) = incidents.observe(alert("firing", FP_C, 2))
    assert by_app.incident.key == '{application="orders-api"}'
    assert same_app.incident.id == by_app.incident.id
    assert (no_label.incident.key, no_label.incident.labels) == ("{}", {})


def test_severity_is_the_highest_ever_and_the_title_its_first_alert() -> None:
    """Severity rises with a more severe alert and stays when it resolves; the title follows it."""
    incidents = book()
    incidents.observe(alert("firing", FP_A, 0, severity="warning", summary="wait p95 high"))
    (up,) = incidents.observe(alert("firing", FP_B, 1, severity="critical", summary="refused"))
    (same,) = incidents.observe(alert("firing", FP_C, 2, severity="critical", summary="later"))
    (down,) = incidents.observe(alert("resolved", FP_B, 3, severity="critical"))
    assert (up.incident.severity, up.incident.title) == ("critical", "refused")
    assert (same.incident.severity, same.incident.title) == ("critical", "refused")
    assert (down.incident.severity, down.incident.status) == ("critical", "open")


def test_incident_resolves_when_its_last_alert_resolves() -> None:
    """With no quiet period the last alert_resolved also resolves the incident at that time."""
    incidents = book()
    incidents.observe(alert("firing", FP_A, 0))
    incidents.observe(alert("firing", FP_B, 1))
    (one,) = incidents.observe(alert("resolved", FP_A, 5))
    (last,) = incidents.observe(alert("resolved", FP_B, 9))
    assert [e.kind for e in one.events] == ["alert_resolved"]
    assert one.incident.status == "open"
    assert [e.kind for e in last.events] == ["alert_resolved", "resolved"]
    assert (last.incident.status, last.incident.resolved_at) == ("resolved", at(9))
    assert last.events[-1].data == {"duration_s": 9.0}
    assert last.incident.alerts[FP_B].resolved_at == at(9)
    assert incidents.open_incidents() == ()


def test_quiet_period_delays_resolution_and_a_refire_keeps_the_incident() -> None:
    """With a quiet period the incident stays open until it passes; a refire within it joins."""
    incidents = book(quiet_period_s=60)
    incidents.observe(alert("firing", FP_A, 0))
    (resolved,) = incidents.observe(alert("resolved", FP_A, 10))
    assert resolved.incident.status == "open"
    assert incidents.tick(at(69)) == ()
    (refire,) = incidents.observe(alert("firing", FP_A, 69))
    assert refire.incident.id == "INC001"
    assert [e.kind for e in refire.events] == ["alert_fired"]
    incidents.observe(alert("resolved", FP_A, 80))
    assert incidents.tick(at(139)) == ()
    (closed,) = incidents.tick(at(140))
    assert (closed.incident.status, closed.incident.resolved_at) == ("resolved", at(80))
    assert [e.kind for e in closed.events] == ["resolved"]
    assert closed.events[0].at == at(80)


def test_an_event_after_the_quiet_period_first_closes_the_old_incident() -> None:
    """A firing after the quiet period ended resolves the old incident, then opens a new one."""
    incidents = book(quiet_period_s=30)
    incidents.observe(alert("firing", FP_A, 0))
    incidents.observe(alert("resolved", FP_A, 10))
    closed, opened = incidents.observe(alert("firing", FP_A, 45))
    assert (closed.incident.id, closed.incident.status) == ("INC001", "resolved")
    assert (opened.incident.id, opened.incident.status) == ("INC002", "open")


def test_firing_after_resolution_opens_a_new_incident() -> None:
    """Once resolved, an incident takes no more alerts: the next firing opens another."""
    incidents = book()
    incidents.observe(alert("firing", FP_A, 0))
    incidents.observe(alert("resolved", FP_A, 5))
    (again,) = incidents.observe(alert("firing", FP_A, 6))
    assert again.incident.id == "INC002"
    old = incidents.get("INC001")
    assert old is not None
    assert old.status == "resolved"


def test_replayed_events_change_nothing() -> None:
    """Observing the same events again, or a resolved alert nobody knows, returns no update."""
    incidents = book()
    events = [alert("firing", FP_A, 0), alert("firing", FP_B, 1), alert("resolved", FP_A, 2)]
    for item in events:
        incidents.observe(item)
    before = incidents.open_incidents()
    for item in events:
        assert incidents.observe(item) == ()
    assert incidents.observe(alert("firing", FP_B, 3)) == ()  # still firing: nothing new
    assert incidents.observe(alert("resolved", FP_C, 4)) == ()
    assert incidents.open_incidents() == before
    incidents.observe(alert("firing", FP_A, 5))
    assert incidents.observe(alert("resolved", FP_A, 2)) == ()  # from before the refire


def test_event_ids_are_deterministic() -> None:
    """Two books fed the same input give the same event ids; time, kind or alert change them."""
    feed = [alert("firing", FP_A, 0), alert("firing", FP_B, 1), alert("resolved", FP_A, 2)]
    ids = []
    for _ in range(2):
        incidents = book()
        ids.append([e.id for item in feed for u in incidents.observe(item) for e in u.events])
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 3
    base = timeline_event_id("INC001", "alert_fired", FP_A, at(0))
    assert base == ids[0][0]
    assert len(base) == 32
    variants = {
        timeline_event_id("INC001", "alert_fired", FP_A, at(0.001)),
        timeline_event_id("INC001", "alert_resolved", FP_A, at(0)),
        timeline_event_id("INC001", "alert_fired", FP_B, at(0)),
        timeline_event_id("INC002", "alert_fired", FP_A, at(0)),
    }
    assert base not in variants
    assert len(variants) == 4


def test_root_cause_is_the_most_confident_finding_and_each_enters_the_timeline_once() -> None:
    """A finding enters the timeline once per (cause, culprit); the most confident is the root cause."""
    incidents = book()
    (opened,) = incidents.observe(alert("firing", FP_A, 0))
    first = incidents.diagnose(opened.incident.id, FINDING, at(1))
    assert first is not None
    assert first.incident.root_cause == FINDING
    assert [e.kind for e in first.events] == ["diagnosis"]
    assert first.events[0].data["evidence"] == {"pool_max_total": 160.0, "usable_connections": 97.0}
    assert incidents.diagnose("INC001", FINDING, at(2)) is None
    weaker = RootCause("noisy_neighbor", 0.3, "batch-job", {}, "move the batch job")
    update = incidents.diagnose("INC001", weaker, at(3))
    assert update is not None
    assert update.incident.root_cause == FINDING
    assert [e.data["cause"] for e in update.events] == ["noisy_neighbor"]
    surer = RootCause("pool_oversized", 0.9, "orders-api", {"pool_max_total": 200.0}, "lower it")
    raised = incidents.diagnose("INC001", surer, at(4))
    assert raised is not None
    assert (raised.incident.root_cause, raised.events) == (surer, ())
    with pytest.raises(ValueError, match=r"confidence 1\.5"):
        incidents.diagnose("INC001", RootCause("x", 1.5, "", {}, ""), at(5))
    with pytest.raises(KeyError, match="NOPE"):
        incidents.diagnose("NOPE", FINDING, at(5))


def test_notifications_enter_the_timeline_even_after_resolution() -> None:
    """Sent and failed notifications become timeline events, also for a resolved incident."""
    incidents = book()
    incidents.observe(alert("firing", FP_A, 0))
    failed = incidents.record_notification(
        "INC001",
        channel="webhook",
        ok=False,
        detail="HTTP 503",
        at=at(1),
        fingerprint=FP_A,
        status="firing",
    )
    incidents.observe(alert("resolved", FP_A, 2))
    sent = incidents.record_notification(
        "INC001",
        channel="webhook",
        ok=True,
        detail="",
        at=at(3),
        fingerprint=FP_A,
        status="resolved",
    )
    assert failed is not None
    assert sent is not None
    assert [e.kind for e in failed.events] == ["notification_failed"]
    assert failed.events[0].data == {"channel": "webhook", "status": "firing", "detail": "HTTP 503"}
    assert sent.incident.status == "resolved"
    assert [e.kind for e in sent.incident.timeline] == [
        "alert_fired",
        "notification_failed",
        "alert_resolved",
        "resolved",
        "notification_sent",
    ]
    replay = incidents.record_notification(
        "INC001",
        channel="webhook",
        ok=True,
        detail="",
        at=at(3),
        fingerprint=FP_A,
        status="resolved",
    )
    assert replay is None
    assert incidents.get("INC001") == sent.incident


def test_a_late_notification_of_a_resolved_incident_leaves_its_successor_open() -> None:
    """Recording a notification for a resolved incident keeps the newer one on its key open."""
    incidents = book()
    incidents.observe(alert("firing", FP_A, 0))
    incidents.observe(alert("resolved", FP_A, 1))
    incidents.observe(alert("firing", FP_A, 2))
    incidents.record_notification("INC001", channel="console", ok=True, detail="", at=at(3))
    assert [i.id for i in incidents.open_incidents()] == ["INC002"]
    (update,) = incidents.observe(alert("resolved", FP_A, 4))
    assert (update.incident.id, update.incident.status) == ("INC002", "resolved")


def test_timeline_is_ordered_by_time() -> None:
    """An event recorded late with an earlier time takes its place in time order."""
    incidents = book()
    incidents.observe(alert("firing", FP_A, 0))
    incidents.observe(alert("firing", FP_B, 10))
    late = incidents.record_notification("INC001", channel="console", ok=True, detail="", at=at(5))
    assert late is not None
    assert [e.at for e in late.incident.timeline] == [at(0), at(5), at(10)]


def test_notification_key_names_incident_alert_status_and_channel() -> None:
    """Notification keys are stable text and differ by incident, alert, status and channel."""
    key = notification_key("INC001", FP_A, "firing")
    assert key == f"INC001/{FP_A}/firing"
    assert notification_key("INC001", "", "resolved") == "INC001/-/resolved"
    assert notification_key("INC001", FP_A, "firing", "webhook") == f"INC001/{FP_A}/firing/webhook"
    keys = {
        key,
        notification_key("INC002", FP_A, "firing"),
        notification_key("INC001", FP_B, "firing"),
        notification_key("INC001", FP_A, "resolved"),
        notification_key("INC001", FP_A, "firing", "console"),
    }
    assert len(keys) == 5


def test_book_resumes_open_incidents() -> None:
    """A book given stored incidents continues them: a repeat firing is a no-op, resolution closes."""
    first = book()
    first.observe(alert("firing", FP_A, 0))
    first.observe(alert("firing", FP_B, 1))
    first.observe(alert("resolved", FP_A, 2))
    stored = first.open_incidents()
    resumed = IncidentBook(incidents=stored, new_id=counter_ids())
    assert resumed.open_incidents() == stored
    assert resumed.observe(alert("firing", FP_B, 1)) == ()
    (closed,) = resumed.observe(alert("resolved", FP_B, 3))
    assert (closed.incident.id, closed.incident.status) == ("INC001", "resolved")
    assert closed.incident.timeline[: len(stored[0].timeline)] == stored[0].timeline


def test_incident_ids_sort_by_time_and_differ() -> None:
    """Default incident ids are 26-character ULIDs: later opened sorts later; same time differs."""
    ids = [new_incident_id(at(s)) for s in (0, 0, 0.002, 3600, 86400 * 400)]
    assert all(len(i) == 26 for i in ids)
    assert len(set(ids)) == 5
    assert ids[2:] == sorted(ids[2:])
    assert max(ids[:2]) < ids[2]
    (update,) = IncidentBook().observe(alert("firing", FP_A, 0))
    assert update.incident.id[:10] == ids[0][:10]  # the time part


def test_passwords_never_leave_the_book() -> None:
    """DSN passwords in labels, summaries, findings and notification details are redacted."""
    dsn = "postgresql://app:hunter2@db:5432/orders"
    incidents = book(group_by=("target",))
    (update,) = incidents.observe(alert("firing", FP_A, 0, target=dsn, summary=f"down: {dsn}"))
    incidents.diagnose(
        update.incident.id, RootCause("database_down", 1.0, dsn, {}, f"check {dsn}"), at(1)
    )
    final = incidents.record_notification(
        update.incident.id, channel="webhook", ok=False, detail=f"POST {dsn} failed", at=at(2)
    )
    assert final is not None
    assert "hunter2" not in repr(final.incident)
    assert final.incident.key == '{target="postgresql://app:***@db:5432/orders"}'


def test_unix_times_and_naive_times_are_utc() -> None:
    """An event whose `at` is Unix time or a naive datetime is recorded at that UTC time."""
    incidents = book()
    unix = alert("firing", FP_A, 0)
    (update,) = incidents.observe(replace(unix, at=T0.timestamp()))
    (naive,) = incidents.observe(replace(alert("firing", FP_B, 1), at=at(1).replace(tzinfo=None)))
    assert update.incident.opened_at == T0
    assert update.incident.opened_at.tzinfo is UTC
    assert naive.incident.alerts[FP_B].fired_at == at(1)


def test_bad_input_is_refused() -> None:
    """A negative quiet period is a ConfigError; an unknown event kind a ValueError."""
    with pytest.raises(ConfigError, match="quiet_period_s is -1"):
        IncidentBook(quiet_period_s=-1)
    with pytest.raises(ValueError, match="event kind 'inactive'"):
        book().observe(alert("inactive", FP_A, 0))
