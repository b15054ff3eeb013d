"""Composition root of the router service: ``create_app(settings)`` builds everything.

Nothing connects at import time or in ``create_app``. The FastAPI lifespan (see
loket_runtime.service.ServiceRuntime) creates the topics when asked, connects Kafka and
Redis, then starts the router's transactional loops (raw aiokafka, see
loket_router.loop) and stops them again on shutdown.
"""

from __future__ import annotations

from fastapi import FastAPI

from loket_router import subscribers
from loket_router.metrics import RouterMetrics
from loket_router.service import RouterService
from loket_router.settings import RouterSettings
from loket_runtime.service import ServiceRuntime
from loket_schemas.topics import ALL_TOPICS


def create_app(settings: RouterSettings | None = None) -> FastAPI:
    settings = settings or RouterSettings()
    runtime = ServiceRuntime(settings)
    if settings.create_topics:
        runtime.ensure_topics_on_start(ALL_TOPICS, partitions=settings.topic_partitions)
    subscribers.register(runtime)
    metrics = RouterMetrics(runtime.registry)
    service = RouterService(settings, redis=runtime.redis, metrics=metrics, log=runtime.log)
    runtime.on_startup(service.start)
    runtime.on_shutdown(service.stop)
    app = FastAPI(title="Loket router", version="0.1.0", lifespan=runtime.lifespan)
    runtime.install(app)
    app.state.router = service
    return app
