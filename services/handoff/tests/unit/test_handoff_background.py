"""Bounded stopping of background tasks, and the consumer's supervision (no Kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from loket_handoff.background import stop_task
from loket_handoff.consumer import HandoffConsumer
from loket_handoff.metrics import HandoffMetrics


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


class _Processor:
    async def process(self, records: Any) -> tuple[list[Any], BaseException | None]:
        return [], None


def _consumer() -> HandoffConsumer:
    return HandoffConsumer(
        _Processor(),
        bootstrap="127.0.0.1:1",
        topics=["t"],
        group_id="g",
        metrics=HandoffMetrics(CollectorRegistry()),
        log=structlog.get_logger("test"),
    )


async def test_consumer_reports_a_loop_that_keeps_failing_and_restarts_it() -> None:
    consumer = _consumer()
    assert consumer.problem() == "consumer task is not running"
    runs = 0

    async def failing_run() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("cannot reach Kafka")

    consumer._run = failing_run  # type: ignore[method-assign]
    consumer.retry_backoff_s = 0.01
    await consumer.start()
    await asyncio.sleep(0.1)
    assert runs >= 2  # restarted after each failure
    assert (consumer.problem() or "").startswith("consumer loop failing")
    await consumer.stop(grace_s=1.0)


async def test_consumer_supervisor_that_ends_unexpectedly_is_started_again() -> None:
    consumer = _consumer()
    started = 0
    gate = asyncio.Event()

    async def supervise() -> None:
        nonlocal started
        started += 1
        if started == 1:
            raise RuntimeError("supervisor bug")
        consumer.running = True
        await gate.wait()

    consumer._supervise = supervise  # type: ignore[method-assign]
    await consumer.start()
    for _ in range(100):
        if started >= 2:
            break
        await asyncio.sleep(0.01)
    assert started == 2
    assert consumer.metrics.consumer_restarts._value.get() == 1
    assert consumer.problem() is None  # running again, polled just now
    await consumer.stop(grace_s=0.5)
    assert consumer.problem() == "consumer task is not running"
