"""Leak detection: connections held longer than a threshold, and where they were taken.

Every checkout is recorded with a cheap call site (the first frame outside poolwarden, the
pool library and asyncio: ``app/orders.py:42 in create_order``), or the full stack when
asked. A watchdog thread, started with the first checkout, reports each checkout that
outlives ``threshold`` once, with a warning, and calls ``on_leak`` (the metrics count it);
when a reported connection finally comes back, one more line says after how long. This
is HikariCP's ``leakDetectionThreshold``, for Python pools.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType, FrameType

from poolwarden.errors import ConfigError

__all__ = ["Checkout", "LeakTracker"]

_log = logging.getLogger("poolwarden.guard.leaks")

# Frames from these packages are plumbing between the user's code and the connection.
_PLUMBING = (
    "poolwarden.guard",
    "contextlib",
    "asyncio",
    "anyio",
    "psycopg",
    "psycopg_pool",
    "sqlalchemy",
    "asyncpg",
    "starlette",
    "fastapi",
    "threading",
)
# Match whole package names: a user module called ``asyncio_jobs`` is not plumbing.
_PLUMBING_PACKAGES = tuple(f"{name}." for name in _PLUMBING)


def _site_frame(skip: int) -> FrameType | None:
    """Return the first frame, ``skip`` up from the caller, outside the plumbing packages."""
    frame: FrameType | None = sys._getframe(skip + 1)
    first = frame
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module not in _PLUMBING and not module.startswith(_PLUMBING_PACKAGES):
            return frame
        frame = frame.f_back
    return first


def _format_site(code: CodeType | None, line: int) -> str:
    if code is None:
        return "<unknown>"
    return f"{code.co_filename}:{line} in {code.co_name}"


def call_site(skip: int = 1) -> str:
    """Return ``file:line in function`` of the first caller outside the plumbing packages."""
    frame = _site_frame(skip)
    return _format_site(frame.f_code, frame.f_lineno) if frame else "<unknown>"


@dataclass(slots=True, eq=False)
class Checkout:
    """One borrowed connection being watched.

    The call site is kept as a code object and a line number (no locals are held) and
    formatted only when someone reads ``site``: most checkouts are never reported.
    """

    token: int
    started: float
    code: CodeType | None
    line: int
    stack: str | None
    reported: bool = field(default=False)

    @property
    def site(self) -> str:
        """``file:line in function`` where the connection was acquired."""
        return _format_site(self.code, self.line)


class LeakTracker:
    """Watch checkouts of one pool and report those held past ``threshold`` seconds."""

    def __init__(
        self,
        pool: str,
        threshold: float,
        *,
        full_stack: bool = False,
        on_leak: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not threshold > 0:
            raise ConfigError(f"pool {pool!r}: leak_threshold={threshold} must be positive")
        self.pool = pool
        self.threshold = threshold
        self.full_stack = full_stack
        self._on_leak = on_leak
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, Checkout] = {}
        self._tokens = itertools.count()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self, skip: int = 2) -> Checkout:
        """Record a checkout made by the caller ``skip`` frames up; start the watchdog."""
        stack = "".join(traceback.format_stack(sys._getframe(skip))) if self.full_stack else None
        frame = _site_frame(skip)
        checkout = Checkout(
            next(self._tokens), self._clock(),
            frame.f_code if frame else None, frame.f_lineno if frame else 0, stack,
        )  # fmt: skip
        # A dict insert or pop is atomic under the GIL and the watchdog copies the values
        # before iterating, so the hot path takes no lock; only the first start does.
        self._open[checkout.token] = checkout
        if self._watchdog is None:
            with self._lock:
                if self._watchdog is None:
                    self._start_watchdog()
        return checkout

    def finish(self, checkout: Checkout) -> None:
        """Forget a returned checkout; if it was reported as leaked, say it came back."""
        self._open.pop(checkout.token, None)
        if checkout.reported:
            _log.info(
                "pool %r: connection acquired at %s returned after %.1f s "
                "(previously reported as leaked)",
                self.pool, checkout.site, self._clock() - checkout.started,
            )  # fmt: skip

    def check(self) -> list[Checkout]:
        """Report every checkout newly past the threshold; return them."""
        now = self._clock()
        with self._lock:  # one checker at a time, so each leak is reported once
            overdue = [
                c for c in list(self._open.values())
                if not c.reported and now - c.started > self.threshold
            ]  # fmt: skip
            for checkout in overdue:
                checkout.reported = True
        for checkout in overdue:
            self._report(checkout, now)
        return overdue

    def outstanding(self) -> int:
        """Return how many checkouts are open now."""
        return len(self._open)

    def close(self) -> None:
        """Stop the watchdog thread."""
        self._stop.set()

    def _report(self, checkout: Checkout, now: float) -> None:
        _log.warning(
            "pool %r: connection held %.1f s, longer than leak_threshold %.1f s; acquired at "
            "%s; return it to the pool (use the pool's context manager) or raise "
            "leak_threshold%s",
            self.pool, now - checkout.started, self.threshold, checkout.site,
            f"\nacquired here:\n{checkout.stack}" if checkout.stack else "",
        )  # fmt: skip
        if self._on_leak is not None:
            self._on_leak()

    def _start_watchdog(self) -> None:
        # The thread holds only a weak reference, so an abandoned tracker (and its pool)
        # can still be collected; it then exits on its next tick.
        ref = weakref.ref(self)
        interval = min(max(self.threshold / 4, 0.01), 1.0)
        stop = self._stop

        def run() -> None:
            while not stop.wait(interval):
                tracker = ref()
                if tracker is None:
                    return
                tracker.check()
                del tracker

        self._watchdog = threading.Thread(
            target=run, name=f"poolwarden-leaks-{self.pool}", daemon=True
        )
        self._watchdog.start()
