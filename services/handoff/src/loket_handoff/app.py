"""Composition root of the handoff service: ``create_app(settings)`` builds everything.

Nothing connects at import time or in ``create_app``; Kafka and Redis connect in the
FastAPI lifespan (see loket_runtime.service.ServiceRuntime). On start the producer starts,
the projection is rebuilt from Kafka when its marker is missing, then the batch consumer
(:mod:`loket_handoff.consumer`) and the SLA timer sweep start. ``/readyz`` also checks
that the consumer loop runs and polls (``consumer``) and that the sweep task runs
(``timers``). On stop both end within bounds (:mod:`loket_runtime.tasks`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from redis.exceptions import RedisError

from loket_handoff import api, operator, subscribers
from loket_handoff.businesshours import calendar_for
from loket_handoff.clock import Clock, SystemClock
from loket_handoff.consumer import HandoffConsumer
from loket_handoff.errors import Retryable
from loket_handoff.handlers import HandoffService
from loket_handoff.metrics import HandoffMetrics
from loket_handoff.rebuild import Rebuilder
from loket_handoff.settings import HandoffSettings
from loket_handoff.store import HandoffStore
from loket_runtime.service import ServiceRuntime
from loket_runtime.tasks import stop_task
from loket_schemas import topics
from loket_schemas.catalog import load_agencies

GAUGE_REFRESH_S = 5.0


def create_app(
    settings: HandoffSettings | None = None,
    *,
    clock: Clock | None = None,
    runtime: ServiceRuntime | None = None,
) -> FastAPI:
    settings = settings or HandoffSettings()
    rt = runtime or ServiceRuntime(settings)
    rt.ensure_topics_on_start(
        [topics.HANDOFFS, topics.HANDOFF_RESPONSES, topics.CONSENT, topics.DLQ]
    )
    catalog = load_agencies()
    calendar = calendar_for(settings.handoff_time_scale)
    store = HandoffStore(rt.redis, settings.redis_key_prefix, calendar)
    metrics = HandoffMetrics(rt.registry)
    rebuilder = Rebuilder(
        store,
        bootstrap=settings.kafka_bootstrap,
        handoffs_topic=rt.topic(topics.HANDOFFS),
        consent_topic=rt.topic(topics.CONSENT),
        log=rt.log,
        on_rebuilt=metrics.rebuilds.inc,
    )
    publisher = subscribers.KafkaPublisher(
        bootstrap=settings.kafka_bootstrap,
        topic=rt.topic(topics.HANDOFFS),
        dlq_topic=rt.topic(topics.DLQ),
        timeout_s=settings.kafka_delivery_timeout_s,
        log=rt.log,
    )
    service = HandoffService(
        store=store,
        publisher=publisher,
        clock=clock or SystemClock(),
        catalog=catalog,
        calendar=calendar,
        metrics=metrics,
        ensure_ready=rebuilder.ensure_ready,
        log=rt.log,
    )
    processor = subscribers.BatchProcessor(
        service,
        subscribers.DlqPublisher(publisher),
        prefix=settings.topic_prefix,
        concurrency=settings.handoff_concurrency,
        log=rt.log,
    )
    consumer = HandoffConsumer(
        processor,
        bootstrap=settings.kafka_bootstrap,
        topics=processor.topics,
        group_id=settings.topic_prefix + settings.handoff_group_id,
        metrics=metrics,
        log=rt.log,
        max_records=settings.handoff_batch_max_records,
        fetch_min_bytes=settings.handoff_fetch_min_bytes,
        fetch_max_wait_ms=settings.handoff_fetch_max_wait_ms,
    )

    tasks: list[asyncio.Task[Any]] = []
    stopping = asyncio.Event()

    async def sweep_forever() -> None:
        last_gauges = 0.0
        loop = asyncio.get_running_loop()
        # the flag ends the loop even if a cancellation was lost (see loket_runtime.tasks)
        while not stopping.is_set():
            metrics.timer_sweeps.inc()
            try:
                if settings.handoff_timers_enabled:
                    fired = await service.fire_due_timers(
                        limit=settings.handoff_timer_batch, lease_s=settings.handoff_timer_lease_s
                    )
                    if fired >= settings.handoff_timer_batch:
                        continue  # more due: sweep again at once
                else:
                    await service.ensure_ready()
                if loop.time() - last_gauges > GAUGE_REFRESH_S:
                    last_gauges = loop.time()
                    for code, n in (await store.open_counts_by_agency()).items():
                        metrics.open_handoffs.labels(code).set(n)
            except asyncio.CancelledError:
                raise
            except (Retryable, RedisError, OSError) as exc:
                rt.log.warning("timer_sweep_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            except Exception:
                rt.log.exception("timer_sweep_crashed")
            await asyncio.sleep(settings.handoff_timer_interval_s)  # the sweep period

    @rt.on_startup
    async def start() -> None:
        stopping.clear()
        await publisher.start()
        await rebuilder.ensure_ready()
        await consumer.start()
        tasks.append(asyncio.create_task(sweep_forever(), name="handoff-sla-sweep"))

    @rt.on_shutdown
    async def stop() -> None:
        stopping.set()
        await consumer.stop()  # the batch in flight finishes (and commits) first
        while tasks:
            await stop_task(tasks.pop(), log=rt.log)
        await publisher.stop()

    async def consumer_ready() -> bool:
        problem = consumer.problem()
        if problem:
            raise RuntimeError(problem)
        return True

    async def sweep_ready() -> bool:
        if not tasks or tasks[0].done():
            raise RuntimeError("SLA timer sweep is not running")
        return True

    rt.add_readiness_check("consumer", consumer_ready)
    rt.add_readiness_check("timers", sweep_ready)

    app = FastAPI(
        title="Loket handoff",
        version="0.1.0",
        description="Warm handoffs between agencies: accept, decline, resolve, escalate; "
        "SLA timers; case timelines; public status.",
        lifespan=rt.lifespan,
    )
    rt.install(app)
    app.state.handoff_service = service
    app.state.handoff_store = store
    app.state.handoff_rebuilder = rebuilder
    app.state.handoff_publisher = publisher
    app.state.handoff_processor = processor
    app.state.handoff_consumer = consumer
    app.state.handoff_keys = settings.key_hashes()
    app.state.handoff_metrics = metrics
    app.include_router(api.build_router())
    app.include_router(operator.build_operator_router())
    app.add_exception_handler(api.HTTPProblem, api.problem_handler)
    for exc_type in (Retryable, RedisError, OSError):
        app.add_exception_handler(exc_type, api.unavailable_handler)
    return app
