"""DSN plumbing: normalise, validate, redact and resolve connection strings.

Passwords never leave this module unredacted in anything meant for people: every message,
log line and JSON document uses `redact_dsn`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict

from poolwarden.errors import DsnError

__all__ = ["DsnSource", "ResolvedDsn", "normalize_dsn", "redact_dsn", "resolve_dsn"]

REDACTED = "***"

# URL form: scheme://user:password@host — the password is whatever sits between the
# first ':' after '//' and the last '@' before the host part.
# Unanchored, so URLs inside free text (error messages, JSON) are caught too.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@?#\s]*):(?P<pw>[^@/?#\s]*)@", re.I)
# key=value form: password=secret or password='sec ret' (quotes may hold escaped quotes);
# not after ? or &, where it is a URL query parameter handled below.
_KV_PASSWORD = re.compile(
    r"(?<![?&])(?P<key>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s\"]+)", re.I
)
# URL query parameter ?password=... or &password=...
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)(?P<pw>[^&#]*)", re.I)
_SQLALCHEMY_DRIVER = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", re.I)

DsnSource = Literal["--dsn", "POOLWARDEN_DSN", "DATABASE_URL", "embedded"]


@dataclass(frozen=True, slots=True)
class ResolvedDsn:
    """A DSN and where it came from; `dsn` is None when the embedded server should serve."""

    dsn: str | None
    source: DsnSource


def redact_dsn(dsn: str) -> str:
    """Return `dsn` with any password replaced by `***`.

    Works on unparsable strings and on free text holding DSNs (messages, JSON documents).
    """
    out = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", dsn)
    out = _QUERY_PASSWORD.sub(lambda m: f"{m['key']}{REDACTED}", out)
    return _KV_PASSWORD.sub(lambda m: f"{m['key']}{REDACTED}", out)


def normalize_dsn(dsn: str, *, origin: str = "DSN") -> str:
    """Validate `dsn` and return it in a form libpq accepts.

    SQLAlchemy URLs (`postgresql+psycopg://...`) lose their driver suffix. Raises `DsnError`
    naming `origin` (e.g. ``--dsn``) with the DSN redacted.
    """
    text = dsn.strip()
    if not text:
        raise DsnError(f"{origin}: the DSN is empty; give one like postgresql://user@host:5432/db")
    text = _SQLALCHEMY_DRIVER.sub(lambda m: f"{m[1]}://", text)
    try:
        conninfo_to_dict(text)
    except psycopg.ProgrammingError as exc:
        reason = _safe_reason(text, _first_line(str(exc)))
        raise DsnError(
            f"{origin}: cannot parse DSN {redact_dsn(text)!r} ({reason}); "
            "write it as postgresql://user@host:port/dbname or 'host=... dbname=...'"
        ) from None
    return text


def resolve_dsn(cli_dsn: str | None) -> ResolvedDsn:
    """Pick the DSN: `--dsn`, then POOLWARDEN_DSN, then DATABASE_URL, else the embedded server."""
    if cli_dsn is not None:
        return ResolvedDsn(normalize_dsn(cli_dsn, origin="--dsn"), "--dsn")
    for var in ("POOLWARDEN_DSN", "DATABASE_URL"):
        value = os.environ.get(var)
        if value:
            source: DsnSource = "POOLWARDEN_DSN" if var == "POOLWARDEN_DSN" else "DATABASE_URL"
            return ResolvedDsn(normalize_dsn(value, origin=var), source)
    return ResolvedDsn(None, "embedded")


def describe_target(dsn: str) -> str:
    """Return `user@host:port/dbname` for messages, without the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact_dsn(dsn)
    user = str(params.get("user") or os.environ.get("PGUSER") or "")
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    where = f"{host}:{port}" if not host.startswith("/") else f"{host} (socket, port {port})"
    return f"{user + '@' if user else ''}{where}/{dbname}"


def _safe_reason(dsn: str, reason: str) -> str:
    """Keep libpq's reason, but mask any quoted token the redacted DSN does not show.

    libpq quotes the offending token, which may be (part of) a password.
    """
    shown = redact_dsn(dsn)
    return re.sub(r'"([^"]*)"', lambda m: m[0] if m[1] in shown else '"***"', reason)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid syntax"
