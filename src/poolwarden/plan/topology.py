"""The topology a deployment runs: the server, PgBouncer, the services and their pools.

`load_topology` reads the YAML file described in ``docs/plan.md`` and turns every problem
into one `ConfigError` line naming the file, the field and the fix. The server's settings
are either declared in the file or read live (`read_server_settings`); PgBouncer's come
from a ``pgbouncer.ini``, an admin DSN or the file. Each service's pool knobs take their
library's defaults when omitted; `ServiceSpec.limits` gives them in one shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from poolwarden._config_errors import (
    INVALID_DSN,
    describe_value,
    invalid,
    translate_validation_error,
)
from poolwarden.config import NAME_PATTERN, _dsn_problem, _parse_yaml, _read
from poolwarden.errors import ConfigError
from poolwarden.plan._sources import (
    PgBouncerSettings,
    ServerSettings,
    parse_duration_ms,
    parse_pgbouncer_ini,
    parse_size_kb,
)

__all__ = [
    "GuardSpec",
    "OtherClient",
    "PgBouncerSettings",
    "PgBouncerSpec",
    "PoolLimits",
    "PoolSpec",
    "ServerSettings",
    "ServerSpec",
    "ServiceSpec",
    "Topology",
    "load_topology",
]

Library = Literal["psycopg", "sqlalchemy", "asyncpg"]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _null_as_empty(value: object) -> object:
    return {} if value is None else value


def _null_as_empty_list(value: object) -> object:
    return [] if value is None else value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def _check_dsn(dsn: str | None) -> str | None:
    problem = _dsn_problem(dsn) if dsn is not None else None
    if problem:
        raise invalid(problem, kind=INVALID_DSN)
    return dsn


class DeclaredSettings(_Frozen):
    """Server settings written in the file: numbers in PostgreSQL's base unit, or '30s', '4MB'."""

    max_connections: int = Field(default=100, ge=1)
    superuser_reserved_connections: int = Field(default=3, ge=0)
    reserved_connections: int = Field(default=0, ge=0)
    statement_timeout: int | str = 0
    idle_in_transaction_session_timeout: int | str = 0
    idle_session_timeout: int | str = 0
    work_mem: int | str = "4MB"
    shared_buffers: int | str = "128MB"
    maintenance_work_mem: int | str = "64MB"

    @field_validator("statement_timeout", "idle_in_transaction_session_timeout",
                     "idle_session_timeout")  # fmt: skip
    @classmethod
    def _duration(cls, value: int | str) -> int | str:
        try:
            parse_duration_ms(value)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        return value

    @field_validator("work_mem", "shared_buffers", "maintenance_work_mem")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        try:
            parse_size_kb(value)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        return value


class ServerSpec(_Frozen):
    """The PostgreSQL server: a DSN to read it live, or its declared settings."""

    dsn: str | None = None
    settings: Annotated[DeclaredSettings, BeforeValidator(_null_as_empty)] = Field(
        default_factory=DeclaredSettings
    )
    memory_gb: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    cores: int | None = Field(default=None, ge=1)
    best_pool_size: int | None = Field(default=None, ge=1)  # measured by `poolwarden plan`

    @field_validator("dsn")
    @classmethod
    def _valid_dsn(cls, dsn: str | None) -> str | None:
        return _check_dsn(dsn)

    def declared(self) -> ServerSettings:
        """Return the declared settings in base units (ms, kB)."""
        s = self.settings
        return ServerSettings(
            source="declared",
            max_connections=s.max_connections,
            superuser_reserved_connections=s.superuser_reserved_connections,
            reserved_connections=s.reserved_connections,
            statement_timeout_ms=parse_duration_ms(s.statement_timeout),
            idle_in_transaction_session_timeout_ms=parse_duration_ms(
                s.idle_in_transaction_session_timeout
            ),
            idle_session_timeout_ms=parse_duration_ms(s.idle_session_timeout),
            work_mem_kb=parse_size_kb(s.work_mem),
            shared_buffers_kb=parse_size_kb(s.shared_buffers),
            maintenance_work_mem_kb=parse_size_kb(s.maintenance_work_mem),
            memory_gb=self.memory_gb,
            cores=self.cores,
        )


class PgBouncerSpec(_Frozen):
    """PgBouncer in front of the server: a pgbouncer.ini, an admin DSN or declared settings.

    `users` is how many roles connect through each database entry: the (database, user)
    pairs are ``len(databases) x users``.
    """

    ini: str | None = None
    admin_dsn: str | None = None
    users: int = Field(default=1, ge=1)
    settings: Annotated[PgBouncerSettings, BeforeValidator(_null_as_empty)] = Field(
        default_factory=PgBouncerSettings
    )

    @field_validator("admin_dsn")
    @classmethod
    def _valid_dsn(cls, dsn: str | None) -> str | None:
        return _check_dsn(dsn)

    @model_validator(mode="after")
    def _one_source(self) -> PgBouncerSpec:
        if self.ini is not None and self.admin_dsn is not None:
            raise invalid("give either ini or admin_dsn, not both; keep the one you trust")
        return self


class PoolSpec(_Frozen):
    """A pool's knobs; which ones apply depends on the service's library (see `_KNOBS`)."""

    min_size: int | None = Field(default=None, ge=0)
    max_size: int | None = Field(default=None, ge=1)
    timeout: Seconds | None = None
    max_waiting: int | None = Field(default=None, ge=0)
    max_lifetime: Seconds | None = None
    max_idle: Seconds | None = None
    pool_size: int | None = Field(default=None, ge=1)
    max_overflow: int | None = Field(default=None, ge=-1)
    pool_timeout: Seconds | None = None
    pool_recycle: float | None = Field(default=None, ge=-1, allow_inf_nan=False)
    acquire_timeout: Seconds | None = None
    max_inactive_connection_lifetime: Seconds | None = None


_KNOBS: dict[str, tuple[str, ...]] = {
    "psycopg": ("min_size", "max_size", "timeout", "max_waiting", "max_lifetime", "max_idle"),
    "sqlalchemy": ("pool_size", "max_overflow", "pool_timeout", "pool_recycle"),
    "asyncpg": ("min_size", "max_size", "acquire_timeout", "max_inactive_connection_lifetime"),
}


class GuardSpec(_Frozen):
    """``poolwarden.guard`` around the pool: in-flight limit, bounded queue, wait deadline."""

    limit: int | None = Field(default=None, ge=1)
    max_waiting: int = Field(default=100, ge=0)
    timeout: Seconds = 1.0


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """One process's pool in library-neutral terms, defaults applied (REFERENCE §2).

    `max_connections` is what the process may open (max plus overflow, capped by the
    guard's limit); `acquire_timeout` None waits forever; `max_waiting` None has no bound;
    `idle_bound` is how long an idle connection may stay open (None: forever). The
    `*_knob` fields name the setting to change.
    """

    library: str
    min_size: int
    max_connections: int
    unlimited: bool
    acquire_timeout: float | None
    max_waiting: int | None
    idle_bound: float | None
    max_knob: str
    timeout_knob: str
    idle_knob: str


class ServiceSpec(_Frozen):
    """A service: `replicas` x `processes` each open one pool of `library`."""

    name: Name
    replicas: int = Field(default=1, ge=1)
    processes: int = Field(default=1, ge=1)
    library: Library
    pool: Annotated[PoolSpec, BeforeValidator(_null_as_empty)] = Field(default_factory=PoolSpec)
    guard: GuardSpec | None = None
    request_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    through_pgbouncer: bool = False

    @model_validator(mode="after")
    def _knobs_match_library(self) -> ServiceSpec:
        wrong = sorted(self.pool.model_fields_set - set(_KNOBS[self.library]))
        if wrong:
            raise invalid(
                f"pool.{wrong[0]} is not a {self.library} pool setting; "
                f"{self.library} takes {', '.join(_KNOBS[self.library])}"
            )
        return self

    @property
    def processes_total(self) -> int:
        """Processes across the fleet: replicas x processes."""
        return self.replicas * self.processes

    @property
    def limits(self) -> PoolLimits:
        """Return the pool's effective limits with library and guard defaults applied."""
        limits = _LIMITS[self.library](self.pool)
        if self.guard is None:
            return limits
        g = self.guard
        cap = limits.max_connections if g.limit is None else min(g.limit, limits.max_connections)
        wait = (
            g.timeout if limits.acquire_timeout is None else min(g.timeout, limits.acquire_timeout)
        )
        return PoolLimits(
            library=limits.library, min_size=limits.min_size, max_connections=cap,
            unlimited=limits.unlimited and g.limit is None, acquire_timeout=wait,
            max_waiting=g.max_waiting or None, idle_bound=limits.idle_bound,
            max_knob=limits.max_knob, timeout_knob="guard timeout", idle_knob=limits.idle_knob,
        )  # fmt: skip


def _psycopg(p: PoolSpec) -> PoolLimits:
    min_size = 4 if p.min_size is None else p.min_size
    return PoolLimits(
        library="psycopg", min_size=min_size,
        max_connections=max(min_size, p.max_size or min_size), unlimited=False,
        acquire_timeout=30.0 if p.timeout is None else p.timeout,
        max_waiting=p.max_waiting or None,
        idle_bound=3600.0 if p.max_lifetime is None else p.max_lifetime,
        max_knob="max_size", timeout_knob="timeout", idle_knob="max_lifetime",
    )  # fmt: skip


def _sqlalchemy(p: PoolSpec) -> PoolLimits:
    size = 5 if p.pool_size is None else p.pool_size
    overflow = 10 if p.max_overflow is None else p.max_overflow
    recycle = -1.0 if p.pool_recycle is None else p.pool_recycle
    return PoolLimits(
        library="sqlalchemy", min_size=0, max_connections=size + max(overflow, 0),
        unlimited=overflow < 0, acquire_timeout=30.0 if p.pool_timeout is None else p.pool_timeout,
        max_waiting=None, idle_bound=recycle if recycle > 0 else None,
        max_knob="pool_size + max_overflow", timeout_knob="pool_timeout", idle_knob="pool_recycle",
    )  # fmt: skip


def _asyncpg(p: PoolSpec) -> PoolLimits:
    min_size = 10 if p.min_size is None else p.min_size
    inactive = p.max_inactive_connection_lifetime
    inactive = 300.0 if inactive is None else inactive
    return PoolLimits(
        library="asyncpg", min_size=min_size,
        max_connections=max(min_size, 10 if p.max_size is None else p.max_size), unlimited=False,
        acquire_timeout=p.acquire_timeout, max_waiting=None,
        idle_bound=inactive if inactive > 0 else None, max_knob="max_size",
        timeout_knob="acquire(timeout=...)", idle_knob="max_inactive_connection_lifetime",
    )  # fmt: skip


_LIMITS = {"psycopg": _psycopg, "sqlalchemy": _sqlalchemy, "asyncpg": _asyncpg}


class OtherClient(_Frozen):
    """Connections that are not a pooled service: cron jobs, admins, replication, exporters."""

    name: Name
    connections: int = Field(ge=0)


class Topology(_Frozen):
    """The whole topology file; see docs/plan.md."""

    server: Annotated[ServerSpec, BeforeValidator(_null_as_empty)] = Field(
        default_factory=ServerSpec
    )
    pgbouncer: PgBouncerSpec | None = None
    services: Annotated[list[ServiceSpec], BeforeValidator(_null_as_empty_list)] = Field(
        default_factory=list
    )
    other_clients: Annotated[list[OtherClient], BeforeValidator(_null_as_empty_list)] = Field(
        default_factory=list
    )
    admin_headroom: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _check_names(self) -> Topology:
        seen: set[str] = set()
        for index, service in enumerate(self.services):
            if service.name in seen:
                raise invalid(
                    f"duplicate service name {service.name!r}; give each service a unique name",
                    path=f"services[{index}].name",
                )
            seen.add(service.name)
            if service.through_pgbouncer and self.pgbouncer is None:
                raise invalid(
                    "through_pgbouncer is true but the topology has no pgbouncer section; "
                    "add one (ini, admin_dsn or settings) or set through_pgbouncer: false",
                    path=f"services[{index}].through_pgbouncer",
                )
        return self


_NUMBER_ERRORS = {"int_parsing": "a whole number", "int_type": "a whole number",
                  "int_from_float": "a whole number", "float_parsing": "a number",
                  "float_type": "a number", "bool_parsing": "true or false",
                  "bool_type": "true or false", "literal_error": "one of the listed values"}  # fmt: skip


def _translate(where: str, exc: ValidationError, data: object) -> ConfigError:
    """Return the one-line error for `exc`, with number and choice errors said plainly."""
    first = exc.errors(include_url=False)[0]
    expected = _NUMBER_ERRORS.get(first["type"])
    if expected is None:
        error = translate_validation_error(where, exc, data, Topology)
        return type(error)(str(error).replace("docs/config.md", "docs/plan.md"))
    path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"])
    path = path.replace(".[", "[")
    choices = (first.get("ctx") or {}).get("expected")
    fix = f"write {choices}" if choices else f"write {expected}"
    got = describe_value(first["input"])
    return ConfigError(f"{where}: {path}: expected {expected}, got {got}; {fix}")


def load_topology(path: str | os.PathLike[str], *, dsn: str | None = None) -> Topology:
    """Read and validate the topology at `path`; `dsn` overrides ``server.dsn``.

    A ``pgbouncer.ini`` (relative to the file) is read here. Every problem raises
    `ConfigError` (`DsnError` for a DSN) with one line naming the file, field and fix.
    """
    where = os.fspath(path)
    try:
        text = _read(where)
    except ConfigError as exc:
        # _read's advice is about poolwarden.yaml and -c; this file is passed by position.
        raise ConfigError(
            str(exc).split(";")[0] + "; pass the topology file (see docs/plan.md)"
        ) from None
    data = _parse_yaml(where, text)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: the top level is {describe_value(data)}; write a mapping with the keys "
            f"{', '.join(Topology.model_fields)}"
        )
    if dsn is not None:
        server = data.get("server")
        data["server"] = {**(server if isinstance(server, dict) else {}), "dsn": dsn}
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        raise _translate(where, exc, data) from None
    bouncer = topology.pgbouncer
    if bouncer is None or bouncer.ini is None:
        return topology
    ini = Path(where).parent / bouncer.ini
    settings = parse_pgbouncer_ini(ini, origin=f"{where}: pgbouncer.ini")
    return topology.model_copy(
        update={"pgbouncer": bouncer.model_copy(update={"settings": settings})}
    )
