"""Open a probe connection and turn libpq's failures into one-line `ProbeError`s."""

from __future__ import annotations

import re

import psycopg

from poolwarden._dsn import describe_target, redact_dsn
from poolwarden.errors import (
    AuthenticationFailed,
    DatabaseNotFound,
    DatabaseUnreachable,
    ProbeError,
    TooManyConnections,
)

# libpq reports connection failures as text only (no SQLSTATE reaches psycopg before the
# session exists), so classify by the server's and libpq's fixed message wording.
_AUTH = re.compile(
    r"password authentication failed|no password supplied|role \".*\" does not exist"
    r"|authentication failed|pg_hba\.conf",
    re.I,
)
_NO_DB = re.compile(r"database \"(?P<db>.*)\" does not exist", re.I)
_TOO_MANY = re.compile(
    r"too many clients|remaining connection slots are reserved|too many connections", re.I
)
_UNREACHABLE = re.compile(
    r"connection refused|could not translate host|failed to resolve host|timeout expired"
    r"|no such file or directory|network is unreachable|no route to host|could not connect"
    r"|invalid response to ssl negotiation|server closed the connection|invalid integer value",
    re.I,
)


def connect(dsn: str, *, application_name: str, timeout: float = 5.0) -> psycopg.Connection[object]:
    """Open an autocommit connection for probing; raise a `ProbeError` subclass on failure."""
    try:
        return psycopg.connect(
            dsn, connect_timeout=max(1, round(timeout)), autocommit=True,
            application_name=application_name,
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        raise classify(dsn, exc) from None


def classify(dsn: str, exc: psycopg.OperationalError) -> ProbeError:
    """Map a connection failure to the `ProbeError` subclass and message that explain it."""
    target = describe_target(dsn)
    detail = failure_detail(str(exc))
    if _AUTH.search(detail):
        return AuthenticationFailed(
            f"{target}: authentication failed ({detail}); check the user and password in the DSN",
            target=target,
        )
    if m := _NO_DB.search(detail):
        return DatabaseNotFound(
            f"{target}: database {m['db']!r} does not exist; fix the database name in the DSN",
            target=target,
        )
    if _TOO_MANY.search(detail):
        return TooManyConnections(
            f"{target}: the server refused the connection because its slots are full "
            f"({detail}); this is the outage poolwarden guards against — free connections, "
            "or reserve one for monitoring with ALTER ROLE ... CONNECTION LIMIT on the apps",
            target=target,
        )
    if _UNREACHABLE.search(detail):
        return DatabaseUnreachable(
            f"{target}: cannot connect ({detail}); check host and port, and that the server "
            "is running (for the embedded one: poolwarden db start)",
            target=target,
        )
    return ProbeError(f"{target}: cannot connect ({detail})", target=target)


def failure_detail(message: str) -> str:
    """Return libpq's reason on one line, without the 'connection to server ...' preamble."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    text = lines[0] if lines else "unknown error"
    text = re.sub(r"^connection (failed|is bad):\s*", "", text)
    text = re.sub(r"^connection to server (at|on) .*? failed:\s*", "", text)
    text = re.sub(r"^FATAL:\s*", "", text)
    return redact_dsn(text)
