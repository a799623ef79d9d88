"""`poolwarden postmortem`: an incident's postmortem from the store watch writes.

`register(app)` adds the command. It reads the incident and the samples of its window
from the store (``--store``, else the default), and prints its postmortem as Markdown (or
JSON with ``--json``) or writes it atomically to ``--out FILE``, with its charts (PNG)
beside it. An unknown incident id, a bad store URL, a store that cannot be read or an
unwritable ``--out`` raise `ConfigError` (one line, exit 2 in `cli.main`); without
matplotlib the charts are skipped with a note on stderr. Reference: docs/postmortem.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer

from poolwarden._cli_export import write_export
from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError
from poolwarden.review.charts import write_charts
from poolwarden.review.postmortem import incident_window, postmortem_json, render_postmortem
from poolwarden.watch.incidents import Incident
from poolwarden.watch.samples import Sample
from poolwarden.watch.store import Store

__all__ = ["postmortem_cmd", "register"]


def register(app: typer.Typer) -> None:
    """Add the `postmortem` command to `app` (once; a second call changes nothing)."""
    if not any(command.name == "postmortem" for command in app.registered_commands):
        app.command("postmortem")(postmortem_cmd)


def postmortem_cmd(
    incident_id: Annotated[str, typer.Argument(help="The incident's id, as watch printed it.")],
    store: Annotated[
        str | None,
        typer.Option("--store", help="SQLAlchemy URL of the incident store [default: watch's]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to FILE (atomically) instead of stdout.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON instead of Markdown.")] = False,
) -> int:
    """Write the postmortem of an incident: summary with impact, timeline, root cause, tasks."""
    now = datetime.now(UTC)
    incident, samples = _load(store, incident_id, now)
    name = f"postmortem-{incident.id}.{'json' if json_ else 'md'}"
    charts: tuple[Path, ...] = ()
    if out is not None:
        charts = _charts(incident, samples, (out / name if out.is_dir() else out).parent)
    if json_:
        document = postmortem_json(incident, samples=samples, charts=charts, now=now)
        text = redact_dsn(json.dumps(document, indent=2)) + "\n"
    else:
        text = render_postmortem(incident, samples=samples, charts=charts, now=now)
    if out is None:
        print(text, end="")
        return 0
    for path in [*write_export({name: text}, out, directory=False), *charts]:
        print(f"wrote {path}")
    return 0


def _charts(incident: Incident, samples: tuple[Sample, ...], where: Path) -> tuple[Path, ...]:
    """Write the charts into `where`; skip them (one line on stderr) without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "charts not drawn: matplotlib is not installed; pip install 'poolwarden[plan]'",
            file=sys.stderr,
        )
        return ()
    return write_charts(incident, samples, where)


def _load(url: str | None, incident_id: str, now: datetime) -> tuple[Incident, tuple[Sample, ...]]:
    """Return the incident and its window's samples from the store at `url`.

    Raises a one-line ConfigError for a missing store, an unreadable one or an unknown id.
    """
    with Store(url) as store:
        parsed = sa.engine.make_url(store.url)
        database = parsed.database or ""
        # Reading must not leave an empty SQLite file behind a mistyped path.
        local = parsed.drivername == "sqlite" and database not in ("", ":memory:")
        if local and not Path(database).expanduser().is_file():
            raise ConfigError(
                f"store {store.target}: no such file; give the --store that "
                "'poolwarden watch' writes to"
            )
        try:
            incident = store.get_incident(incident_id)
            if incident is None:
                raise ConfigError(
                    f"incident {incident_id!r}: not in store {store.target}; check the id "
                    "(watch prints it when the incident opens)"
                )
            start, end = incident_window(incident, now)
            samples = store.read_samples(start, end or now)
        except sa.exc.SQLAlchemyError as exc:
            reason = " ".join(str(getattr(exc, "orig", exc)).split()[:12])
            raise ConfigError(
                f"store {store.target}: cannot read incidents ({redact_dsn(reason)}); "
                "check that --store is the store 'poolwarden watch' writes to"
            ) from None
    return incident, samples
