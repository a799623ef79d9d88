"""The postmortem of an incident: four sections, timeline, root cause, tasks, impact, charts.

Incidents are built the way watch builds them (`IncidentBook` fed alert events and a
diagnosis finding); samples as the recorder writes them, with exact figures; the CLI
reads them back from a real SQLite store in tmp_path, notes added with `Store.add_note`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from tests.fixtures.alerts import Event, alert_event, at, counter_ids

from poolwarden.review import (
    SECTIONS,
    ActionItem,
    action_items,
    incident_action_items,
    postmortem_json,
    render_postmortem,
)
from poolwarden.review.charts import CHART_FILES, write_charts
from poolwarden.watch.diagnose import CAUSES
from poolwarden.watch.incidents import Incident, IncidentBook
from poolwarden.watch.samples import Sample, SampleName
from poolwarden.watch.store import Store

SECRET = "hunter2-never-in-a-postmortem"
REMEDY = (
    "lower orders-api's pool max_size from 100 to 77 (1 replica x 77 = 77 fits 97 usable)"
    " - see 'poolwarden plan'"
)
CLI = (
    "import sys; from poolwarden.cli import app, main; "
    "from poolwarden._cli_review import register; register(app); sys.exit(main(sys.argv[1:]))"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """A diagnosis finding as `IncidentBook.diagnose` reads it (`FindingLike`)."""

    cause: str = "pool_oversized"
    confidence: float = 0.95
    culprit: str = "orders-api"
    evidence: Mapping[str, float] = field(
        default_factory=lambda: {
            "client_connections": 96.0,
            "usable": 97.0,
            "held_by_culprit": 90.0,
            "pool_max": 100.0,
        }
    )
    remedy: str = REMEDY


def event(kind: str, seconds: float, rule: str = "PostgresConnectionsNearLimit") -> Event:
    """An alert event of `rule` on database main, `seconds` after T0."""
    return alert_event(
        kind,
        rule.lower()[:16],
        seconds,
        rule=rule,
        severity="critical",
        database="main",
        summary="server connections at 96/97 on main",
        description="usage above 95 %",
        value=0.96,
    )


def outage(*, resolve: bool = True, finding: Finding | None = None) -> Incident:
    """The seed's outage: connections near the limit, diagnosis, a notification, recovery."""
    book = IncidentBook(new_id=counter_ids())
    (opened,) = book.observe(event("firing", 0))
    incident_id = opened.incident.id
    book.observe(event("firing", 5, rule="PoolRejections"))
    book.diagnose(incident_id, finding or Finding(), at(12))
    book.record_notification(
        incident_id, channel="console", ok=True, detail="", at=at(13), status="firing"
    )
    if resolve:
        book.observe(event("resolved", 300))
        book.observe(event("resolved", 301, rule="PoolRejections"))
    incident = book.get(incident_id)
    assert incident is not None
    return incident


def test_the_four_sections_come_in_the_seed_order_under_a_header() -> None:
    """The Markdown opens with the title and id, then the seed's four sections in order."""
    text = render_postmortem(outage())
    assert text.startswith("# Postmortem: server connections at 96/97 on main")
    assert "`INC001`" in text
    positions = [text.index(f"## {name}") for name in SECTIONS]
    assert positions == sorted(positions)
    assert SECTIONS == (
        "Issue Summary",
        "Timeline",
        "Root Cause and Resolution",
        "Corrective and Preventative Measures",
    )


def test_the_summary_gives_duration_what_fired_and_the_root_cause() -> None:
    """A resolved incident's summary has its duration, both alerts and cause with culprit."""
    text = render_postmortem(outage())
    summary = text[text.index("## Issue Summary") : text.index("## Timeline")]
    assert "**Duration:** 5m01s (2026-05-01 12:00:00 UTC to 2026-05-01 12:05:01 UTC)" in summary
    assert "`PostgresConnectionsNearLimit` (critical)" in summary
    assert "`PoolRejections` (critical)" in summary
    assert "`pool_oversized` - orders-api (95% confident)" in summary


def test_the_timeline_lists_each_recorded_event_at_its_utc_time() -> None:
    """Alerts fired and resolved, the diagnosis and the notification, each as HH:MM:SS."""
    text = render_postmortem(outage())
    timeline = text[text.index("## Timeline") : text.index("## Root Cause")]
    entries = [line for line in timeline.splitlines() if line.startswith("- ")]
    assert [e.split(" - ")[0] for e in entries] == [
        "- 12:00:00",
        "- 12:00:05",
        "- 12:00:12",
        "- 12:00:13",
        "- 12:05:00",
        "- 12:05:01",
        "- 12:05:01",
    ]
    assert "PostgresConnectionsNearLimit firing (critical)" in entries[0]
    assert "root cause pool_oversized (95%): orders-api" in entries[2]
    assert "notification via console sent" in entries[3]
    assert "incident resolved after 5m01s" in entries[-1]
    assert "All times UTC, on 2026-05-01." in timeline


def test_the_root_cause_section_explains_the_class_and_tables_the_evidence() -> None:
    """Cause in plain words, the culprit, each evidence number in a row, and the remedy."""
    text = render_postmortem(outage())
    section = text[text.index("## Root Cause") : text.index("## Corrective")]
    assert "more connections than the database can serve" in section
    assert "**Culprit:** orders-api (confidence 95%)" in section
    assert "| `client_connections` | 96 |" in section
    assert "| `held_by_culprit` | 90 |" in section
    assert f"**Remedy:** {REMEDY}" in section
    assert "all alerts resolved at 2026-05-01 12:05:01 UTC, 5m01s after" in section


def test_action_items_for_pool_oversized_are_typed_and_start_with_the_remedy() -> None:
    """Remedy (mitigate), guard budget and audit in CI (prevent), watch and review (process)."""
    items = action_items(outage().root_cause)
    assert (items[0].type, items[0].text) == ("mitigate", REMEDY)
    assert [i.type for i in items] == ["mitigate", "prevent", "prevent", "process", "process"]
    assert "budget=Budget(" in items[1].text
    assert "poolwarden audit" in items[2].text
    assert "poolwarden watch" in items[3].text
    assert "post-incident review" in items[4].text
    text = render_postmortem(outage())
    assert f"| 1 | {REMEDY} | mitigate |" in text


@pytest.mark.parametrize("cause", CAUSES)
def test_every_cause_gets_prevention_and_a_post_incident_review(cause: str) -> None:
    """Each of the ten causes is explained and yields remedy, prevention and the review."""
    incident = outage(finding=Finding(cause=cause, remedy="do the thing"))
    items = action_items(incident.root_cause)
    assert items[0].type == "mitigate"
    assert "prevent" in [i.type for i in items]
    assert items[-1].type == "process"
    assert "post-incident review" in items[-1].text
    assert "a cause class this version does not describe" not in render_postmortem(incident)


def test_an_undiagnosed_incident_still_has_four_sections_and_a_review() -> None:
    """Without a root cause the postmortem says so and its first task is to find one."""
    book = IncidentBook(new_id=counter_ids())
    (opened,) = book.observe(event("firing", 0))
    text = render_postmortem(opened.incident)
    assert all(f"## {name}" in text for name in SECTIONS)
    assert "not diagnosed" in text
    items = action_items(None)
    assert items[0].type == "mitigate"
    assert "poolwarden status" in items[0].text
    assert "post-incident review" in items[-1].text


def test_an_ongoing_incident_says_ongoing() -> None:
    """An open incident's duration, header and timeline say ongoing, timed from `now`."""
    text = render_postmortem(outage(resolve=False), now=at(600))
    assert "**Duration:** ongoing (10m00s so far, opened 2026-05-01 12:00:00 UTC)" in text
    assert "| Resolved | ongoing |" in text
    assert "- ongoing at 12:10:00: the incident is not resolved yet" in text
    assert "**Resolution:** none yet; the incident is ongoing." in text
    assert postmortem_json(outage(resolve=False))["ongoing"] is True


def test_a_timeline_over_midnight_dates_its_entries() -> None:
    """When the entries span two UTC days each carries its date, not only HH:MM:SS."""
    text = render_postmortem(outage(resolve=False), now=at(86_400))
    assert "- 2026-05-01 12:00:00 - PostgresConnectionsNearLimit firing" in text
    assert "- ongoing at 2026-05-02 12:00:00: the incident is not resolved yet" in text
    assert "All times UTC." in text


def test_no_secret_from_labels_or_evidence_reaches_the_output() -> None:
    """A password in a DSN in labels, culprit, remedy or an evidence key is redacted."""
    dsn = f"postgresql://app:{SECRET}@db.internal/main"
    incident = outage()
    assert incident.root_cause is not None
    cause = replace(
        incident.root_cause,
        culprit=f"app at {dsn}",
        remedy=f"connect with password={SECRET} less often",
        evidence={f"conn {dsn}": 1.0, f"password={SECRET}": 2.0},
    )
    leaky = replace(incident, labels={"database": dsn}, title=f"down: {dsn}", root_cause=cause)
    text = render_postmortem(leaky)
    document = json.dumps(postmortem_json(leaky))
    assert SECRET not in text
    assert SECRET not in document
    assert "postgresql://app:***@db.internal/main" in text


def test_postmortem_json_holds_the_same_content() -> None:
    """The JSON has the header fields, duration, root cause, timeline and typed tasks."""
    document = postmortem_json(outage())
    assert document["incident_id"] == "INC001"
    assert document["duration_s"] == 301.0
    assert document["opened_at"] == "2026-05-01T12:00:00+00:00"
    root = document["root_cause"]
    assert isinstance(root, dict)
    assert (root["cause"], root["culprit"], root["remedy"]) == (
        "pool_oversized",
        "orders-api",
        REMEDY,
    )
    timeline = document["timeline"]
    assert isinstance(timeline, list)
    assert len(timeline) == 7
    tasks = document["action_items"]
    assert isinstance(tasks, list)
    assert tasks[0] == {"type": "mitigate", "text": REMEDY}


# -- the store and the CLI -------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `poolwarden ARGS` with the postmortem command registered, as a subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in ("POOLWARDEN_DSN", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite store in tmp_path holding the outage, as watch would have saved it."""
    url = f"sqlite:///{tmp_path / 'store' / 'poolwarden.db'}"
    with Store(url) as store:
        store.create_schema()
        store.save(outage())
    return url


def test_the_store_round_trip_renders_the_same_postmortem(store_url: str) -> None:
    """An incident read back from SQLite renders exactly as the one that was saved."""
    with Store(store_url) as store:
        loaded = store.get_incident("INC001")
    assert loaded is not None
    assert render_postmortem(loaded) == render_postmortem(outage())


def test_the_cli_prints_the_markdown_from_the_store(store_url: str) -> None:
    """`poolwarden postmortem INC001 --store URL` prints the four sections and the culprit."""
    result = run_cli("postmortem", "INC001", "--store", store_url)
    assert result.returncode == 0, result.stderr
    assert all(f"## {name}" in result.stdout for name in SECTIONS)
    assert "**Culprit:** orders-api" in result.stdout
    assert "- 12:00:12 - root cause pool_oversized" in result.stdout


def test_the_cli_writes_out_file_and_json(store_url: str, tmp_path: Path) -> None:
    """--out writes the file (no temporary left behind); --json writes the JSON document."""
    out = tmp_path / "pm.md"
    result = run_cli("postmortem", "INC001", "--store", store_url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}"
    assert out.read_text().startswith("# Postmortem:")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    result = run_cli("postmortem", "INC001", "--store", store_url, "--json")
    assert json.loads(result.stdout)["root_cause"]["culprit"] == "orders-api"


def test_the_cli_refuses_an_unknown_incident_in_one_line(store_url: str) -> None:
    """An id the store does not hold exits 2 with one line naming it."""
    result = run_cli("postmortem", "NOPE", "--store", store_url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "incident 'NOPE': not in store" in result.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"mysql://root:{SECRET}@127.0.0.1/x", "is not supported"),
        ("not a url", "cannot parse it"),
        ("sqlite:///{tmp}/missing.db", "no such file"),
    ],
)
def test_the_cli_refuses_a_bad_store_url_in_one_line(url: str, says: str, tmp_path: Path) -> None:
    """An unsupported, unparsable or missing store exits 2 with one redacted line."""
    result = run_cli("postmortem", "INC001", "--store", url.format(tmp=tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert says in result.stderr
    assert SECRET not in result.stderr
    assert not (tmp_path / "missing.db").exists()


# -- impact, notes and charts from recorded samples --------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAULT = "fault injected: orders-api pool max_size 100 on a 97-slot server"
IMPACT = {"requests": 12000, "failed": 2880, "users": 50, "users_affected": 21}


def recorded_samples() -> list[Sample]:
    """Ten-second samples from T0-60 s to T0+300 s, as the recorder writes them.

    In the window (T0-30 s .. T0+301 s) the request counter rises 100 per step (3,300 in
    33 steps) and the 5xx counter 25 per step from T0 on (775); the jump from T0-40 s to
    T0-30 s (+10,000) is outside it. main peaks at 97 of 97; 'other' (500) is out of scope.
    """
    rows = []
    for t in range(-60, 301, 10):
        requests = 0.0 if t <= -40 else 10_000.0 + 100 * (t + 30) / 10
        failed = 25.0 * (t // 10 + 1) if t >= 0 else 0.0
        connections = min(97.0, 60.0 + max(t, 0) / 5)
        api = {"target": "orders-api", "database": "main"}
        main = {"database": "main"}
        orders = {**main, "application_name": "orders-api"}
        rows += [
            Sample(at(t), SampleName.HTTP_REQUESTS, api, requests),
            Sample(at(t), SampleName.HTTP_ERRORS, api, failed),
            Sample(at(t), SampleName.HTTP_P99, api, 2.5 if t >= 0 else 0.05),
            Sample(at(t), SampleName.SERVER_CONNECTIONS, main, connections),
            Sample(at(t), SampleName.SERVER_USABLE, main, 97.0),
            Sample(at(t), SampleName.APP_CONNECTIONS, orders, connections - 2),
            Sample(at(t), SampleName.APP_CONNECTIONS, {**main, "application_name": ""}, 2.0),
            Sample(at(t), SampleName.SERVER_CONNECTIONS, {"database": "other"}, 500.0),
        ]
    return rows


@pytest.fixture
def recorded_url(tmp_path: Path) -> str:
    """A SQLite store with the outage, its samples, and the drill's three notes."""
    url = f"sqlite:///{tmp_path / 'recorded' / 'poolwarden.db'}"
    with Store(url) as store:
        store.create_schema()
        store.save(outage())
        store.record_samples(recorded_samples())
        store.add_note("INC001", at(1), FAULT)
        store.add_note("INC001", at(290), "remedy applied: orders-api restarted with max_size 77")
        store.add_note("INC001", at(305), "impact measured by the load generator", IMPACT)
    return url


def load(url: str) -> tuple[Incident, tuple[Sample, ...]]:
    """Read the incident and every sample back from the store."""
    with Store(url) as store:
        incident = store.get_incident("INC001")
        samples = store.read_samples(at(-3600), at(3600))
    assert incident is not None
    return incident, samples


def test_the_impact_is_counted_from_the_samples_of_the_incident_window() -> None:
    """Without a note, failed/total requests are the counters' increase over the window,
    and the peak connections of the incident's database come with its usable slots."""
    text = render_postmortem(outage(), samples=recorded_samples())
    summary = text[text.index("## Issue Summary") : text.index("## Timeline")]
    assert (
        "- **Impact:** 775 of 3,300 requests failed (23.5 %), from the apps' HTTP metrics "
        "sampled 11:59:30 to 12:05:01\n"
    ) in summary
    assert "- **Connections:** peak 97 of 97 usable on main; worst HTTP p99 2500 ms" in summary
    impact = postmortem_json(outage(), samples=recorded_samples())["impact"]
    assert isinstance(impact, dict)
    assert (impact["source"], impact["requests"], impact["failed"]) == ("samples", 3300, 775)


def test_the_impact_note_wins_for_requests_and_gives_the_users_affected(recorded_url: str) -> None:
    """From the store, the latest impact note's counts are the impact, with users affected."""
    incident, samples = load(recorded_url)
    text = render_postmortem(incident, samples=samples)
    assert (
        "- **Impact:** 2,880 of 12,000 requests failed (24.0 %), counted by the load "
        "generator (impact note at 12:05:05); 21 of 50 users affected\n"
    ) in text
    assert "- **Connections:** peak 97 of 97 usable on main" in text
    assert all(f"## {name}" in text for name in SECTIONS)
    impact = postmortem_json(incident, samples=samples)["impact"]
    assert isinstance(impact, dict)
    assert impact["source"] == "note"
    assert (impact["failed"], impact["requests"], impact["users_affected"]) == (2880, 12000, 21)
    assert impact["failed_ratio"] == pytest.approx(0.24)


def test_notes_are_in_the_timeline_at_their_time(recorded_url: str) -> None:
    """The fault, the remedy and the impact notes are timeline entries marked 'note:'."""
    incident, samples = load(recorded_url)
    text = render_postmortem(incident, samples=samples)
    timeline = text[text.index("## Timeline") : text.index("## Root Cause")]
    assert f"- 12:00:01 - note: {FAULT}\n" in timeline
    assert "- 12:04:50 - note: remedy applied: orders-api restarted with max_size 77" in timeline
    assert "- 12:05:05 - note: impact measured by the load generator" in timeline


def test_audit_findings_noted_on_the_incident_become_prevent_tasks(tmp_path: Path) -> None:
    """Each audit note (once per code) is a 'prevent' task with its fix, before the process
    tasks; both the Markdown and the JSON list it, read back from the store."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    finding = {"audit": "fleet-exceeds-server", "severity": "error",
               "title": "the fleet may open 83 connections; the server has 27 usable",
               "fix": "lower orders-api's max_size to 6 per process"}  # fmt: skip
    with Store(url) as store:
        store.create_schema()
        store.save(outage())
        store.add_note("INC001", at(1), "audit error fleet-exceeds-server", finding)
        store.add_note("INC001", at(2), "audit error fleet-exceeds-server again", finding)
        incident = store.get_incident("INC001")
    assert incident is not None
    items = incident_action_items(incident)
    task = ActionItem(
        "prevent",
        "lower orders-api's max_size to 6 per process (audit `fleet-exceeds-server`: the "
        "fleet may open 83 connections; the server has 27 usable)",
    )
    assert items == (*action_items(incident.root_cause)[:-2], task,
                     *action_items(incident.root_cause)[-2:])  # fmt: skip
    assert task.text in render_postmortem(incident)
    json_items = postmortem_json(incident)["action_items"]
    assert {"type": "prevent", "text": task.text} in json_items  # type: ignore[operator]


def test_without_samples_or_note_the_impact_says_not_measured() -> None:
    """No samples and no impact note: the summary says so instead of inventing figures."""
    text = render_postmortem(outage())
    assert "- **Impact:** not measured: no HTTP samples or impact note" in text
    assert "- **Connections:** not sampled" in text


def test_charts_are_three_pngs_for_an_incident_with_samples(tmp_path: Path) -> None:
    """connections.png, errors.png and latency.png are written, each a real PNG, and the
    Markdown links them under the Issue Summary."""
    paths = write_charts(outage(), recorded_samples(), tmp_path / "charts")
    assert [p.name for p in paths] == ["connections.png", "errors.png", "latency.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 10_000, f"{path.name} is only {len(data)} bytes"
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == sorted(CHART_FILES)
    text = render_postmortem(outage(), samples=recorded_samples(), charts=paths)
    charts = text[text.index("### Charts") : text.index("## Timeline")]
    assert "![connections](connections.png)" in charts
    assert "![latency](latency.png)" in charts


def test_no_chart_is_written_without_samples(tmp_path: Path) -> None:
    """An incident with no sample in its window gets no chart and no file."""
    outside = [s for s in recorded_samples() if s.at < at(-40)]
    assert write_charts(outage(), outside, tmp_path / "charts") == ()
    assert not (tmp_path / "charts").exists()


def test_the_cli_out_writes_the_markdown_and_the_charts_beside_it(
    recorded_url: str, tmp_path: Path
) -> None:
    """--out FILE writes the postmortem and its three charts in FILE's directory; --json
    lists the chart paths and the impact."""
    out = tmp_path / "report" / "pm.md"
    out.parent.mkdir()
    result = run_cli("postmortem", "INC001", "--store", recorded_url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    charts = [out.parent / name for name in CHART_FILES]
    assert result.stdout.splitlines() == [f"wrote {out}", *(f"wrote {p}" for p in charts)]
    assert "![errors](errors.png)" in out.read_text()
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in charts)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["pm.md", *CHART_FILES])
    pm_json = tmp_path / "report" / "pm.json"
    result = run_cli(
        "postmortem", "INC001", "--store", recorded_url, "--json", "--out", str(pm_json)
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(pm_json.read_text())
    assert document["charts"] == [str(p) for p in charts]
    assert (document["impact"]["failed"], document["impact"]["source"]) == (2880, "note")
