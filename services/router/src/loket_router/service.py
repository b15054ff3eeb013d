"""The router's background work: three transactional loops sharing one Redis store."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from loket_router.handlers import (
    ConsentProcessor,
    QuestionProcessor,
    RerouteProcessor,
    RouterContext,
)
from loket_router.loop import Processor, TransactionalLoop
from loket_router.metrics import RouterMetrics
from loket_router.routing import classify
from loket_router.settings import RouterSettings
from loket_router.store import RedisStore
from loket_runtime.process import tune_gc as runtime_tune_gc
from loket_schemas.catalog import load_agencies
from loket_schemas.kafka import service_source


def tune_gc(threshold0: int = 10_000) -> None:
    """Process-wide GC settings for the router process (call once, after start-up work).

    Loads the routing engine and the catalog first, so that they are among the objects
    ``loket_runtime.process.tune_gc`` freezes: routing allocates many short-lived objects,
    and every older-generation collection re-scanned the long-lived engine (GC was ~20% of
    the router's CPU before; a few percent after).
    """
    classify("warm up the routing engine")
    load_agencies()
    runtime_tune_gc(threshold0)


class RouterService:
    """Builds the processors and loops; ``start``/``stop`` run in the app lifespan."""

    def __init__(
        self, settings: RouterSettings, *, redis: Redis, metrics: RouterMetrics, log: Any
    ) -> None:
        self.settings = settings
        self.store = RedisStore(redis, settings.redis_key_prefix, settings.case_ttl_days * 86400)
        self.ctx = RouterContext(
            catalog=load_agencies(),
            classify=classify,
            pseudonym_key=settings.pseudonym_key.get_secret_value(),
            topic_prefix=settings.topic_prefix,
            source=service_source("router"),
            log=log,
        )
        question = QuestionProcessor(self.ctx, self.store)  # the latency path
        processors: list[Processor] = [
            question,
            RerouteProcessor(self.ctx, self.store),
            ConsentProcessor(self.ctx, self.store),
        ]
        self.loops = [
            TransactionalLoop(
                p,
                bootstrap=settings.kafka_bootstrap,
                topic=settings.topic(p.input_topic),
                group_id=settings.group_id(p.group_id),
                transactional_id_prefix=settings.transactional_id_prefix(p.name),
                client_id=settings.client_id(p.name),
                store=self.store,
                metrics=metrics,
                log=log,
                max_records=settings.batch_max_records,
                poll_timeout_ms=settings.poll_timeout_ms,
                fetch_min_bytes=1 if p is question else settings.side_loops_fetch_min_bytes,
                fetch_max_wait_ms=500 if p is question else settings.side_loops_fetch_max_wait_ms,
                retry_attempts=settings.retry_attempts,
                retry_backoff_s=settings.retry_backoff_s,
                retry_backoff_max_s=settings.retry_backoff_max_s,
                transaction_timeout_ms=settings.transaction_timeout_ms,
                commit_timeout_s=settings.transaction_commit_timeout_s,
                defer_offsets_s=settings.deferred_offsets_max_s,
                linger_ms=settings.producer_linger_ms,
                producer_retry_backoff_ms=settings.producer_retry_backoff_ms,
                concurrent_txn_backoff_ms=settings.concurrent_transactions_backoff_ms,
                transactions_in_flight=settings.transactions_in_flight,
                session_timeout_ms=settings.consumer_session_timeout_ms,
                heartbeat_interval_ms=settings.consumer_heartbeat_interval_ms,
            )
            for p in processors
        ]

    async def start(self) -> None:
        for loop in self.loops:
            await loop.start()

    async def stop(self) -> None:
        for loop in self.loops:
            await loop.stop()

    @property
    def running(self) -> bool:
        return all(loop.running for loop in self.loops)
