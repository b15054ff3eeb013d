"""Composition root of the intake service: ``create_app(settings)`` builds everything.

Nothing connects at import time or in ``create_app``; Kafka and Redis connect in the
FastAPI lifespan (see loket_runtime.service.ServiceRuntime).
"""

from __future__ import annotations

from fastapi import FastAPI

from loket_intake import api, desk, handlers, publishers
from loket_intake.settings import IntakeSettings
from loket_intake.store import RedisIntakeStore
from loket_runtime.service import ServiceRuntime
from loket_schemas import topics


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    runtime = ServiceRuntime(
        settings,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        linger_ms=settings.kafka_linger_ms,
    )
    runtime.ensure_topics_on_start([topics.QUESTIONS, topics.CONSENT])
    pubs = publishers.register(runtime)
    supervisor = publishers.ProducerSupervisor(
        runtime.broker,
        start_timeout_s=settings.producer_start_timeout_s,
        registry=runtime.registry,
    )
    runtime.add_readiness_check("kafka_producer", supervisor.readiness)
    keys = api.ApiKeys(settings)
    app = FastAPI(
        title="Loket intake",
        version="0.1.0",
        lifespan=runtime.lifespan,
        description="One question from any channel, captured once, never lost.",
    )
    runtime.install(app)
    app.state.publishers = pubs
    app.state.producer_supervisor = supervisor
    questions = publishers.FastStreamPublisher(
        pubs.questions, settings.publish_timeout_s, supervisor
    )
    consent = publishers.FastStreamPublisher(pubs.consent, settings.publish_timeout_s, supervisor)
    runtime.on_shutdown(supervisor.close)
    runtime.on_shutdown(questions.close)
    runtime.on_shutdown(consent.close)
    app.state.deps = handlers.Deps(
        store=RedisIntakeStore(
            runtime.redis,
            settings.redis_key_prefix,
            lease_ms=int(settings.idempotency_lease_s * 1000),
        ),
        questions=questions,
        consent=consent,
        pseudonym_key=settings.pseudonym_key.get_secret_value(),
        status_public_url=settings.handoff_public_url,
        idempotency_wait_s=settings.idempotency_wait_s,
    )
    api.install_error_handlers(app, settings)
    router, post_question = api.build_router(settings, keys)
    app.include_router(router)
    app.add_middleware(api.QuestionFastPath, endpoint=post_question, settings=settings)
    desk.install(app, settings, keys)
    if settings.dev_keys_enabled:
        runtime.log.warning("dev_api_keys_enabled", hint="set LOKET_DEV_API_KEYS=false")
    return app
