"""Kafka publishers of the intake service (named FastStream publisher objects).

intake consumes nothing; it publishes ``QuestionReceived`` on ``loket.questions.v1`` and
``ConsentWithdrawn`` on ``loket.consent.v1``. Component tests assert on
``Publishers.questions`` / ``Publishers.consent`` (FastStream's ``TestKafkaBroker`` mocks).

:class:`ProducerSupervisor` replaces the broker's aiokafka producer when it can no longer
deliver (see :func:`loket_runtime.kafka.needs_new_producer`).
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.producer import AioKafkaFastProducerImpl
from faststream.kafka.publisher.state import RealProducer
from prometheus_client import CollectorRegistry, Counter, Gauge

from loket_runtime.kafka import needs_new_producer, start_replacement_producer, stop_producer
from loket_runtime.logging import get_logger
from loket_runtime.service import ServiceRuntime
from loket_runtime.tasks import stop_task
from loket_schemas import topics
from loket_schemas.kafka import KafkaRecord

log = get_logger("loket.intake.publish")


class PublishTimeout(TimeoutError):
    """No acknowledgement within the timeout; the record may still be delivered later."""


class ProducerUnavailable(RuntimeError):
    """The Kafka producer is being replaced: nothing was sent, retry shortly."""


class ProducerSupervisor:
    """Replaces the aiokafka producer inside a FastStream broker after a fatal error.

    FastStream has no API to renew a broker's producer (``broker.stop()`` + ``start()``
    flushes without bound while Kafka is away), so this swaps the producer held by the
    broker's ``AioKafkaFastProducerImpl`` (one private attribute, pinned by a unit test):
    a new ``AIOKafkaProducer`` with the broker's own connection settings is started
    first, then installed; the old one is stopped in the background (its queued records
    land or fail; a bounded wait). Every named publisher uses the new producer at once.

    While a replacement runs, :attr:`ready` is False: ``/readyz`` answers 503 and
    :class:`FastStreamPublisher` refuses to publish (:class:`ProducerUnavailable`, so
    the request answers 503 + Retry-After having sent nothing). One replacement at a time;
    errors of records sent by an older producer are ignored (``generation``).
    """

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 30.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.broker = broker
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.generation = 0
        self.replacements = 0
        self._replacing: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        self._counter: Counter | None = None
        self._ready_gauge: Gauge | None = None
        if registry is not None:
            self._counter = Counter(
                "loket_intake_kafka_producer_replacements",
                "Kafka producers replaced after a fatal error (e.g. OutOfOrderSequenceNumber).",
                registry=registry,
            )
            self._ready_gauge = Gauge(
                "loket_intake_kafka_producer_ready",
                "1 while the Kafka producer can publish, 0 while it is being replaced.",
                registry=registry,
            )
            self._ready_gauge.set(1)

    @property
    def ready(self) -> bool:
        return self._replacing is None or self._replacing.done()

    async def readiness(self) -> bool:
        """Readiness probe (``/readyz`` check ``kafka_producer``)."""
        return self.ready

    def watch(self, task: asyncio.Future[Any]) -> None:
        """Inspect the outcome of a publish made with the current producer."""
        generation = self.generation

        def done(t: asyncio.Future[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                self.report(t.exception(), generation)  # type: ignore[arg-type]

        task.add_done_callback(done)

    def report(self, exc: BaseException, generation: int) -> None:
        """A publish made with producer ``generation`` failed with ``exc``."""
        if self._closed or generation != self.generation or not self.ready:
            return
        if not needs_new_producer(exc):
            return
        if not isinstance(self._fast_producer(), AioKafkaFastProducerImpl):
            return  # FastStream's TestKafkaBroker: nothing to replace
        log.warning("kafka_producer_broken", error=type(exc).__name__, generation=generation)
        self.generation += 1
        if self._ready_gauge is not None:
            self._ready_gauge.set(0)
        # a fresh context: the replacement is no part of the request that noticed the error
        self._replacing = asyncio.get_running_loop().create_task(
            self._replace(), context=contextvars.Context()
        )

    def _fast_producer(self) -> Any:
        return self.broker.config.producer

    async def _replace(self) -> None:
        def failed_start(attempt: int, exc: BaseException) -> None:
            log.warning("kafka_producer_start_failed", attempt=attempt, error=type(exc).__name__)

        started = await start_replacement_producer(
            lambda: AIOKafkaProducer(**self.broker._connection_kwargs),
            closed=lambda: self._closed,
            start_timeout_s=self.start_timeout_s,
            on_failed_start=failed_start,
        )
        if started is None:
            return
        new, attempts = started
        fast = self._fast_producer()
        state = getattr(fast, "_producer", None)
        old = state.producer if isinstance(state, RealProducer) else None
        fast._producer = RealProducer(new)
        self.replacements += 1
        if self._counter is not None:
            self._counter.inc()
        if self._ready_gauge is not None:
            self._ready_gauge.set(1)
        log.warning("kafka_producer_replaced", generation=self.generation, attempts=attempts)
        if old is not None:
            retire = asyncio.get_running_loop().create_task(
                stop_producer(old, self.stop_timeout_s), context=contextvars.Context()
            )
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Stop replacing (shutdown); wait for old producers to finish stopping."""
        self._closed = True
        if self._replacing is not None and not self._replacing.done():
            # bounded, and cancelled again if a cancellation is lost (loket_runtime.tasks)
            await stop_task(self._replacing, timeout_s=self.stop_timeout_s, log=log)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


class FastStreamPublisher:
    """:class:`~loket_intake.handlers.EventPublisher` over a FastStream publisher.

    ``publish`` awaits the broker acknowledgement (acks=all, idempotent producer; never
    ``no_confirm``), bounded by ``timeout`` seconds.

    The idempotent aiokafka producer never gives up on a record it has queued: when Kafka
    is down it retries until the broker is back. So a publish that timed out is *in
    flight*, not failed. It is kept here (keyed by ``ce_id``, which intake derives from
    the case id): a retry of the same event awaits that delivery instead of producing a
    second copy, and returns at once if the late delivery already succeeded.

    With a ``supervisor``: refuses to publish while the producer is being replaced
    (:class:`ProducerUnavailable`) and reports every publish outcome to it.
    """

    MAX_TRACKED = 10_000

    def __init__(
        self, publisher: Any, timeout: float, supervisor: ProducerSupervisor | None = None
    ) -> None:
        self.publisher = publisher
        self.timeout = timeout
        self.supervisor = supervisor
        self.inflight: dict[str, asyncio.Task[Any]] = {}

    def _send(self, record: KafkaRecord) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(
            self.publisher.publish(record.value, key=record.key, headers=record.headers_dict())
        )
        if self.supervisor is not None:
            self.supervisor.watch(task)
        return task

    async def publish(self, record: KafkaRecord) -> None:
        if self.supervisor is not None and not self.supervisor.ready:
            raise ProducerUnavailable("the Kafka producer is being replaced; nothing was sent")
        event_id = dict(record.headers).get("ce_id", b"").decode()
        task = self.inflight.get(event_id) if event_id else None
        if task is not None and task.done() and (task.cancelled() or task.exception()):
            task = None  # the earlier attempt failed for good: produce again
        if task is None:
            task = self._send(record)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            if event_id:
                self._track(event_id, task)
            raise PublishTimeout(f"no acknowledgement within {self.timeout}s") from None
        finally:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self.inflight.pop(event_id, None)

    def _track(self, event_id: str, task: asyncio.Task[Any]) -> None:
        if event_id not in self.inflight and len(self.inflight) >= self.MAX_TRACKED:
            oldest = next(iter(self.inflight))
            self.inflight.pop(oldest)
        self.inflight[event_id] = task

        def _done(t: asyncio.Task[Any]) -> None:
            if t.cancelled() or t.exception() is not None:
                log.warning("late_publish_failed", event_id=event_id)
            else:
                log.warning("late_publish_delivered", event_id=event_id)

        task.add_done_callback(_done)

    async def close(self) -> None:
        """Give in-flight records a last chance (the broker flushes on stop)."""
        pending = [t for t in self.inflight.values() if not t.done()]
        if pending:
            log.warning("publishes_in_flight_at_shutdown", count=len(pending))


@dataclass(frozen=True)
class Publishers:
    questions: Any
    consent: Any


def register(runtime: ServiceRuntime) -> Publishers:
    """Create the named publishers on ``runtime.broker`` (before it starts)."""
    broker = runtime.broker
    return Publishers(
        questions=broker.publisher(
            runtime.topic(topics.QUESTIONS),
            title="intake.questions",
            description="QuestionReceived (CloudEvents, key = case id)",
        ),
        consent=broker.publisher(
            runtime.topic(topics.CONSENT),
            title="intake.consent",
            description="ConsentWithdrawn (CloudEvents, key = case id)",
        ),
    )
