"""Benchmark plumbing: a private embedded PostgreSQL, or the server in POOLWARDEN_DSN."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from poolwarden.embedded import EmbeddedServer


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(
    max_connections: int = 120, nice: int = 0, **settings: str | int | float | bool
) -> Iterator[str]:
    """Yield a DSN: $POOLWARDEN_DSN if set, else a fresh embedded server stopped afterwards.

    `nice` lowers the server's CPU priority (its backends inherit it from the postmaster):
    on a small machine the load generator shares the cores with the server, and a starved
    client would report its own scheduling delay as latency. A niced server stands in for
    the usual separate database host.
    """
    if os.environ.get("POOLWARDEN_DSN"):
        yield os.environ["POOLWARDEN_DSN"]
        return
    with tempfile.TemporaryDirectory(prefix="poolwarden-bench-") as tmp:
        embedded = EmbeddedServer(Path(tmp) / "data")
        status = embedded.start(
            max_connections=max_connections, port=free_port(), settings=settings
        )
        if nice and status.pid is not None:
            _renice(status.pid, nice)
        try:
            yield embedded.url()
        finally:
            embedded.stop()


def machine() -> str:
    """Describe the machine in one line for the results table."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def _renice(pid: int, nice: int) -> None:
    import psutil

    parent = psutil.Process(pid)
    for proc in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            proc.nice(nice)
