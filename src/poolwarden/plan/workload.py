"""Workloads for `poolwarden plan`: what each pgbench client runs, and how to run pgbench.

A workload is one of:

- ``oltp-rw``: pgbench's built-in TPC-B-like transaction (``-b tpcb-like``);
- ``oltp-ro``: pgbench's built-in read-only transaction (``-b select-only``);
- a SQL file (``*.sql``): each statement is one transaction; every statement becomes its
  own pgbench script (``-f``) of equal weight, so each client runs one at random per
  transaction. The file is checked by a dry run in a rolled-back transaction;
- a pgbench script (any other file, or a ``.sql`` file with ``\\`` meta-commands), passed
  as is with ``-f``; pgbench itself reports its errors.

The built-in workloads run on pgbench's own tables (``pgbench_accounts``, ``_branches``,
``_tellers``, ``_history``), which `initialise` drops and recreates with ``pgbench -i``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from poolwarden._dsn import describe_target
from poolwarden.embedded import _bin
from poolwarden.errors import ConfigError

__all__ = [
    "BUILTIN_WORKLOADS",
    "Workload",
    "load_workload",
]

BUILTIN_WORKLOADS = {"oltp-rw": "tpcb-like", "oltp-ro": "select-only"}
_MAX_SCRIPTS = 128  # pgbench's MAX_SCRIPTS
_INIT_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class Workload:
    """What the clients run: a name for reports, its kind and pgbench's script arguments."""

    name: str
    kind: str  # "builtin", "sql" or "script"
    statements: tuple[str, ...]  # the SQL file's statements; empty for the other kinds
    source: str  # the file it came from; "" for a built-in

    def needs_init(self) -> bool:
        """Return whether pgbench's tables must exist (the built-in workloads)."""
        return self.kind == "builtin"

    def script_args(self, directory: Path) -> list[str]:
        """Return pgbench's script options, writing per-statement scripts into `directory`."""
        if self.kind == "builtin":
            return ["-b", BUILTIN_WORKLOADS[self.name]]
        if self.kind == "script":
            return ["-f", self.source]
        args = []
        for i, statement in enumerate(self.statements):
            path = directory / f"statement-{i + 1}.sql"
            path.write_text(statement + ";\n")
            args += ["-f", f"{path}@1"]
        return args


def load_workload(spec: str) -> Workload:
    """Resolve `spec`: a built-in name or a file; raise `ConfigError` naming what is wrong."""
    if spec in BUILTIN_WORKLOADS:
        return Workload(spec, "builtin", (), "")
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(sorted(BUILTIN_WORKLOADS))
        raise ConfigError(f"--workload {spec!r}: no such workload or file; use {known} or a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the workload file ({exc})") from None
    if path.suffix != ".sql" or re.search(r"^\s*\\", text, re.MULTILINE):
        if not text.strip():
            raise ConfigError(f"{path}: the pgbench script is empty; write at least one command")
        return Workload(path.name, "script", (), str(path))
    statements = tuple(split_sql(text, str(path)))
    if not statements:
        raise ConfigError(f"{path}: no SQL statement found; write at least one, ending with ';'")
    if len(statements) > _MAX_SCRIPTS:
        raise ConfigError(f"{path}: {len(statements)} statements; pgbench takes {_MAX_SCRIPTS}")
    return Workload(path.name, "sql", statements, str(path))


def split_sql(text: str, origin: str) -> list[str]:
    """Split `text` at top-level semicolons, respecting quotes, dollar quotes and comments."""
    token = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|(\$\w*\$)|;", re.S)
    statements, start, pos = [], 0, 0
    while (match := token.search(text, pos)) is not None:
        pos = match.end()
        if match[1]:  # a dollar quote: skip to its closing tag
            close = text.find(match[1], pos)
            if close < 0:
                raise ConfigError(f"{origin}: unterminated dollar quote {match[1]}")
            pos = close + len(match[1])
        elif match[0] == ";":
            statements.append(text[start : match.start()])
            start = pos
        elif match[0][0] in "'\"" and (len(match[0]) < 2 or match[0][-1] != match[0][0]):
            raise ConfigError(f"{origin}: unterminated quote")
    statements.append(text[start:])
    cleaned = (_strip_comments(s) for s in statements)
    return [s for s in cleaned if s]


def _strip_comments(statement: str) -> str:
    # Only a statement made of nothing but comments is dropped; inner comments are kept.
    bare = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.S).strip()
    return statement.strip() if bare else ""


def validate(workload: Workload, dsn: str) -> None:
    """Dry-run each statement of a SQL workload in a transaction that is rolled back."""
    if workload.kind != "sql":
        return
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        for i, statement in enumerate(workload.statements, 1):
            try:
                conn.execute(statement.encode())  # bytes: no client-side %s parsing
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"{workload.source}: statement {i} fails on {describe_target(dsn)}: {first}"
                ) from None
            finally:
                conn.rollback()


def pgbench_env(dsn: str) -> tuple[str, dict[str, str]]:
    """Return (conninfo without password, environment with PGPASSWORD) for pgbench.

    The password goes through the environment so that it never shows in `ps`.
    """
    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


def initialise(dsn: str, scale: int) -> None:
    """Create pgbench's tables at `scale` (dropping existing ones) with ``pgbench -i``."""
    conninfo, env = pgbench_env(dsn)
    with tempfile.TemporaryDirectory(prefix="poolwarden-plan-") as tmp:
        proc = subprocess.run(
            [_bin("pgbench"), "-i", "-q", "-s", str(scale), conninfo],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=_INIT_TIMEOUT_S,
            check=False,
        )
    if proc.returncode != 0:
        raise ConfigError(f"pgbench -i on {describe_target(dsn)} failed: {_last_line(proc.stderr)}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
