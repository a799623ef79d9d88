"""The drill's PostgreSQL: a private embedded server with the orders database and its roles.

The app connects as ``orders_app``, a login role that is not a superuser (so the reserved
slots are not its to take, as in production); the other services as ``billing_worker``
and ``reporting``. Passwords are random per drill and never printed. The seeded database
``orders_template`` is copied into a fresh ``orders`` before each run, so the runs with
the guard off and on start from the same data.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import psycopg
from psycopg import sql

from poolwarden.drill._demo_process import free_port
from poolwarden.drill._demo_schema import create_schema
from poolwarden.embedded import EmbeddedServer

APP_ROLE = "orders_app"
SERVICE_ROLES = ("billing_worker", "reporting")
DATABASE = "orders"
_TEMPLATE = "orders_template"


class DrillServer:
    """An embedded server in `root`, with the drill's roles and the seeded template."""

    def __init__(self, root: Path, *, max_connections: int) -> None:
        self.embedded = EmbeddedServer(root / "data")
        self.max_connections = max_connections
        self.port = free_port()
        self._password = secrets.token_urlsafe(18)

    def start(self) -> None:
        """Start the server, create the roles and seed the template database."""
        self.embedded.start(max_connections=self.max_connections, port=self.port)
        with psycopg.connect(self.admin_dsn("postgres"), autocommit=True) as conn:
            for role in (APP_ROLE, *SERVICE_ROLES):
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(self._password)
                    )
                )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_TEMPLATE)))
        create_schema(self.admin_dsn(_TEMPLATE))
        with psycopg.connect(self.admin_dsn(_TEMPLATE), autocommit=True) as conn:
            for role in (APP_ROLE, *SERVICE_ROLES):
                conn.execute(
                    sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(
                        sql.Identifier(role)
                    )
                )
                conn.execute(
                    sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(
                        sql.Identifier(role)
                    )
                )

    def reset(self) -> None:
        """Give the next run a fresh copy of the orders database and default role settings."""
        with psycopg.connect(self.admin_dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(DATABASE)))  # fmt: skip
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(DATABASE), sql.Identifier(_TEMPLATE)))  # fmt: skip
            for role in (APP_ROLE, *SERVICE_ROLES):
                conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(sql.Identifier(role)))
                conn.execute(
                    sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(sql.Identifier(role))
                )

    def restart(self, down_s: float) -> None:
        """Stop the server, keep it down `down_s` seconds, and start it again."""
        self.embedded.stop()
        time.sleep(down_s)
        self.embedded.start(max_connections=self.max_connections, port=self.port)

    def stop(self) -> None:
        """Stop the server."""
        self.embedded.stop()

    def admin_dsn(self, dbname: str = DATABASE) -> str:
        """Return the superuser's DSN (trusted on loopback; it may use the reserved slots)."""
        return self.embedded.url(dbname)

    def dsn(self, role: str = APP_ROLE, dbname: str = DATABASE) -> str:
        """Return the DSN of `role` on `dbname`, with its password."""
        return f"postgresql://{role}:{self._password}@127.0.0.1:{self.port}/{dbname}"
