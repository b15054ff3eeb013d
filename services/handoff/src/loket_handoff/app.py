"""Composition root of the handoff service: ``create_app(settings)`` builds everything.

Nothing connects at import time or in ``create_app``; Kafka and Redis connect in the
FastAPI lifespan (see loket_runtime.service.ServiceRuntime).
"""

from __future__ import annotations

from fastapi import FastAPI

from loket_handoff import subscribers
from loket_handoff.settings import HandoffSettings
from loket_runtime.service import ServiceRuntime


def create_app(settings: HandoffSettings | None = None) -> FastAPI:
    settings = settings or HandoffSettings()
    runtime = ServiceRuntime(settings)
    subscribers.register(runtime)
    app = FastAPI(title="Loket handoff", version="0.1.0", lifespan=runtime.lifespan)
    runtime.install(app)
    return app
