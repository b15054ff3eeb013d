"""Kafka publishers of the intake service (named FastStream publisher objects).

intake consumes nothing; it publishes ``QuestionReceived`` on ``loket.questions.v1`` and
``ConsentWithdrawn`` on ``loket.consent.v1``. Component tests assert on
``Publishers.questions`` / ``Publishers.consent`` (FastStream's ``TestKafkaBroker`` mocks).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from loket_runtime.logging import get_logger
from loket_runtime.service import ServiceRuntime
from loket_schemas import topics
from loket_schemas.kafka import KafkaRecord

log = get_logger("loket.intake.publish")


class PublishTimeout(TimeoutError):
    """No acknowledgement within the timeout; the record may still be delivered later."""


class FastStreamPublisher:
    """:class:`~loket_intake.handlers.EventPublisher` over a FastStream publisher.

    ``publish`` awaits the broker acknowledgement (acks=all, idempotent producer; never
    ``no_confirm``), bounded by ``timeout`` seconds.

    The idempotent aiokafka producer never gives up on a record it has queued: when Kafka
    is down it retries until the broker is back. So a publish that timed out is *in
    flight*, not failed. It is kept here (keyed by ``ce_id``, which intake derives from
    the case id): a retry of the same event awaits that delivery instead of producing a
    second copy, and returns at once if the late delivery already succeeded.
    """

    MAX_TRACKED = 10_000

    def __init__(self, publisher: Any, timeout: float) -> None:
        self.publisher = publisher
        self.timeout = timeout
        self.inflight: dict[str, asyncio.Task[Any]] = {}

    def _send(self, record: KafkaRecord) -> asyncio.Task[Any]:
        return asyncio.ensure_future(
            self.publisher.publish(record.value, key=record.key, headers=record.headers_dict())
        )

    async def publish(self, record: KafkaRecord) -> None:
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
