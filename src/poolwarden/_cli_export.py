"""`poolwarden export`: the rule pack as Prometheus rules, promtool tests or a Grafana dashboard.

`register(app)` adds the command to the CLI. The exports themselves are
`poolwarden.watch.export`; this module only chooses where they go: stdout, a file or a
directory, written through temporary files renamed into place, so a failed export leaves
nothing half-written. Errors are `ConfigError`s, which the CLI prints as one line, exit 2.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from poolwarden.config import load_config
from poolwarden.errors import ConfigError
from poolwarden.watch.export import EXPORT_KINDS, TESTS_FILE, export_files, untested_rules
from poolwarden.watch.rules import load_rules

__all__ = ["register", "write_export"]

_KINDS = ", ".join(EXPORT_KINDS)


def register(app: typer.Typer) -> None:
    """Add the `export` command to `app` (once; a second call changes nothing)."""
    if not any(command.name == "export" for command in app.registered_commands):
        app.command("export")(export_cmd)


def export_cmd(
    kind: Annotated[str, typer.Argument(metavar="KIND", help=f"What to export: {_KINDS}.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="File to write (a directory takes the default file name); promtool-tests "
            "writes the rule file and its test file into this directory. Default: stdout.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="poolwarden.yaml whose rules: change or add to the pack."
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Export the rule pack for Prometheus and promtool, or the Grafana dashboard."""
    rules = None
    if config is not None:
        rules = load_rules(overrides=load_config(config).rules, source=f"{config}: rules")
    files = export_files(kind, rules)
    if kind == "promtool-tests":
        for name, why in untested_rules(rules).items():
            print(f"poolwarden: note: no promtool test for {name}: {why}", file=sys.stderr)
    if out is None:
        # promtool-tests on stdout is the test file; its rule file is `export prometheus-rules`.
        name = TESTS_FILE if TESTS_FILE in files else next(iter(files))
        if json_:
            print(json.dumps({"kind": kind, "files": {name: files[name]}}, indent=2))
        else:
            sys.stdout.write(files[name])
        return
    written = write_export(files, out, directory=len(files) > 1)
    if json_:
        print(json.dumps({"kind": kind, "written": [str(p) for p in written]}, indent=2))
    else:
        for path in written:
            print(f"wrote {path}")


def write_export(files: dict[str, str], out: Path, *, directory: bool) -> list[Path]:
    """Write `files` (name -> text) to `out`; return the paths written.

    With `directory`, `out` is a directory (created if missing) that receives every file
    under its own name; otherwise `out` is the file, or an existing directory to put it in.
    Every file goes to a temporary file first and is renamed into place only when all
    were written. Raises `ConfigError` naming `out` and the reason.
    """
    targets = _targets(files, out, directory=directory)
    temps: list[tuple[Path, Path]] = []
    try:
        for path, text in targets.items():
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((Path(name), path))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide it from Prometheus
                handle.write(text)
        for temp, path in temps:
            os.replace(temp, path)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write ({_reason(exc)}); {_FIX}") from None
    finally:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
    return list(targets)


_FIX = "choose a writable path"


def _targets(files: dict[str, str], out: Path, *, directory: bool) -> dict[Path, str]:
    """Map each file to its path; check up front so no rename can fail half-way."""
    if directory:
        if out.exists() and not out.is_dir():
            names = " and ".join(files)
            raise ConfigError(
                f"--out {out}: is a file; this export writes {names}: give a directory"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--out {out}: cannot create the directory ({_reason(exc)}); {_FIX}"
            ) from None
        targets = {out / name: text for name, text in files.items()}
    else:
        ((name, text),) = files.items()
        targets = {(out / name if out.is_dir() else out): text}
    for path in targets:
        if path.is_dir():
            raise ConfigError(
                f"--out {out}: {path} is a directory; remove it or choose another path"
            )
    return targets


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
