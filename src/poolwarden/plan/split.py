"""Split the fleet's server-side connection budget across the topology's services.

`split_budget(topology, server_active=..., usable=...)` is pure. Each service gets a
per-process pool max so that ``sum(replicas x processes x max)`` stays within the usable
slots minus the other clients and a headroom, and a guard ``limit`` per process so that
the fleet's connections busy at once add up to about `server_active` (the size the
server runs best at, `CapacityResult.pick`). Both are shared in proportion to each
service's current demand: ``replicas x processes x`` its current pool max.
"""

from __future__ import annotations

from dataclasses import dataclass

from poolwarden.errors import ConfigError
from poolwarden.guard.budget import DEFAULT_HEADROOM
from poolwarden.plan.topology import Topology

__all__ = ["BudgetSplit", "ServiceShare", "split_budget"]


@dataclass(frozen=True, slots=True)
class ServiceShare:
    """One service's share of the budget; every field always present.

    `processes` is the fleet's processes (replicas x processes per replica), each with
    one pool; `current_max` is its pool max today (the weight). `pool_max` and `limit`
    are the recommended per-process pool max and guard limit; `connections` and
    `active` are them times `processes`.
    """

    service: str
    replicas: int
    processes_per_replica: int
    processes: int
    current_max: int
    pool_max: int
    limit: int
    connections: int
    active: int

    def explain(self) -> str:
        """Return the service's arithmetic in one line."""
        return (
            f"{self.service!r}: {_n(self.replicas, 'replica')} x "
            f"{_n(self.processes_per_replica, 'process', 'processes')} = "
            f"{self.processes}; pool max {self.current_max} -> {self.pool_max} "
            f"({self.processes} x {self.pool_max} = {_n(self.connections, 'connection')}), "
            f"guard limit {self.limit} ({self.processes} x {self.limit} = {self.active} active)"
        )


@dataclass(frozen=True, slots=True)
class BudgetSplit:
    """The fleet's budget and how it is shared; every field always present.

    `available` is ``usable - others - headroom``: what the services' pools may open
    together; `connections` (at most `available`) is what the recommended pool maxes
    open. `server_active` is the target of busy connections; `active` is what the
    recommended guard limits allow (above the target only when even one per process
    is more).
    """

    usable: int
    others: int
    headroom: int
    available: int
    server_active: int
    processes: int
    connections: int
    active: int
    services: tuple[ServiceShare, ...]

    def explain(self) -> str:
        """Return the budget in one line, then one line per service."""
        head = (
            f"budget split: {self.usable} usable - {self.others} held by other clients - "
            f"{self.headroom} headroom = {self.available} available; the pools take "
            f"{self.connections}, the guards let {self.active} run at once "
            f"(the server runs best at {self.server_active})"
        )
        return "\n".join([head, *(s.explain() for s in self.services)])


def split_budget(
    topology: Topology, *, server_active: int, usable: int, headroom: int = DEFAULT_HEADROOM
) -> BudgetSplit:
    """Share `usable` server slots and `server_active` busy connections across the services.

    Raises `ConfigError` (one line) when the topology has no service, or when the fleet
    cannot get even one connection per process.
    """
    if server_active < 1 or usable < 0 or headroom < 0:
        raise ConfigError(
            f"budget split: server_active={server_active} must be at least 1, "
            f"usable={usable} and headroom={headroom} at least 0"
        )
    services = topology.services
    if not services:
        raise ConfigError("budget split: the topology has no services; add one under services:")
    others = sum(c.connections for c in topology.other_clients)
    available = usable - others - headroom
    counts = [s.processes_total for s in services]
    # A psycopg pool with min_size 0 and no max_size has max 0; it still needs a share.
    weights = [max(1, s.limits.max_connections) for s in services]
    need = sum(counts)
    if need > available:
        raise ConfigError(
            f"budget split: {need} processes need at least one connection each, but "
            f"{usable} usable - {others} held by other clients - {headroom} headroom = "
            f"{available} available; run fewer processes or raise max_connections to "
            f"{usable + need - available}"
        )
    maxes = _apportion(counts, weights, available)
    limits = [
        min(a, m) for a, m in zip(_apportion(counts, weights, server_active), maxes, strict=True)
    ]
    shares = tuple(
        ServiceShare(
            service=s.name, replicas=s.replicas, processes_per_replica=s.processes,
            processes=p, current_max=w, pool_max=m, limit=lim, connections=p * m,
            active=p * lim,
        )
        for s, p, w, m, lim in zip(services, counts, weights, maxes, limits, strict=True)
    )  # fmt: skip
    return BudgetSplit(
        usable=usable, others=others, headroom=headroom, available=available,
        server_active=server_active, processes=need,
        connections=sum(s.connections for s in shares), active=sum(s.active for s in shares),
        services=shares,
    )  # fmt: skip


def _apportion(counts: list[int], weights: list[int], total: int) -> list[int]:
    """Return a per-process value (at least 1) for each group, in proportion to `weights`.

    Group i has ``counts[i]`` processes; ``sum(counts[i] * value[i])`` stays within
    `total` whenever ``sum(counts) <= total`` (else every value is 1). Each group's share
    of `total` follows ``counts[i] * weights[i]``; what rounding down leaves is handed
    out one step at a time to the group furthest below its share, never past that share
    rounded up.
    """
    demand = _used(counts, weights)
    values = [max(1, total * w // demand) for w in weights]
    # Raising small shares to 1 can overshoot: take back from the most generous first.
    while _used(counts, values) > total:
        over = [i for i, v in enumerate(values) if v > 1]
        if not over:
            break
        i = max(over, key=lambda j: (values[j] / weights[j], -j))
        values[i] -= 1
    left = total - _used(counts, values)
    # No group is raised past its exact share rounded up: the weights stay the weights.
    ceilings = [-(-total * w // demand) for w in weights]
    # Each step spends at least one slot, so at most `total` steps.
    while left > 0:
        fits = [i for i, c in enumerate(counts) if c <= left and values[i] < ceilings[i]]
        if not fits:
            break
        i = min(fits, key=lambda j: (values[j] / weights[j], j))
        values[i] += 1
        left -= counts[i]
    return values


def _used(counts: list[int], values: list[int]) -> int:
    return sum(c * v for c, v in zip(counts, values, strict=True))


def _n(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"
