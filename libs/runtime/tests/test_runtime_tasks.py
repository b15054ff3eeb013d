"""Bounded stopping of background tasks (loket_runtime.tasks)."""

from __future__ import annotations

import asyncio

from loket_runtime.tasks import stop_task


async def test_stop_task_repeats_a_lost_cancellation() -> None:
    lost = 0

    async def swallows_the_first_cancel() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1  # what asyncio.wait_for on Python 3.11 can do to a cancellation

    task = asyncio.create_task(swallows_the_first_cancel())
    await asyncio.sleep(0.02)
    assert await stop_task(task, timeout_s=2.0)
    assert task.cancelled() and lost == 1


async def test_stop_task_gives_up_at_its_deadline_instead_of_hanging() -> None:
    done = asyncio.Event()

    async def never_stops() -> None:
        while not done.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(never_stops(), name="stubborn")
    await asyncio.sleep(0.02)  # running (a task cancelled before it starts just ends)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await stop_task(task, timeout_s=0.3)
    assert loop.time() - started < 1.0
    done.set()
    await task


async def test_stop_task_of_a_failed_task_reports_instead_of_raising() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await stop_task(task, timeout_s=1.0)
