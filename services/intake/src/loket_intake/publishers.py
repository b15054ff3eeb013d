"""Kafka publishers of the intake service (named FastStream publisher objects).

intake consumes nothing; it publishes ``QuestionReceived`` on ``loket.questions.v1`` and
``ConsentWithdrawn`` on ``loket.consent.v1``. Component tests assert on
``Publishers.questions`` / ``Publishers.consent`` (FastStream's ``TestKafkaBroker`` mocks).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from loket_runtime.service import ServiceRuntime
from loket_schemas import topics
from loket_schemas.kafka import KafkaRecord


class FastStreamPublisher:
    """:class:`~loket_intake.handlers.EventPublisher` over a FastStream publisher.

    ``publish`` awaits the broker acknowledgement (acks=all, idempotent producer; never
    ``no_confirm``), bounded by ``timeout`` seconds.
    """

    def __init__(self, publisher: Any, timeout: float) -> None:
        self.publisher = publisher
        self.timeout = timeout

    async def publish(self, record: KafkaRecord) -> None:
        async with asyncio.timeout(self.timeout):
            await self.publisher.publish(
                record.value, key=record.key, headers=record.headers_dict()
            )


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
