"""The drill's users: a request mix over HTTP, and what each phase of the run saw.

`Traffic.request` is one user's request through the fleet's balancer: list a customer's
orders, read one, place one, or open the revenue report. A 2xx is served; a 503 is the
guard shedding load (rejected: fast, with Retry-After); anything else - another status,
a refused connection, the client's timeout - is a failed request. `Ledger` files every
outcome under the phase its scheduled start fell in, with a latency histogram per phase,
and keeps a per-second series for the live display.
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from poolwarden.drill._fleet import Fleet
from poolwarden.drill.load import REJECTED, LatencyHistogram, Outcome


class Rejected(Exception):
    """The service answered 503: load shed on purpose, the client may retry later."""


class ServerError(Exception):
    """The service answered with an error status other than 503."""


class NoReplica(Exception):
    """The balancer had no replica up to send the request to."""


def classify(exc: BaseException) -> str:
    """Map a request's exception to the load generator's outcome."""
    return REJECTED if isinstance(exc, Rejected) else "failed"


# (weight, method, path template); the mix of an orders API's day
_MIX = (
    (40, "GET", "/orders?customer_id={customer}&limit=20"),
    (30, "GET", "/orders/{order}"),
    (25, "POST", "/orders"),
    (5, "GET", "/reports/revenue?days=30"),
)
_CUM_WEIGHTS = tuple(itertools.accumulate(weight for weight, _, _ in _MIX))


class Traffic:
    """Requests from `users` users spread over the fleet; remembers who saw a failure."""

    def __init__(
        self, fleet: Fleet, *, users: int, customers: int, orders: int, timeout: float
    ) -> None:
        self.fleet, self.users = fleet, users
        self._customers, self._orders = customers, orders
        self._random = random.Random(6)  # noqa: S311 - a load mix, not a secret
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200),
        )
        self.affected: set[int] = set()
        self.seen: set[int] = set()

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def request(self) -> None:
        """Send one request from a random user; raise unless it was served."""
        rnd = self._random
        user = rnd.randrange(self.users)
        self.seen.add(user)
        _, method, template = rnd.choices(_MIX, cum_weights=_CUM_WEIGHTS)[0]
        try:
            base = self.fleet.pick()
            if base is None:
                raise NoReplica("no replica up")
            path = template.format(
                customer=1 + rnd.randrange(self._customers), order=1 + rnd.randrange(self._orders)
            )
            body = None
            if method == "POST":
                items = [{"sku": f"sku-{rnd.randrange(500)}", "qty": 1 + rnd.randrange(3),
                          "price_cents": 100 + rnd.randrange(9900)} for _ in range(1 + rnd.randrange(3))]  # fmt: skip
                body = {"customer_id": 1 + rnd.randrange(self._customers), "items": items}
            response = await self._client.request(method, base + path, json=body)
            if response.status_code == 503:
                raise Rejected(response.headers.get("retry-after", ""))
            if response.status_code >= 400 and response.status_code != 404:
                raise ServerError(str(response.status_code))
        except BaseException:
            self.affected.add(user)
            raise


@dataclass
class PhaseTally:
    """What requests scheduled during one phase became."""

    name: str
    started: float  # monotonic
    served: int = 0
    rejected: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def offered(self) -> int:
        """Return the requests that completed one way or another."""
        return self.served + self.rejected + self.failed


class Ledger:
    """Outcomes by phase (by scheduled start) and by second (by completion)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.ended = 0.0  # monotonic; set when the arrivals stop
        self.phases: list[PhaseTally] = []
        self._starts: list[float] = []
        self.seconds: Counter[tuple[int, Outcome]] = Counter()
        self._lock = threading.Lock()

    def begin(self, name: str) -> PhaseTally:
        """Start a phase now; later arrivals are filed under it."""
        tally = PhaseTally(name, time.monotonic())
        with self._lock:
            self.phases.append(tally)
            self._starts.append(tally.started)
        return tally

    def record(self, scheduled: float, latency: float, outcome: Outcome, error: str) -> None:
        """File one outcome (the `open_loop` record hook)."""
        with self._lock:
            index = bisect.bisect_right(self._starts, scheduled) - 1
            if index < 0:
                return
            tally = self.phases[index]
            if outcome == "served":
                tally.served += 1
                tally.latency.record(latency)
            elif outcome == "rejected":
                tally.rejected += 1
            else:
                tally.failed += 1
                tally.errors[error] += 1
            self.seconds[(int(time.monotonic() - self.start), outcome)] += 1

    def last_second(self) -> tuple[int, int, int]:
        """Return (served, rejected, failed) completed in the last full second."""
        second = int(time.monotonic() - self.start) - 1
        with self._lock:
            return (
                self.seconds[(second, "served")],
                self.seconds[(second, "rejected")],
                self.seconds[(second, "failed")],
            )
