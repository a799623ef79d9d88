"""Log into PgBouncer's admin console, explain its failures, and bound its queries in time.

PgBouncer and libpq report a failed login as text only, so `connect_admin` classifies it by
its fixed wording into a one-line `ProbeError` subclass; `query_error` does the same for a
failed SHOW; `query_deadline` shuts the socket down when the console stops answering.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from poolwarden.errors import (
    AuthenticationFailed,
    DatabaseNotFound,
    DatabaseUnreachable,
    ProbeError,
)
from poolwarden.probe._connect import failure_detail
from poolwarden.probe.postgres import PROBE_APPLICATION_NAME

ADMIN_DATABASE = "pgbouncer"

# PgBouncer's and libpq's fixed wording (no SQLSTATE reaches psycopg before the login ends),
# the error it means, and what to say about it ({detail} is filled in).
_CONNECT_FAILURES: tuple[tuple[re.Pattern[str], type[ProbeError], str], ...] = (
    (re.compile(r"\bnot allowed\b", re.I), AuthenticationFailed,
     "PgBouncer does not let this user use its admin console; add the user to "
     "admin_users or stats_users in pgbouncer.ini and RELOAD"),
    (re.compile(r"authentication failed|no password supplied|no such user", re.I),
     AuthenticationFailed,
     "authentication failed ({detail}); check the user and password in the DSN against "
     "PgBouncer's auth_file"),
    (re.compile(r"no such database|database \".*\" does not exist", re.I), DatabaseNotFound,
     "{detail}; the admin console is dbname=" + ADMIN_DATABASE),
    (re.compile(r"no more connections allowed", re.I), ProbeError,
     "PgBouncer refused the connection because max_client_conn is reached ({detail}); "
     "raise max_client_conn or find the clients that flood it"),
    (re.compile(
        r"connection refused|could not translate host|failed to resolve host|timeout expired"
        r"|no such file or directory|network is unreachable|no route to host"
        r"|could not connect|server closed the connection|connection reset", re.I),
     DatabaseUnreachable,
     "cannot connect ({detail}); check PgBouncer's listen_addr and listen_port and that it "
     "is running"),
)  # fmt: skip


def connect_admin(dsn: str, target: str, timeout: float) -> psycopg.Connection[Any]:
    """Open an autocommit connection to the console; raise a `ProbeError` subclass on failure."""
    try:
        return psycopg.connect(
            dsn, autocommit=True, connect_timeout=max(1, math.ceil(timeout)),
            application_name=PROBE_APPLICATION_NAME,
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        detail = failure_detail(str(exc))
        for pattern, error, advice in _CONNECT_FAILURES:
            if pattern.search(detail):
                message = advice.format(detail=detail)
                raise error(f"{target}: {message}", target=target) from None
        raise ProbeError(f"{target}: cannot connect ({detail})", target=target) from None


def query_error(
    conn: psycopg.Connection[Any], target: str, command: str, exc: psycopg.Error, timeout: float
) -> ProbeError:
    """Explain a failed SHOW; `timeout` is the deadline that cut it, 0 if none did."""
    detail = failure_detail(str(exc))
    if timeout:
        return DatabaseUnreachable(
            f"{target}: PgBouncer did not answer {command} within {timeout:g} s; it may be "
            "stopped or overloaded (it runs on one CPU core)",
            target=target,
        )
    if conn.broken or conn.closed:
        return DatabaseUnreachable(
            f"{target}: connection lost during {command} ({detail})", target=target
        )
    if command == "SHOW VERSION":
        return ProbeError(
            f"{target}: not a PgBouncer admin console ({command}: {detail}); point the DSN at "
            f"PgBouncer's port with dbname={ADMIN_DATABASE}",
            target=target,
        )
    return ProbeError(f"{target}: PgBouncer refused {command} ({detail})", target=target)


@dataclass(frozen=True, slots=True)
class Deadline:
    """How long the queries may take, and whether that time ran out."""

    seconds: float
    fired: threading.Event


@contextlib.contextmanager
def query_deadline(conn: psycopg.Connection[Any], seconds: float) -> Iterator[Deadline]:
    """Shut the connection's socket down if the block outlasts `seconds`.

    A stopped or wedged PgBouncer still completes TCP handshakes in the kernel, so a read
    would block for ever; shutting the socket down wakes it with an error instead.
    """
    fired = threading.Event()
    # The lock keeps expire() from touching a socket number the connection already freed.
    lock = threading.Lock()
    done = False

    def expire() -> None:
        with lock:
            if done:
                return
            fired.set()
            with (
                contextlib.suppress(OSError, psycopg.Error),
                socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield Deadline(seconds, fired)
    finally:
        with lock:
            done = True
        timer.cancel()
