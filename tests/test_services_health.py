"""Each service: create_app connects nothing; with real Kafka+Redis /healthz and /readyz are 200."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from loket_handoff.app import create_app as create_handoff
from loket_handoff.settings import HandoffSettings
from loket_intake.app import create_app as create_intake
from loket_intake.settings import IntakeSettings
from loket_router.app import create_app as create_router
from loket_router.settings import RouterSettings
from loket_runtime.testing import free_port

SERVICES: list[tuple[str, Any, Any, int]] = [
    ("intake", create_intake, IntakeSettings, 8000),
    ("router", create_router, RouterSettings, 8001),
    ("handoff", create_handoff, HandoffSettings, 8002),
]
IDS = [s[0] for s in SERVICES]


@pytest.mark.parametrize(("name", "create_app", "settings_cls", "port"), SERVICES, ids=IDS)
def test_create_app_connects_nothing(
    name: str, create_app: Any, settings_cls: Any, port: int
) -> None:
    # Nothing listens on these ports: any connection attempt at creation would fail/hang.
    settings = settings_cls(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    assert settings.service_name == name
    assert settings.port == port
    started = time.monotonic()
    app = create_app(settings)
    assert isinstance(app, FastAPI)
    assert time.monotonic() - started < 2
    assert {"/healthz", "/readyz", "/metrics"} <= set(app.openapi()["paths"])


@pytest.mark.integration
@pytest.mark.parametrize(("name", "create_app", "settings_cls", "port"), SERVICES, ids=IDS)
async def test_health_and_ready_against_real_kafka_and_redis(
    name: str, create_app: Any, settings_cls: Any, port: int, loket_settings: dict[str, Any]
) -> None:
    app: FastAPI = create_app(settings_cls(**loket_settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            checks = ready.json()["checks"]
            # kafka and redis everywhere; a service may add its own (intake: kafka_producer)
            assert {"kafka", "redis"} <= set(checks) and set(checks.values()) == {"ok"}
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert "process_cpu_seconds_total" in metrics.text
