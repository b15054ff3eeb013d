"""Composition root of the intake service: ``create_app(settings)`` builds everything.

Nothing connects at import time or in ``create_app``; Kafka and Redis connect in the
FastAPI lifespan (see loket_runtime.service.ServiceRuntime).
"""

from __future__ import annotations

from fastapi import FastAPI

from loket_intake import subscribers
from loket_intake.settings import IntakeSettings
from loket_runtime.service import ServiceRuntime


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    runtime = ServiceRuntime(settings)
    subscribers.register(runtime)
    app = FastAPI(title="Loket intake", version="0.1.0", lifespan=runtime.lifespan)
    runtime.install(app)
    return app
