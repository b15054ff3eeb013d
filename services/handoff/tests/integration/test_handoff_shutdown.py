"""Stopping never hangs: background tasks that talk to Redis end on stop, on real Redis.

On Python 3.11 a task doing Redis I/O can lose its cancellation (``asyncio.wait_for``
inside redis-py, see loket_runtime.tasks); the two-instance timer test hung on that
until pytest-timeout, in the second instance's shutdown.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from handoff_itkit import running, settings_for

pytestmark = pytest.mark.integration


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
