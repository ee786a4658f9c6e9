"""cancel_and_wait: background tasks end on shutdown even when a cancellation is lost on the way
(redis-py can hand a read's reply back to a task cancelled just as it arrived)."""

from __future__ import annotations

import asyncio

from app.connections import cancel_and_wait


async def _loses_first_cancel(log: list[str]) -> None:
    """A loop whose first cancellation is lost, as one lost inside a client call would be."""
    lost = False
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost:
                log.append("cancelled")
                raise
            lost = True
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            log.append("lost")


async def test_a_task_that_loses_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    log: list[str] = []
    task = asyncio.create_task(_loses_first_cancel(log))
    await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.3)
    assert not done  # what `task.cancel(); await task` would wait on for ever
    async with asyncio.timeout(2):
        await cancel_and_wait(task)
    assert task.cancelled()
    assert log == ["lost", "cancelled"]


async def test_none_and_finished_tasks_are_fine_and_failures_are_not_raised() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    sleeping = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait(None, failed, finished, sleeping)
    assert sleeping.cancelled() and finished.done() and isinstance(failed.exception(), ValueError)


async def test_cleanup_that_a_cancellation_starts_is_left_to_finish() -> None:
    log: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # e.g. acknowledging what was handled
            log.append("cleaned up")
            raise

    task = asyncio.create_task(cleans_up())
    await asyncio.sleep(0.01)
    await cancel_and_wait(task)
    assert log == ["cleaned up"] and task.cancelled()
