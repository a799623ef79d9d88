"""The connection budget: does the whole fleet's pool fit the server's connection slots?

The postmortem's outage in one line: every replica's pool was allowed more connections
than the server had. `check_budget` reads the server once (`poolwarden.probe.snapshot`)
and returns a `BudgetVerdict`: ``replicas x workers x pool_max`` against what is left of
the tightest limit (the server's usable slots, the role's or the database's CONNECTION
LIMIT) after the other applications' connections and a headroom. `decide_budget` is the
pure arithmetic behind it. ``guard(pool, budget=Budget(...))`` calls `apply_budget`, which
refuses to start (`BudgetExceeded`) or caps the guard's limit at the share that fits.
Reference and field table: docs/guard-budget.md.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

from poolwarden._dsn import normalize_dsn, redact_dsn
from poolwarden.errors import BudgetExceeded, ConfigError
from poolwarden.guard._factory import _kind
from poolwarden.guard._runtime import GuardOptions
from poolwarden.probe.postgres import PROBE_APPLICATION_NAME, ServerSnapshot, snapshot

__all__ = [
    "Budget",
    "BudgetVerdict",
    "ServerSlots",
    "apply_budget",
    "check_budget",
    "decide_budget",
]

_log = logging.getLogger("poolwarden.guard")

BudgetMode = Literal["refuse", "clamp"]
Binding = Literal["server", "role", "database"]

# Slots left free under every limit for people and tools that are not the fleet: a
# monitoring agent (postgres_exporter), a migration job (it runs as the app's role, in the
# app's database) and a human with psql. superuser_reserved_connections does not cover
# them: only superusers may use those slots.
DEFAULT_HEADROOM = 3


@dataclass(frozen=True, slots=True)
class Budget:
    """The fleet a pool belongs to: ``guard(pool, name=..., budget=Budget(...))``.

    `service` is the application_name the fleet's connections carry; `replicas` x
    `workers` processes each open the guarded pool. `mode` "refuse" raises
    `BudgetExceeded` when the fleet does not fit; "clamp" caps each process at its share.
    """

    dsn: str
    service: str
    replicas: int = 1
    workers: int = 1
    mode: BudgetMode = "refuse"
    headroom: int = DEFAULT_HEADROOM
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        _check_fleet(self.service, self.replicas, self.workers, 1, self.headroom, self.mode)

    def __repr__(self) -> str:
        # The DSN may hold a password; a repr ends up in logs and tracebacks.
        return (
            f"Budget(dsn={redact_dsn(self.dsn)!r}, service={self.service!r}, "
            f"replicas={self.replicas}, workers={self.workers}, mode={self.mode!r}, "
            f"headroom={self.headroom})"
        )


@dataclass(frozen=True, slots=True)
class ServerSlots:
    """What a server offers one service, as read by the probe (or written by hand in tests).

    Connection counts never include poolwarden's own probe sessions, nor `service`'s own
    connections (those are part of the fleet's demand). `superuser` exempts the role from
    the role and database limits, as PostgreSQL does.
    """

    target: str
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    role: str
    database: str
    superuser: bool = False
    others: int = 0
    role_limit: int | None = None
    role_current: int = 0
    role_others: int = 0
    database_limit: int | None = None
    database_current: int = 0
    database_others: int = 0
    other_applications: tuple[tuple[str, int], ...] = ()

    @property
    def usable_connections(self) -> int:
        """Slots an ordinary role may take: max_connections minus both reserves."""
        return (
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections
        )

    @classmethod
    def from_snapshot(
        cls, snap: ServerSnapshot, service: str, *, role: str, database: str, superuser: bool
    ) -> ServerSlots:
        """Count, in `snap`, the connections that compete with `service` for each limit."""
        # Probe sessions last milliseconds (ours, or another replica's starting up at the
        # same time); counting them would make the verdict depend on timing.
        clients = [g for g in snap.groups if g.application_name != PROBE_APPLICATION_NAME]
        others = [g for g in clients if g.application_name != service]
        by_app: dict[str, int] = {}
        for group in others:
            by_app[group.application_name] = by_app.get(group.application_name, 0) + group.count
        role_limit = next((lim.limit for lim in snap.role_limits if lim.name == role), None)
        db_limit = next((lim.limit for lim in snap.database_limits if lim.name == database), None)
        return cls(
            target=snap.target,
            max_connections=snap.max_connections,
            superuser_reserved_connections=snap.superuser_reserved_connections,
            reserved_connections=snap.reserved_connections,
            role=role, database=database, superuser=superuser,
            others=sum(g.count for g in others),
            role_limit=role_limit,
            role_current=sum(g.count for g in clients if g.usename == role),
            role_others=sum(g.count for g in others if g.usename == role),
            database_limit=db_limit,
            database_current=sum(g.count for g in clients if g.datname == database),
            database_others=sum(g.count for g in others if g.datname == database),
            other_applications=tuple(sorted(by_app.items(), key=lambda kv: (-kv[1], kv[0]))),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """The fleet's demand against the server's slots; every field always present.

    `available` is the smallest of the server's, the role's and the database's room (the
    last two only where a CONNECTION LIMIT is set and the role is no superuser); `binding`
    names which one it is. Field reference: docs/guard-budget.md.
    """

    service: str
    target: str
    mode: BudgetMode
    replicas: int
    workers: int
    pool_max: int
    demand: int
    headroom: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    usable_connections: int
    others: int
    other_applications: tuple[tuple[str, int], ...]
    role: str
    superuser: bool
    role_limit: int | None
    role_current: int
    role_others: int
    database: str
    database_limit: int | None
    database_current: int
    database_others: int
    binding: Binding
    available: int
    ok: bool
    per_process_max: int

    @property
    def processes(self) -> int:
        """The fleet's processes that each open the pool: replicas x workers."""
        return self.replicas * self.workers

    def explain(self) -> str:
        """Return the arithmetic, and the remedy when it does not fit, in one line."""
        head = (
            f"budget for {self.service!r}: {_n(self.replicas, 'replica')} x "
            f"{_n(self.workers, 'worker')} x pool {self.pool_max} = "
            f"{_n(self.demand, 'connection')}"
        )
        if self.ok:
            return f"{head} fit: {self._room()}"
        return f"{head}, but {self._room()}; {self._remedy()}"

    def _room(self) -> str:
        if self.binding == "role":
            cap = f"role {self.role!r} has CONNECTION LIMIT {self.role_limit}"
            others = self.role_others
        elif self.binding == "database":
            cap = f"database {self.database!r} has CONNECTION LIMIT {self.database_limit}"
            others = self.database_others
        else:
            cap, others = f"the server has {self.usable_connections} usable", self.others
        return (
            f"{cap} - {others} held by other applications - {self.headroom} headroom = "
            f"{self.available} available"
        )

    def _remedy(self) -> str:
        raise_it = self._raise_limit()
        share = self.per_process_max
        if share >= 1 and self.mode == "clamp":
            return f"capping each process at {share}; lower pool_max to {share} or {raise_it}"
        if share >= 1:
            return f"lower pool_max to {share} or {raise_it}"
        if self.available >= 1:
            return (
                f"not even pool 1 fits {self.processes} processes: run at most "
                f"{self.available} (replicas x workers) or {raise_it}"
            )
        others = {"role": self.role_others, "database": self.database_others}.get(
            self.binding, self.others
        )
        free = "free connections held by other applications" if others else "lower headroom"
        return f"nothing is left for it: {free} or {raise_it}"

    def _raise_limit(self) -> str:
        """Name the limit to raise and the value that would make the fleet fit."""
        if self.binding == "role":
            need = self.demand + self.role_others + self.headroom
            return f"raise the CONNECTION LIMIT of role {self.role!r} to {need}"
        if self.binding == "database":
            need = self.demand + self.database_others + self.headroom
            return f"raise the CONNECTION LIMIT of database {self.database!r} to {need}"
        reserved = self.superuser_reserved_connections + self.reserved_connections
        return f"raise max_connections to {self.demand + self.others + self.headroom + reserved}"


def decide_budget(
    slots: ServerSlots,
    *,
    service: str,
    replicas: int,
    workers: int,
    pool_max: int,
    headroom: int = DEFAULT_HEADROOM,
    mode: BudgetMode = "refuse",
) -> BudgetVerdict:
    """Judge whether ``replicas x workers x pool_max`` fits `slots`; no I/O."""
    _check_fleet(service, replicas, workers, pool_max, headroom, mode)
    rooms: list[tuple[Binding, int]] = [
        ("server", slots.usable_connections - slots.others - headroom)
    ]
    # PostgreSQL skips both CONNECTION LIMIT checks for superusers (postinit.c).
    if slots.role_limit is not None and not slots.superuser:
        rooms.append(("role", slots.role_limit - slots.role_others - headroom))
    if slots.database_limit is not None and not slots.superuser:
        rooms.append(("database", slots.database_limit - slots.database_others - headroom))
    # min() keeps the first of equals: a role or database limit is named only when it is
    # strictly tighter than the server.
    binding, available = min(rooms, key=lambda room: room[1])
    processes = replicas * workers
    demand = processes * pool_max
    return BudgetVerdict(
        service=service, target=slots.target, mode=mode, replicas=replicas, workers=workers,
        pool_max=pool_max, demand=demand, headroom=headroom,
        max_connections=slots.max_connections,
        superuser_reserved_connections=slots.superuser_reserved_connections,
        reserved_connections=slots.reserved_connections,
        usable_connections=slots.usable_connections,
        others=slots.others, other_applications=slots.other_applications,
        role=slots.role, superuser=slots.superuser, role_limit=slots.role_limit,
        role_current=slots.role_current, role_others=slots.role_others,
        database=slots.database, database_limit=slots.database_limit,
        database_current=slots.database_current, database_others=slots.database_others,
        binding=binding, available=available, ok=demand <= available,
        per_process_max=max(available, 0) // processes,
    )  # fmt: skip


def check_budget(
    dsn: str,
    *,
    service: str,
    replicas: int = 1,
    workers: int = 1,
    pool_max: int,
    mode: BudgetMode = "refuse",
    headroom: int = DEFAULT_HEADROOM,
    connect_timeout: float = 5.0,
) -> BudgetVerdict:
    """Read the server at `dsn` and judge whether the fleet's pools fit its slots.

    Opens one short session (the snapshot, which also tells the role, the database and
    whether the role is a superuser) and closes it. Raises the probe's
    `ProbeError` subclasses when the server cannot be read, `ConfigError` on bad input.
    """
    _check_fleet(service, replicas, workers, pool_max, headroom, mode)
    dsn = normalize_dsn(dsn, origin=f"budget for {service!r}")
    snap = snapshot(dsn, connect_timeout=connect_timeout)
    slots = ServerSlots.from_snapshot(
        snap, service, role=snap.session_user, database=snap.database, superuser=snap.superuser
    )
    return decide_budget(
        slots, service=service, replicas=replicas, workers=workers, pool_max=pool_max,
        headroom=headroom, mode=mode,
    )  # fmt: skip


def apply_budget(
    budget: Budget, pool: Any, name: str | None, options: GuardOptions
) -> GuardOptions:
    """Check `budget` for `pool`; return `options` unchanged, capped, or raise.

    The pool's max size (capped by ``options.limit``, which the guard never exceeds) is
    what each process may open. When the fleet fits, nothing is logged. Mode "refuse"
    raises `BudgetExceeded` with the arithmetic; "clamp" logs one warning and returns
    options with ``budget_cap`` set, or raises when not even one connection per process
    fits.
    """
    pool_max = _pool_max(pool)
    if options.limit is not None and options.limit >= 1:
        pool_max = min(pool_max, options.limit)
    verdict = check_budget(
        budget.dsn, service=budget.service, replicas=budget.replicas, workers=budget.workers,
        pool_max=pool_max, mode=budget.mode, headroom=budget.headroom,
        connect_timeout=budget.connect_timeout,
    )  # fmt: skip
    if verdict.ok:
        return options
    if budget.mode == "refuse" or verdict.per_process_max < 1:
        raise BudgetExceeded(verdict.explain(), verdict=verdict)
    cap = verdict.per_process_max
    note = ""
    minimum = _pool_min(pool)
    if minimum > cap:
        # The guard bounds connections in use, not the ones a pool opens on its own.
        note = f"; the pool still opens min_size={minimum} connections: set min_size to {cap}"
    _log.warning("pool %r: %s%s", name or budget.service, verdict.explain(), note)
    return dataclasses.replace(options, budget_cap=cap)


def _pool_max(pool: Any) -> int:
    """Read the most connections `pool` may open, without importing its library."""
    kind = _kind(pool)
    if kind == "psycopg":
        return int(pool.max_size)
    if kind == "asyncpg":
        return int(pool.get_max_size())
    if kind == "sqlalchemy":
        sa_pool = pool.sync_engine.pool if hasattr(pool, "sync_engine") else pool.pool
        size, overflow = getattr(sa_pool, "size", None), getattr(sa_pool, "_max_overflow", None)
        if not callable(size) or not isinstance(overflow, int):
            raise ConfigError(
                f"budget: a {type(sa_pool).__name__} has no fixed size to budget; use the "
                "default QueuePool (pool_size=, max_overflow=) with a budget"
            )
        if overflow < 0:
            raise ConfigError(
                "budget: max_overflow=-1 lets the engine open unlimited connections; "
                "set max_overflow to a number to use a budget"
            )
        return int(size()) + overflow
    raise ConfigError(
        f"budget: cannot read the max size of a {type(pool).__module__}."
        f"{type(pool).__qualname__}; pass a psycopg_pool pool, a SQLAlchemy engine or an "
        "asyncpg pool"
    )


def _pool_min(pool: Any) -> int:
    """Return how many connections `pool` keeps open even when idle (0 when it starts empty)."""
    kind = _kind(pool)
    if kind == "psycopg":
        return int(pool.min_size)
    if kind == "asyncpg":
        return int(pool.get_min_size())
    return 0  # SQLAlchemy's QueuePool opens connections only on demand


def _check_fleet(
    service: str, replicas: int, workers: int, pool_max: int, headroom: int, mode: str
) -> None:
    """Reject a fleet description that cannot be budgeted, naming the field."""
    if not service:
        raise ConfigError(
            "budget: service= is required; it is the application_name the fleet's "
            "connections carry (set it in the pool's DSN too)"
        )
    for field, value in (("replicas", replicas), ("workers", workers), ("pool_max", pool_max)):
        if value < 1:
            raise ConfigError(f"budget for {service!r}: {field}={value} must be at least 1")
    if headroom < 0:
        raise ConfigError(f"budget for {service!r}: headroom={headroom} must be 0 or more")
    if mode not in ("refuse", "clamp"):
        raise ConfigError(f"budget for {service!r}: mode={mode!r} is not 'refuse' or 'clamp'")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
