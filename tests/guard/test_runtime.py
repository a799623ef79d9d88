"""`complete()`: the release path finishes its work even when the caller is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from poolwarden.guard import complete


async def _no_suspension() -> int:
    return 7


async def _suspends(steps: list[str], delay: float = 0.05) -> str:
    steps.append("started")
    await asyncio.sleep(delay)
    steps.append("finished")
    return "done"


async def _fails_after_suspending() -> None:
    await asyncio.sleep(0)
    raise ValueError("boom")


def test_work_that_never_suspends_runs_inline_and_returns_its_value() -> None:
    """A return that completes without suspending needs no task and returns its result."""

    async def main() -> int:
        return await complete(_no_suspension())

    assert asyncio.run(main()) == 7


def test_work_that_suspends_returns_its_value() -> None:
    """A suspending awaitable is driven to the end and its result returned."""
    steps: list[str] = []

    async def main() -> str:
        return await complete(_suspends(steps))

    assert asyncio.run(main()) == "done"
    assert steps == ["started", "finished"]


def test_cancelling_the_caller_finishes_the_work_first_then_cancels() -> None:
    """Cancelled mid-way (twice), the work still finishes; the caller then sees the cancel."""
    steps: list[str] = []

    async def main() -> None:
        task = asyncio.create_task(complete(_suspends(steps, 0.1)))
        await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert steps == ["started", "finished"]

    asyncio.run(main())


def test_wait_for_timeout_does_not_interrupt_the_work() -> None:
    """asyncio.wait_for's timeout lands after the work completes, as a TimeoutError."""
    steps: list[str] = []

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(complete(_suspends(steps, 0.1)), timeout=0.01)
        assert steps == ["started", "finished"]

    asyncio.run(main())


def test_errors_of_the_work_propagate_unchanged() -> None:
    """An exception raised by the work after it suspended reaches the caller as is."""

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            await complete(_fails_after_suspending())

    asyncio.run(main())


def test_results_of_futures_reach_the_work() -> None:
    """Values the awaited futures resolve to are passed back into the work."""

    async def work(fut: asyncio.Future[int]) -> int:
        return await fut + 1

    async def main() -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, 41)
        return await complete(work(fut))

    assert asyncio.run(main()) == 42
