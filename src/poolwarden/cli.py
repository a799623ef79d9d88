"""The `poolwarden` command line: a thin shell over the library.

Printing, colour and exit codes live here only. Exit codes: 0 fine; 1 the check found
problems; 2 bad input or unreachable target (one line on stderr, never a traceback).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from poolwarden._cli_audit import register as _register_audit
from poolwarden._cli_drill import register as _register_drill
from poolwarden._cli_export import register as _register_export
from poolwarden._cli_plan import register as _register_plan
from poolwarden._cli_review import register as _register_review
from poolwarden._cli_watch import register as _register_watch
from poolwarden._dsn import normalize_dsn, redact_dsn, resolve_dsn
from poolwarden.config import load_config
from poolwarden.embedded import EmbeddedServer, EmbeddedStatus
from poolwarden.errors import ConfigError, PoolwardenError
from poolwarden.probe.postgres import snapshot

__all__ = ["app", "main"]

EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    name="poolwarden",
    help="Keep a PostgreSQL-backed service from being taken down by its connection pool.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(
    help="Run the embedded PostgreSQL server (start, stop, url, status).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
_register_export(app)
_register_watch(app)
_register_audit(app)
_register_plan(app)
_register_review(app)
_register_drill(app)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Data directory of the embedded server [default: user data dir]."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="poolwarden.yaml with the databases to read."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


# -- db ----------------------------------------------------------------------------------


@db_app.command("start")
def db_start(
    dir_: DirOption = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections", min=1, help="Server max_connections (restarts if changed)."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="TCP port on 127.0.0.1 (kept once chosen)."),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Start the embedded server, or apply changed settings to the running one."""
    status = EmbeddedServer(dir_).start(max_connections=max_connections, port=port)
    _emit_db_status(status, json_, verb="started")


@db_app.command("stop")
def db_stop(dir_: DirOption = None, json_: JsonOption = False) -> None:
    """Stop the embedded server cleanly."""
    server = EmbeddedServer(dir_)
    was_running = server.stop()
    if json_:
        _print_json({"stopped": was_running, "data_dir": str(server.data_dir)})
    else:
        _out.print("stopped" if was_running else f"not running ({server.data_dir})")


@db_app.command("url")
def db_url(
    dir_: DirOption = None,
    socket: Annotated[bool, typer.Option("--socket", help="Print the unix-socket DSN.")] = False,
) -> None:
    """Print the embedded server's DSN (it carries no password)."""
    print(EmbeddedServer(dir_).url(socket=socket))


@db_app.command("status")
def db_status(dir_: DirOption = None, json_: JsonOption = False) -> None:
    """Say whether the embedded server runs, where, and with which settings."""
    _emit_db_status(EmbeddedServer(dir_).status(), json_, verb="running")


def _emit_db_status(status: EmbeddedStatus, as_json: bool, *, verb: str) -> None:
    if as_json:
        _print_json(status)
        return
    if not status.running:
        state = "not initialised" if not status.initialized else "stopped"
        _out.print(f"embedded server {state} ({status.data_dir})")
        return
    settings = ", ".join(f"{k}={v.strip(chr(39))}" for k, v in sorted(status.settings.items()))
    _out.print(f"{verb}: {status.dsn}  (pid {status.pid}, data {status.data_dir})")
    _out.print(f"settings: {settings}", highlight=False)


# -- status ------------------------------------------------------------------------------


@app.command("status")
def status_cmd(
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            help="Server to read [default: $POOLWARDEN_DSN, $DATABASE_URL, else the embedded one].",
        ),
    ] = None,
    config: ConfigOption = None,
    database: Annotated[
        str | None,
        typer.Option("--database", help="Which database of the config file to read."),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Show who holds the server's connection slots, by application."""
    from poolwarden._render import render_status

    snap = snapshot(_target_dsn(dsn, config, database))
    if json_:
        _print_json(snap)
    else:
        render_status(snap, _out)


def _target_dsn(dsn: str | None, config: Path | None, database: str | None) -> str:
    """Resolve the DSN: --dsn, the config file's database, the environment, else embedded."""
    if dsn is None and config is not None:
        return _config_database(config, database)
    if database is not None:
        raise ConfigError("--database needs --config FILE; or pass --dsn instead")
    resolved = resolve_dsn(dsn)
    return resolved.dsn if resolved.dsn is not None else EmbeddedServer().ensure_running()


def _config_database(path: Path, name: str | None) -> str:
    databases = load_config(path).databases
    if name is not None:
        if name not in databases:
            known = ", ".join(sorted(databases)) or "none"
            raise ConfigError(f"{path}: no database {name!r} (defined: {known}); fix --database")
        return normalize_dsn(databases[name].dsn, origin=f"{path}: databases.{name}.dsn")
    if len(databases) != 1:
        known = ", ".join(sorted(databases)) or "none"
        raise ConfigError(
            f"{path}: {len(databases)} databases defined ({known}); pick one with --database NAME"
            if databases
            else f"{path}: no databases defined; add one under 'databases:' or pass --dsn"
        )
    ((only, db),) = databases.items()
    return normalize_dsn(db.dsn, origin=f"{path}: databases.{only}.dsn")


# -- plumbing ----------------------------------------------------------------------------

_out = Console(highlight=False, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _print_json(value: Any) -> None:
    text = json.dumps(_jsonable(value), indent=2, sort_keys=False)
    # Belt and braces: nothing that looks like a DSN password leaves the process.
    print(redact_dsn(text))


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"poolwarden: error: {redact_dsn(message)}", file=sys.stderr)
    return code


def _usage_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help())  # a bare `poolwarden` or `poolwarden db` asks for help
        return EXIT_OK
    where = f"{ctx.command_path} --help" if ctx is not None else "poolwarden --help"
    message = " ".join(exc.format_message().split()).rstrip(".")
    return _fail(f"{message}; see '{where}'")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="poolwarden", standalone_mode=False)
    except PoolwardenError as exc:
        return _fail(" ".join(str(exc).split()))
    except typer.TyperException as exc:  # usage errors: bad flag, bad value, missing argument
        return _usage_error(exc)
    except typer.Abort:
        return _fail("aborted", 1)
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
