"""The consumer's supervision (no Kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from loket_handoff.consumer import HandoffConsumer
from loket_handoff.metrics import HandoffMetrics


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
