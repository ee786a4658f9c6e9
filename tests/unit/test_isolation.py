"""The gate that lets a suspect delivery (running when its worker stopped) run alone in its process."""

from __future__ import annotations

import asyncio

from consumers.loop import Isolation


async def test_a_suspect_waits_for_running_handlers_and_holds_back_new_ones() -> None:
    gate = Isolation(window_s=5)
    assert gate.enter()  # a handler already running
    closing = asyncio.create_task(gate.close())
    await asyncio.sleep(0.05)
    assert not closing.done(), "the suspect started beside a running handler"
    assert not gate.enter(), "a new handler passed a closed gate"
    waiting = asyncio.create_task(gate.entered())
    gate.leave(closed=False)  # the running handler finishes
    assert await asyncio.wait_for(closing, 1) is True  # alone
    await asyncio.sleep(0.05)
    assert not waiting.done(), "a handler ran beside the suspect"
    gate.leave(closed=True)  # the suspect finishes
    await asyncio.wait_for(waiting, 1)
    assert gate.running == 1


async def test_a_hung_handler_does_not_hold_a_suspect_for_ever() -> None:
    gate = Isolation(window_s=0.1)
    assert gate.enter()  # never finishes
    assert await asyncio.wait_for(gate.close(), 1) is False  # runs, but not alone
    gate.leave(closed=True)
    assert gate.enter()


async def test_a_hung_suspect_holds_the_others_up_for_one_window_only() -> None:
    gate = Isolation(window_s=0.2)
    assert await gate.close() is True
    waiting = asyncio.create_task(gate.entered())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await asyncio.wait_for(waiting, 1)  # the window passed: the others go on beside it
    second = asyncio.create_task(gate.close())
    await asyncio.sleep(0.05)
    assert not second.done(), "two suspects at once"
    gate.leave(closed=False)
    gate.leave(closed=True)  # the hung one ends at last
    assert await asyncio.wait_for(second, 1) is True
    gate.leave(closed=True)
    assert gate.open.is_set()


async def test_suspects_run_one_at_a_time() -> None:
    gate = Isolation(window_s=5)
    assert await gate.close() is True
    second = asyncio.create_task(gate.close())
    await asyncio.sleep(0.05)
    assert not second.done()
    gate.leave(closed=True)
    assert await asyncio.wait_for(second, 1) is True
    gate.leave(closed=True)
    assert gate.open.is_set()


async def test_a_suspect_cancelled_while_waiting_opens_the_gate_again() -> None:
    gate = Isolation(window_s=5)
    assert gate.enter()
    closing = asyncio.create_task(gate.close())
    await asyncio.sleep(0.05)
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    assert gate.open.is_set()
    gate.leave(closed=False)
    assert await asyncio.wait_for(gate.close(), 1) is True  # the lock was given back
    gate.leave(closed=True)
