"""RouterService builds its loops from the settings (no connection is made here)."""

from __future__ import annotations

import structlog
from redis.asyncio import Redis

from loket_router.metrics import RouterMetrics
from loket_router.service import RouterService
from loket_router.settings import RouterSettings
from loket_runtime.health import new_registry


def test_only_the_side_loops_wait_for_fuller_fetches() -> None:
    settings = RouterSettings(side_loops_fetch_min_bytes=12345, side_loops_fetch_max_wait_ms=40)
    service = RouterService(
        settings,
        redis=Redis.from_url(settings.redis_url),
        metrics=RouterMetrics(new_registry()),
        log=structlog.get_logger(),
    )
    fetch = {
        loop.processor.name: (loop.fetch_min_bytes, loop.fetch_max_wait_ms)
        for loop in service.loops
    }
    # the question loop is the latency path: the broker answers its fetches at once
    assert fetch == {"questions": (1, 500), "reroute": (12345, 40), "consent": (12345, 40)}
