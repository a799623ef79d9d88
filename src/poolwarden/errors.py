"""The exceptions poolwarden raises, in one tree.

```
PoolwardenError                 base of everything poolwarden raises on purpose
├── ConfigError                 a config file, a field or a setting is wrong
│   ├── DsnError                a DSN that cannot be parsed
│   └── BudgetExceeded          the declared pools need more connections than the server has
├── PoolSaturated               the guard refused a connection: queue full, deadline or shed
├── ProbeError                  a target could not be read
│   ├── DatabaseUnreachable     nothing answers at the DSN's host and port
│   ├── AuthenticationFailed    the server refused the user or the password
│   ├── DatabaseNotFound        the server answers but the database does not exist
│   ├── TooManyConnections      the server refused the probe: SQLSTATE 53300, its slots are full
│   ├── TargetUnreachable       nothing accepts a connection at a /metrics URL
│   ├── TargetTimeout           a /metrics target did not answer within the deadline
│   └── TargetBadResponse       a /metrics target answered, but not 200 with Prometheus text
└── EmbeddedServerError         the embedded PostgreSQL could not be started or stopped
```

The guard's adapters raise subclasses of `PoolSaturated` that also subclass the error their
library already raises for a pool timeout (`psycopg_pool.PoolTimeout`,
`sqlalchemy.exc.TimeoutError`, `TimeoutError` for asyncpg), so existing handlers keep
working. Every message names the object, gives the numbers and says what to change. The CLI turns
these into one line on stderr and exit code 2; DSNs in messages are always redacted.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "ConfigError",
    "DatabaseNotFound",
    "DatabaseUnreachable",
    "DsnError",
    "EmbeddedServerError",
    "PoolSaturated",
    "PoolwardenError",
    "ProbeError",
    "TargetBadResponse",
    "TargetTimeout",
    "TargetUnreachable",
    "TooManyConnections",
]


class PoolwardenError(Exception):
    """Base class of every error poolwarden raises on purpose."""


class ConfigError(PoolwardenError):
    """A config file, one of its fields or a setting is wrong; the message says how to fix it."""


class DsnError(ConfigError):
    """A DSN that cannot be parsed."""


class BudgetExceeded(ConfigError):
    """The declared pools would take more connections than the server can give them."""

    def __init__(self, message: str, *, verdict: object = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class PoolSaturated(PoolwardenError):
    """The guard refused a connection: wait queue full, deadline passed, or shed."""

    def __init__(
        self,
        message: str,
        *,
        pool: str = "",
        reason: str = "",
        retry_after: float = 0.0,
        snapshot: object = None,
    ) -> None:
        super().__init__(message)
        self.pool = pool
        self.reason = reason
        self.retry_after = retry_after
        self.snapshot = snapshot


class ProbeError(PoolwardenError):
    """A target (database, PgBouncer, /metrics endpoint) could not be read."""

    def __init__(self, message: str, *, target: str = "") -> None:
        super().__init__(message)
        self.target = target


class DatabaseUnreachable(ProbeError):
    """Nothing answers at the DSN's host and port, or the connection timed out."""


class AuthenticationFailed(ProbeError):
    """The server refused the user or the password."""


class DatabaseNotFound(ProbeError):
    """The server answers but the database named in the DSN does not exist."""


class TargetUnreachable(ProbeError):
    """Nothing accepts a connection at the URL's host and port, or the name does not resolve."""


class TargetTimeout(ProbeError):
    """The target did not send its whole answer within the deadline."""

    def __init__(self, message: str, *, target: str = "", timeout: float = 0.0) -> None:
        super().__init__(message, target=target)
        self.timeout = timeout


class TargetBadResponse(ProbeError):
    """The target answered, but not with a 200 and Prometheus text of at most `max_bytes`."""

    def __init__(self, message: str, *, target: str = "", status: int | None = None) -> None:
        super().__init__(message, target=target)
        self.status = status


class TooManyConnections(ProbeError):
    """The server refused the probe's connection with SQLSTATE 53300: every slot is taken."""


class EmbeddedServerError(PoolwardenError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""
