"""Health, readiness and metrics endpoints shared by every service.

- ``GET /healthz``: the process is alive (always 200 while it can answer).
- ``GET /readyz``: 200 only when every dependency check passes within its timeout;
  503 with ``{"status": "unavailable", "checks": {"kafka": "...", "redis": "ok"}}`` otherwise.
- ``GET /metrics``: Prometheus text format of the app's ``CollectorRegistry``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from redis.asyncio import Redis

#: A readiness check: returns normally (or True) when healthy; False or raising = failed.
Check = Callable[[], Awaitable[bool | None]]

__all__ = [
    "GC_COLLECTOR",
    "PLATFORM_COLLECTOR",
    "PROCESS_COLLECTOR",
    "Check",
    "health_router",
    "kafka_check",
    "new_registry",
    "redis_check",
]


def new_registry() -> CollectorRegistry:
    """A per-app registry with the standard process/platform/GC collectors.

    Per-app (not the global default) so tests can build many apps in one process.
    """
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def kafka_check(broker: KafkaBroker, timeout: float) -> Check:
    """Kafka answers a cluster-metadata request through the app's connected broker."""

    async def check() -> bool:
        return bool(await broker.ping(timeout=timeout))

    return check


def redis_check(redis: Redis) -> Check:
    """Redis answers PING."""

    async def check() -> bool:
        return bool(await redis.ping())

    return check


async def _run_check(check: Check, timeout: float) -> str:
    try:
        ok = await asyncio.wait_for(check(), timeout=timeout)
    except TimeoutError:
        return f"timeout after {timeout:g}s"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok" if ok is None or ok else "failed"


class Readiness(BaseModel):
    """Body of ``/readyz`` (200 and 503)."""

    status: str = Field(description="ok or unavailable.")
    checks: dict[str, str] = Field(description="Per dependency: ok, failed or error: ...")
    failed: list[str] | None = Field(default=None, description="The failed dependencies.")


_READINESS_DOC: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Every dependency answered."},
    503: {"model": Readiness, "description": "A dependency did not answer in time."},
}
_METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    }
}


def health_router(
    checks: Mapping[str, Check],
    *,
    registry: CollectorRegistry | None = None,
    timeout: float = 2.0,
) -> APIRouter:
    """Build the ``/healthz``, ``/readyz`` and ``/metrics`` routes.

    ``checks`` maps a dependency name (``"kafka"``, ``"redis"``) to an async check;
    all run concurrently, each bounded by ``timeout`` seconds (plus a small margin).
    """
    router = APIRouter(tags=["ops"])
    reg = registry if registry is not None else REGISTRY

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", responses=_READINESS_DOC)
    async def readyz() -> JSONResponse:
        names = list(checks)
        results = await asyncio.gather(*(_run_check(checks[n], timeout + 0.5) for n in names))
        detail: dict[str, Any] = dict(zip(names, results, strict=True))
        ready = all(r == "ok" for r in results)
        failed = [n for n, r in detail.items() if r != "ok"]
        body: dict[str, Any] = {"status": "ok" if ready else "unavailable", "checks": detail}
        if failed:
            body["failed"] = failed
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response, responses=_METRICS_DOC)
    async def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    return router
