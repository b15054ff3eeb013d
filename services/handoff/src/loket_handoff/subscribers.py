"""Kafka adapters of the handoff service (thin: decode, dead-letter poison, call handlers).

Ack policy NACK_ON_ERROR: a handler that raises (Kafka/Redis trouble, lock contention)
leaves the offset uncommitted and the record is redelivered; poison records are
dead-lettered to loket.dlq.v1 and then acknowledged (never caught, logged and acked).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.publisher import DefaultPublisher

from loket_handoff.errors import Retryable
from loket_handoff.handlers import HandoffService
from loket_handoff.rebuild import PROJECTED
from loket_schemas import topics
from loket_schemas.events import (
    AcceptHandoff,
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    DeclineHandoff,
    EscalateHandoff,
    HandoffCommand,
    Message,
    MessageDeadLettered,
    ResolveHandoff,
)
from loket_schemas.kafka import (
    DecodeError,
    InvalidPayload,
    decode,
    decode_attributes,
    encode,
    service_source,
)
from loket_schemas.tracing import TraceContext

SOURCE = service_source("handoff")
COMMANDS: tuple[type[Message], ...] = (
    AcceptHandoff,
    DeclineHandoff,
    ResolveHandoff,
    EscalateHandoff,
)
RETRY_BACKOFF_S = 0.5


class KafkaPublisher:
    """Publishes on loket.handoffs.v1 with the CloudEvents binding; awaits the broker ack."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher

    async def publish(self, message: Message, *, event_id: str, trace: TraceContext | None) -> None:
        record = encode(
            message,
            source=SOURCE,
            trace=trace,
            event_id=event_id,
            time=getattr(message, "occurred_at", None),
        )
        await self.publisher.publish(record.value, key=record.key, headers=record.headers_dict())


@dataclass
class Publishers:
    handoffs: DefaultPublisher
    dlq: DefaultPublisher


def _raw(msg: Any) -> Any:
    return msg.raw_message


async def dead_letter(dlq: Any, msg: Any, topic: str, error: Exception) -> None:
    record = _raw(msg)
    key = record.key.decode("utf-8", "replace") if record.key else "unknown"
    case_id = (
        key
        if key and len(key) <= 64 and all(c.isalnum() or c in "_.:-" for c in key)
        else "unknown"
    )
    event = MessageDeadLettered(
        case_id=case_id,
        service="handoff",
        original_topic=topic,
        partition=record.partition,
        offset=record.offset,
        error_class=type(error).__name__,
        message=str(error)[:2000],
        attempts=1,
        original_value_b64=base64.b64encode(record.value).decode() if record.value else None,
        original_headers={
            k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
            for k, v in (record.headers or ())
        },
        dead_lettered_at=datetime.now(UTC),
    )
    out = encode(event, source=SOURCE)
    await dlq.publish(out.value, key=out.key, headers=out.headers_dict())


def register(broker: KafkaBroker, service: HandoffService, *, prefix: str, group_id: str, log: Any
             ) -> Publishers:  # fmt: skip
    """Attach subscribers and named publishers to ``broker``."""
    handoffs_topic = topics.prefixed(topics.HANDOFFS, prefix)
    responses_topic = topics.prefixed(topics.HANDOFF_RESPONSES, prefix)
    consent_topic = topics.prefixed(topics.CONSENT, prefix)
    publishers = Publishers(
        handoffs=broker.publisher(handoffs_topic, title="handoff-events"),
        dlq=broker.publisher(topics.prefixed(topics.DLQ, prefix), title="handoff-dlq"),
    )
    common: dict[str, Any] = {
        "group_id": group_id,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }

    async def guarded(coro: Any) -> None:
        try:
            await coro
        except Retryable:
            await asyncio.sleep(RETRY_BACKOFF_S)  # back off before the redelivery
            raise

    @broker.subscriber(handoffs_topic, title="handoff-lifecycle", **common)  # type: ignore[untyped-decorator]
    async def on_handoffs(msg: KafkaMessage) -> None:
        record = _raw(msg)
        try:
            envelope = decode(record.value, record.headers, expect=PROJECTED)
        except DecodeError as exc:
            await dead_letter(publishers.dlq, msg, handoffs_topic, exc)
            log.warning(
                "dead_lettered", topic=handoffs_topic, offset=record.offset, error=str(exc)[:200]
            )
            return
        if isinstance(envelope.data, CaseRouted):
            await guarded(service.on_case_routed(envelope))  # type: ignore[arg-type]
        else:
            await guarded(service.on_handoff_event(envelope))

    @broker.subscriber(responses_topic, title="handoff-responses", **common)  # type: ignore[untyped-decorator]
    async def on_response(msg: KafkaMessage) -> None:
        record = _raw(msg)
        try:
            envelope = decode(record.value, record.headers, expect=COMMANDS)
        except InvalidPayload as exc:
            target = _addressed(record)
            if target is None:
                await dead_letter(publishers.dlq, msg, responses_topic, exc)
                return
            case_id, handoff_id, command_id = target
            await guarded(
                service.reject_invalid(
                    case_id=case_id,
                    handoff_id=handoff_id,
                    command_id=command_id,
                    reason=f"invalid: {str(exc)[:900]}",
                )
            )
            return
        except DecodeError as exc:
            await dead_letter(publishers.dlq, msg, responses_topic, exc)
            return
        command = envelope.data
        assert isinstance(command, HandoffCommand)
        trace = envelope.attributes.trace
        await guarded(
            service.handle_command(
                command,
                command_id=envelope.attributes.id,
                actor=command.agency.value,
                via="kafka",
                trace=trace.child() if trace else None,
            )
        )

    @broker.subscriber(consent_topic, title="handoff-consent", **common)  # type: ignore[untyped-decorator]
    async def on_consent(msg: KafkaMessage) -> None:
        record = _raw(msg)
        try:
            envelope = decode(record.value, record.headers, expect=(ConsentGiven, ConsentWithdrawn))
        except DecodeError as exc:
            await dead_letter(publishers.dlq, msg, consent_topic, exc)
            return
        await guarded(service.on_consent(envelope))  # type: ignore[arg-type]

    return publishers


def _addressed(record: Any) -> tuple[str, str, str] | None:
    """(case_id, handoff_id, command id) of an invalid command, if it names them."""
    try:
        attributes = decode_attributes(record.headers)
        body = json.loads(record.value)
    except (DecodeError, ValueError, TypeError):
        return None
    if not isinstance(body, dict):
        return None
    case_id, handoff_id = body.get("case_id"), body.get("handoff_id")
    ok = all(
        isinstance(v, str) and 0 < len(v) <= 64 and all(c.isalnum() or c in "_.:-" for c in v)
        for v in (case_id, handoff_id)
    )
    if not ok:
        return None
    return str(case_id), str(handoff_id), attributes.id or str(uuid.uuid4())
