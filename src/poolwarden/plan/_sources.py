"""Settings the audit reads: PostgreSQL units, ``pgbouncer.ini`` and the settings' shapes."""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from poolwarden.errors import ConfigError

_DURATION_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE_KB = {"b": 1 / 1024, "kb": 1, "mb": 1024, "gb": 1024**2, "tb": 1024**3}
_QUANTITY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_duration_ms(value: int | float | str) -> int:
    """Return a PostgreSQL duration ('30s', '5min', 0) in milliseconds; ValueError if invalid."""
    return round(_quantity(value, _DURATION_MS, "a duration like 30000, '30s' or '5min'"))


def parse_size_kb(value: int | float | str) -> int:
    """Return a PostgreSQL size ('4MB', 4096) in kB; ValueError with the fix if invalid."""
    return round(_quantity(value, _SIZE_KB, "a size like 4096 (kB), '4MB' or '1GB'"))


def _quantity(value: int | float | str, units: dict[str, float], example: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"got a boolean; write {example}")
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value)
    unit = match[2].lower() if match else ""
    if not match or (unit and unit not in units):
        raise ValueError(f"{value!r} is not {example}")
    return float(match[1]) * (units[unit] if unit else 1)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The server settings the audit judges, in base units (ms, kB); `source` says whence.

    `memory_gb` and `cores` come from the topology (a live server cannot tell them).
    """

    source: Literal["declared", "live"]
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    statement_timeout_ms: int
    idle_in_transaction_session_timeout_ms: int
    idle_session_timeout_ms: int
    work_mem_kb: int
    shared_buffers_kb: int
    maintenance_work_mem_kb: int
    memory_gb: float | None
    cores: int | None

    @property
    def usable_connections(self) -> int:
        """Slots an ordinary role may take: max_connections minus both reserves."""
        return (
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections
        )


def _any_database() -> dict[str, int | None]:
    # No [databases] known: count one (database, user) pair, as a wildcard entry would.
    return {"*": None}


class PgBouncerSettings(BaseModel):
    """PgBouncer's pool settings with its defaults (REFERENCE §2.5); times in seconds.

    `databases` maps each ``[databases]`` entry to its own ``pool_size`` (None: the default).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    max_client_conn: int = Field(default=100, ge=1)
    default_pool_size: int = Field(default=20, ge=1)
    reserve_pool_size: int = Field(default=0, ge=0)
    max_db_connections: int = Field(default=0, ge=0)
    max_user_connections: int = Field(default=0, ge=0)
    pool_mode: Literal["session", "transaction", "statement"] = "session"
    query_wait_timeout: float = Field(default=120.0, ge=0)
    server_idle_timeout: float = Field(default=600.0, ge=0)
    server_lifetime: float = Field(default=3600.0, ge=0)
    client_idle_timeout: float = Field(default=0.0, ge=0)
    databases: dict[str, int | None] = Field(default_factory=_any_database)

    def pool_sizes(self) -> dict[str, int]:
        """Return each database's server pool size per user, reserve included."""
        return {
            name: (size or self.default_pool_size) + self.reserve_pool_size
            for name, size in self.databases.items()
        }


_INT_KEYS = ("max_client_conn", "default_pool_size", "reserve_pool_size",
             "max_db_connections", "max_user_connections")  # fmt: skip
_FLOAT_KEYS = ("query_wait_timeout", "server_idle_timeout", "server_lifetime",
               "client_idle_timeout")  # fmt: skip


def parse_pgbouncer_ini(path: Path, *, origin: str) -> PgBouncerSettings:
    """Read the ``[pgbouncer]`` and ``[databases]`` sections of the ini file at `path`.

    Raises `ConfigError` with one line naming the file, the line and the fix.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{origin}: cannot read {path} ({reason}); fix the ini path") from None
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, comment_prefixes=(";", "#"), inline_comment_prefixes=(";",)
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        line = getattr(exc, "lineno", None)
        at = f"line {line}: " if line else ""
        problem = type(exc).__name__.replace("Error", "").lower() or "syntax"
        raise ConfigError(
            f"{path}: {at}invalid ini ({problem}); write 'key = value' lines under "
            "[pgbouncer] and [databases]"
        ) from None
    values: dict[str, object] = {}
    if parser.has_section("pgbouncer"):
        for key in (*_INT_KEYS, *_FLOAT_KEYS, "pool_mode"):
            if parser.has_option("pgbouncer", key):
                values[key] = _ini_value(path, text, key, parser.get("pgbouncer", key))
    if parser.has_section("databases") and parser.options("databases"):
        values["databases"] = {
            name: _db_pool_size(path, text, name, parser.get("databases", name))
            for name in parser.options("databases")
        }
    return PgBouncerSettings.model_validate(values)


def _ini_value(path: Path, text: str, key: str, raw: str) -> object:
    value = raw.strip()
    if key == "pool_mode":
        if value not in ("session", "transaction", "statement"):
            fail = "write session, transaction or statement"
            raise ConfigError(f"{path}: line {_line_of(text, key)}: pool_mode: {fail}")
        return value
    try:
        number = int(value) if key in _INT_KEYS else float(value)
    except ValueError:
        kind = "a whole number" if key in _INT_KEYS else "a number of seconds"
        raise ConfigError(
            f"{path}: line {_line_of(text, key)}: {key} = {value!r} is not {kind}; fix the value"
        ) from None
    if number < 0:
        raise ConfigError(f"{path}: line {_line_of(text, key)}: {key} must be 0 or more")
    return number


def _db_pool_size(path: Path, text: str, name: str, raw: str) -> int | None:
    """Return the ``pool_size=`` of one ``[databases]`` entry, or None when it has none."""
    for token in raw.split():
        key, _, value = token.partition("=")
        if key.strip() == "pool_size":
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(
                    f"{path}: line {_line_of(text, name)}: database {name!r}: pool_size="
                    f"{value!r} is not a whole number >= 1; fix it"
                )
            return int(value)
    return None


def _line_of(text: str, key: str) -> int | str:
    """Return the 1-based line where `key` is assigned, or '?' (configparser keeps no lines)."""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=", re.I)
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return "?"
