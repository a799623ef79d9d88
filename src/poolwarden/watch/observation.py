"""One tick of the watch loop: what every probe returned, or why it could not.

The loop probes each configured database, PgBouncer and app target concurrently, each
bounded by its own timeout, and collects the results into one `Observation`. Measures
(`watch.measures`) and diagnosis (`watch.diagnose`) are pure functions of observations
and the time-series window; a probe that failed is present as its `ProbeError`, never
missing, so "the database is down" is data, not an absence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from poolwarden.errors import ProbeError, TooManyConnections
from poolwarden.probe.pgbouncer import PgBouncerSnapshot
from poolwarden.probe.postgres import ServerSnapshot
from poolwarden.probe.scrape import ScrapeResult

__all__ = ["Observation", "TargetInfo"]


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """An app target as configured: its name, its /metrics URL, and the database it uses."""

    name: str
    url: str
    database: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything one tick saw, keyed by the names in `poolwarden.yaml`.

    `at` is the tick's wall-clock time in epoch seconds (what the series and the rule
    engine use). A database given with `--dsn` is named ``default``.
    """

    at: float
    databases: Mapping[str, ServerSnapshot | ProbeError] = field(default_factory=dict)
    pgbouncers: Mapping[str, PgBouncerSnapshot | ProbeError] = field(default_factory=dict)
    targets: Mapping[str, ScrapeResult | ProbeError] = field(default_factory=dict)
    target_info: Mapping[str, TargetInfo] = field(default_factory=dict)

    def server(self, database: str) -> ServerSnapshot | None:
        """Return the database's snapshot, or None when its probe failed."""
        result = self.databases.get(database)
        return result if isinstance(result, ServerSnapshot) else None

    def server_full(self, database: str) -> bool:
        """True when the probe itself was refused with SQLSTATE 53300: proven full."""
        return isinstance(self.databases.get(database), TooManyConnections)

    def scrape(self, target: str) -> ScrapeResult | None:
        """Return the target's scrape, or None when it failed."""
        result = self.targets.get(target)
        return result if isinstance(result, ScrapeResult) else None

    def pgbouncer(self, name: str) -> PgBouncerSnapshot | None:
        """Return the PgBouncer's snapshot, or None when its probe failed."""
        result = self.pgbouncers.get(name)
        return result if isinstance(result, PgBouncerSnapshot) else None
