"""Stopping never hangs: background tasks that talk to Redis end on stop, on real Redis.

On Python 3.11 a task doing Redis I/O can lose its cancellation (``asyncio.wait_for``
inside redis-py, see loket_handoff.background); the two-instance timer test hung on that
until pytest-timeout, in the second instance's shutdown.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from handoff_itkit import running, settings_for
from redis.asyncio import Redis

from loket_handoff.background import stop_task

pytestmark = pytest.mark.integration


async def test_stop_task_ends_redis_loops_even_when_a_cancellation_is_lost(
    redis_url: str, redis_prefix: str
) -> None:
    redis = Redis.from_url(redis_url)
    lost = 0
    try:

        async def loop() -> None:
            while True:
                await redis.exists(f"{redis_prefix}ready")

        for _ in range(30):
            task = asyncio.create_task(loop())
            await asyncio.sleep(random.random() * 0.01)
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
            lost += not task.done()  # the library lost this cancellation
            assert await stop_task(task, timeout_s=5.0), "a Redis loop did not stop within 5 s"
            assert task.done()
    finally:
        await redis.aclose()
    print(f"\n[stop_task] {lost} of 30 first cancellations lost, all tasks stopped")


async def test_app_stops_within_bounds_while_sweeping_busily(
    loket_settings: dict[str, Any],
) -> None:
    # a sweep period of 1 ms keeps the sweep inside Redis calls most of the time
    settings = settings_for(loket_settings, handoff_timer_interval_s=0.001)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        async with running(settings, stop_within=30.0) as app:
            await asyncio.sleep(0.2 + random.random() * 0.3)
            assert app.state.handoff_metrics.timer_sweeps._value.get() > 0
            stopping = loop.time()
        assert loop.time() - stopping < 25.0
