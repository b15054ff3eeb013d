"""Composition root of the router service: ``create_app(settings)`` builds everything.

Nothing connects at import time or in ``create_app``; Kafka and Redis connect in the
FastAPI lifespan (see loket_runtime.service.ServiceRuntime).
"""

from __future__ import annotations

from fastapi import FastAPI

from loket_router import subscribers
from loket_router.settings import RouterSettings
from loket_runtime.service import ServiceRuntime


def create_app(settings: RouterSettings | None = None) -> FastAPI:
    settings = settings or RouterSettings()
    runtime = ServiceRuntime(settings)
    subscribers.register(runtime)
    app = FastAPI(title="Loket router", version="0.1.0", lifespan=runtime.lifespan)
    runtime.install(app)
    return app
