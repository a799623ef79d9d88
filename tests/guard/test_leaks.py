"""Leak detection: a connection held too long is reported once, with where it was taken."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from tests.fixtures.pg import PgServer

from poolwarden.errors import ConfigError
from poolwarden.guard import LeakTracker, guard
from poolwarden.guard.leaks import call_site

LOGGER = "poolwarden.guard.leaks"


@pytest.fixture
def leak_log(caplog: pytest.LogCaptureFixture) -> Callable[[int], list[str]]:
    """Return a reader of the leak logger's messages at one level (INFO and up captured)."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    def read(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]

    return read


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def quiet_tracker(threshold: float, **kwargs: Any) -> LeakTracker:
    """A tracker whose watchdog never runs, so only the test calls `check`."""
    tracker = LeakTracker("orders", threshold, **kwargs)
    tracker.close()  # a closed tracker's watchdog exits at once: no check races the test
    return tracker


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll (bounded) until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def sync_pool(pg: PgServer, name: str, **options: Any) -> Any:
    """A guarded, unopened one-connection `ConnectionPool`."""
    raw: ConnectionPool[Any] = ConnectionPool(pg.dsn, min_size=1, max_size=1, open=False)
    return guard(raw, name=name, registry=CollectorRegistry(), **options)


@contextlib.contextmanager
def open_pool(pg: PgServer, name: str, **options: Any) -> Iterator[Any]:
    """A guarded one-connection `ConnectionPool`, open and filled, closed afterwards."""
    with sync_pool(pg, name, **options) as pool:
        pool.wait(timeout=10)
        yield pool


def test_held_past_threshold_warns_once_with_site_then_informs_on_return(
    pg: PgServer, leak_log: Callable[[int], list[str]]
) -> None:
    """Past the threshold (default 2 x timeout): one warning naming file and line, one count, one info."""
    with open_pool(pg, "pgt-leak", timeout=0.1) as pool:
        assert pool.guard.leaks.threshold == pytest.approx(0.2)
        acquired_at = sys._getframe().f_lineno + 1
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            wait_until(lambda: pool.guard.metrics.leaks == 1)
            time.sleep(0.3)  # several more watchdog ticks: still one report
            assert leak_log(logging.INFO) == []
        warnings = leak_log(logging.WARNING)
        assert len(warnings) == 1
        site = f"{__file__}:{acquired_at} in test_held_past_threshold_warns_once"
        assert site in warnings[0]
        assert "'pgt-leak'" in warnings[0]
        assert "longer than leak_threshold 0.2 s" in warnings[0]
        assert "acquired here" not in warnings[0]  # the cheap call site only
        infos = leak_log(logging.INFO)
        assert len(infos) == 1
        assert site in infos[0]
        assert "previously reported as leaked" in infos[0]
        assert pool.guard.metrics.leaks == 1
        assert pool.guard.snapshot().leaks_outstanding == 0


def test_leak_stack_logs_the_full_stack(pg: PgServer, leak_log: Callable[[int], list[str]]) -> None:
    """With leak_stack=True the warning carries the whole acquiring stack, callers included."""
    with open_pool(pg, "pgt-leak-stack", leak_threshold=0.05, leak_stack=True) as pool:
        with pool.connection():
            wait_until(lambda: pool.guard.metrics.leaks == 1)
        (warning,) = leak_log(logging.WARNING)
        stack = warning.split("acquired here:\n", 1)[1]
        assert f'File "{__file__}"' in stack
        assert "in test_leak_stack_logs_the_full_stack" in stack
        assert "_pytest" in stack  # the callers of the test: the full stack, not one frame


def test_returned_before_threshold_logs_nothing(
    pg: PgServer, leak_log: Callable[[int], list[str]]
) -> None:
    """A connection returned in time is never reported, even after the threshold passes."""
    with open_pool(pg, "pgt-no-leak", leak_threshold=0.2) as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        time.sleep(0.4)  # past the threshold, with the watchdog ticking every 0.05 s
        assert pool.guard.metrics.leaks == 0
    assert leak_log(logging.WARNING) == []
    assert leak_log(logging.INFO) == []


def test_async_leak_names_the_coroutine_that_acquired(
    pg: PgServer, leak_log: Callable[[int], list[str]]
) -> None:
    """A connection leaked inside a coroutine is reported at the coroutine's line."""

    async def main() -> int:
        raw: AsyncConnectionPool[Any] = AsyncConnectionPool(
            pg.dsn, min_size=1, max_size=1, open=False
        )
        async with guard(
            raw, name="pgt-async-leak", registry=CollectorRegistry(), leak_threshold=0.05
        ) as pool:
            await pool.wait(timeout=10)
            line = sys._getframe().f_lineno + 1
            async with pool.connection():
                while pool.guard.metrics.leaks == 0:
                    await asyncio.sleep(0.01)
        return line

    line = asyncio.run(asyncio.wait_for(main(), 10))
    (warning,) = leak_log(logging.WARNING)
    assert f"{__file__}:{line} in main" in warning
    assert len(leak_log(logging.INFO)) == 1


def test_default_threshold_is_twice_the_timeout_and_an_explicit_one_wins(pg: PgServer) -> None:
    """leak_threshold defaults to 2 x timeout; a given leak_threshold is used as is."""
    assert sync_pool(pg, "pgt-default", timeout=0.7).guard.leaks.threshold == pytest.approx(1.4)
    assert sync_pool(pg, "pgt-default-1").guard.leaks.threshold == pytest.approx(2.0)
    assert sync_pool(pg, "pgt-explicit", leak_threshold=9.0).guard.leaks.threshold == 9.0


def test_tracker_reports_once_strictly_past_threshold(
    leak_log: Callable[[int], list[str]],
) -> None:
    """`check` reports a checkout once, only when held longer than the threshold."""
    clock, leaks = Clock(), []
    tracker = quiet_tracker(1.0, on_leak=lambda: leaks.append(1), clock=clock)
    checkout = tracker.start(skip=1)
    clock.now = 1.0
    assert tracker.check() == []  # exactly at the threshold: not longer than it
    clock.now = 1.5
    assert tracker.check() == [checkout]
    clock.now = 9.0
    assert tracker.check() == []
    assert leaks == [1]
    (warning,) = leak_log(logging.WARNING)
    assert "held 1.5 s, longer than leak_threshold 1.0 s" in warning
    assert "in test_tracker_reports_once_strictly_past_threshold" in warning
    assert tracker.outstanding() == 1


def test_tracker_says_when_a_reported_checkout_returns(
    leak_log: Callable[[int], list[str]],
) -> None:
    """Returning a reported checkout logs one INFO line with how long it was held."""
    clock = Clock()
    tracker = quiet_tracker(1.0, clock=clock)
    checkout = tracker.start(skip=1)
    clock.now = 2.0
    tracker.check()
    clock.now = 4.25
    tracker.finish(checkout)
    (info,) = leak_log(logging.INFO)
    assert "returned after 4.2 s" in info
    assert checkout.site in info
    assert tracker.outstanding() == 0


def test_tracker_ignores_checkouts_returned_in_time(leak_log: Callable[[int], list[str]]) -> None:
    """A checkout finished before the threshold is never reported and logs nothing."""
    clock, leaks = Clock(), []
    tracker = quiet_tracker(1.0, on_leak=lambda: leaks.append(1), clock=clock)
    checkout = tracker.start(skip=1)
    clock.now = 0.5
    tracker.finish(checkout)
    clock.now = 10.0
    assert tracker.check() == []
    assert leaks == []
    assert leak_log(logging.WARNING) == []
    assert leak_log(logging.INFO) == []


def test_tracker_full_stack_records_every_caller() -> None:
    """With full_stack the checkout keeps the formatted stack down to the acquiring frame."""
    checkout = quiet_tracker(1.0, full_stack=True).start(skip=1)
    assert checkout.stack is not None
    assert "in test_tracker_full_stack_records_every_caller" in checkout.stack
    assert checkout.stack.count('File "') > 3  # the test's callers too
    assert quiet_tracker(1.0).start(skip=1).stack is None


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan")])
def test_tracker_refuses_a_threshold_that_is_not_positive(threshold: float) -> None:
    """A zero, negative or NaN threshold is a ConfigError naming the pool and the setting."""
    with pytest.raises(ConfigError, match=r"pool 'orders': leak_threshold=.* must be positive"):
        LeakTracker("orders", threshold)


def _where() -> str:
    return call_site(1)


def test_call_site_skips_plumbing_packages_but_not_lookalike_modules() -> None:
    """Frames of asyncio, psycopg, poolwarden.guard... are skipped; `asyncio_jobs` is the user's."""

    def as_module(name: str) -> Callable[[], str]:
        """`_where`, as if it were defined in module `name`."""
        return types.FunctionType(_where.__code__, {"__name__": name, "call_site": call_site})

    assert " in _where" in as_module("asyncio_jobs")()
    assert " in _where" in as_module("psycopg_helpers")()
    for plumbing in ("asyncio", "asyncio.tasks", "psycopg_pool.pool", "poolwarden.guard.psycopg"):
        assert as_module(plumbing)().endswith(
            " in test_call_site_skips_plumbing_packages_but_not_lookalike_modules"
        )


def test_watchdog_thread_ends_when_its_tracker_is_collected() -> None:
    """An abandoned tracker does not keep a thread alive: the watchdog exits on its next tick."""
    tracker = LeakTracker("pgt-abandoned", 0.04)
    tracker.start(skip=1)
    (thread,) = [t for t in threading.enumerate() if t.name == "poolwarden-leaks-pgt-abandoned"]
    del tracker
    gc.collect()
    thread.join(timeout=2)
    assert not thread.is_alive()
