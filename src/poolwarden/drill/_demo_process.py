"""One demo-app replica in its own process: start it, wait for /healthz, stop it.

The child runs ``python -m poolwarden.drill._demo_main --port N`` with its `AppConfig` in
the ``POOLWARDEN_DEMOAPP`` environment variable (not argv: ``ps`` shows argv, and the DSN
may carry a password). `demoapp` re-exports `AppProcess`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from poolwarden._dsn import redact_dsn
from poolwarden.drill.demoapp import ENV_VAR, AppConfig
from poolwarden.errors import ConfigError, PoolwardenError

_START_TIMEOUT = 20.0


@dataclass(eq=False)
class AppProcess:
    """A replica running ``python -m poolwarden.drill._demo_main`` on 127.0.0.1."""

    config: AppConfig
    port: int
    log_path: pathlib.Path
    process: subprocess.Popen[bytes] = field(repr=False)
    _owns_log: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls, config: AppConfig, *, port: int | None = None, log_path: pathlib.Path | None = None
    ) -> AppProcess:
        """Start a replica and return once ``/healthz`` answers 200 (within 20 s)."""
        owns_log = log_path is None
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"poolwarden-{config.name}-", suffix=".log")
            os.close(handle)
            log_path = pathlib.Path(name)
        port = free_port() if port is None else port
        env = {**os.environ, ENV_VAR: config.to_json()}  # env, not argv: ps shows argv
        command = [sys.executable, "-m", "poolwarden.drill._demo_main", "--port", str(port)]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        app = cls(config, port, log_path, process, owns_log)
        try:
            app._wait_healthy(_START_TIMEOUT)
        except BaseException:
            app.stop()
            raise
        return app

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise PoolwardenError(
                        f"demo app {self.config.name!r} exited with code {code} during "
                        f"start-up; log tail: {self._log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                time.sleep(0.05)
        raise PoolwardenError(
            f"demo app {self.config.name!r} on port {self.port} did not answer /healthz within "
            f"{timeout:g} s; log tail: {self._log_tail()}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return redact_dsn(" | ".join(tail)) or "(empty)"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the replica: SIGTERM, then SIGKILL after `timeout` seconds. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._owns_log:
            self.log_path.unlink(missing_ok=True)
            self._owns_log = False

    def set_fault(self, kind: str, **params: float) -> None:
        """Switch the replica's app-side fault (``POST /_drill/fault``)."""
        response = httpx.post(
            f"{self.url}/_drill/fault", json={"kind": kind, **params}, timeout=5.0
        )
        if response.status_code != 200:
            raise ConfigError(
                f"demo app {self.config.name!r} refused the fault: {response.json()['error']}"
            )


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1 (the replicas' and the drill server's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
