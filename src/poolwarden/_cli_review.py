"""`poolwarden postmortem`: an incident's postmortem from the store watch writes.

`register(app)` adds the command. It reads the incident from the store (``--store``, else
the default), and prints its postmortem as Markdown (or JSON with ``--json``) or writes it
atomically to ``--out FILE``. An unknown incident id, a bad store URL or a store that
cannot be read raise `ConfigError` (one line, exit 2 in `cli.main`). Reference:
docs/postmortem.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer

from poolwarden._cli_export import write_export
from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError
from poolwarden.review.postmortem import postmortem_json, render_postmortem
from poolwarden.watch.incidents import Incident
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
    """Write the postmortem of an incident: summary, timeline, root cause, action items."""
    incident = _load(store, incident_id)
    now = datetime.now(UTC)
    if json_:
        text = redact_dsn(json.dumps(postmortem_json(incident, now=now), indent=2)) + "\n"
    else:
        text = render_postmortem(incident, now=now)
    if out is None:
        print(text, end="")
        return 0
    name = f"postmortem-{incident.id}.{'json' if json_ else 'md'}"
    for path in write_export({name: text}, out, directory=False):
        print(f"wrote {path}")
    return 0


def _load(url: str | None, incident_id: str) -> Incident:
    """Return the incident from the store at `url`, or raise a one-line ConfigError."""
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
        except sa.exc.SQLAlchemyError as exc:
            reason = " ".join(str(getattr(exc, "orig", exc)).split()[:12])
            raise ConfigError(
                f"store {store.target}: cannot read incidents ({redact_dsn(reason)}); "
                "check that --store is the store 'poolwarden watch' writes to"
            ) from None
    if incident is None:
        raise ConfigError(
            f"incident {incident_id!r}: not in store {store.target}; check the id "
            "(watch prints it when the incident opens)"
        )
    return incident
