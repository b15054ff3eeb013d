"""Kafka adapters of the handoff service: batch processing of consumed records, publishing.

:class:`BatchProcessor` handles one batch from the consumer loop
(:mod:`loket_handoff.consumer`): records are grouped by key (= case id); the groups run
concurrently (bounded), the records of one group in offset order under ONE case lock and
ONE projection load (:meth:`HandoffService.case_session`). Poison records are
dead-lettered to loket.dlq.v1 (awaiting the ack) and count as handled; a group whose
handling raises (Kafka/Redis trouble, lock contention, a bug) is reported back as failed
and retried by the loop; offsets are committed only when every group of the batch is
done (never caught, logged and committed).

:class:`KafkaPublisher` publishes with a raw aiokafka producer (``acks="all"``,
idempotent): ``publish_many`` sends every event of one decision, then awaits all acks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from loket_handoff.errors import Retryable
from loket_handoff.handlers import HandoffService
from loket_handoff.rebuild import PROJECTED
from loket_handoff.store import LoadedCase
from loket_runtime.kafka import needs_new_producer, start_replacement_producer, stop_producer
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
    Envelope,
    InvalidPayload,
    decode,
    decode_attributes,
    encode,
    service_source,
)
from loket_schemas.tracing import TraceContext

SOURCE = service_source("handoff")
#: What to do for one decoded record, on its loaded case.
Step = Callable[[LoadedCase], Awaitable[Any]]
COMMANDS: tuple[type[Message], ...] = (
    AcceptHandoff,
    DeclineHandoff,
    ResolveHandoff,
    EscalateHandoff,
)


class KafkaPublisher:
    """Publishes on loket.handoffs.v1 (and the DLQ) with the CloudEvents binding.

    Raw aiokafka producer with ``acks="all"`` and idempotence, started in the app
    lifespan. Every publish returns only after the broker ack; an ack that does not come
    within ``timeout_s`` (Kafka down) raises :class:`Retryable` (loudly, nothing dropped).
    A Kafka error that leaves the producer broken (``loket_runtime.kafka``
    ``needs_new_producer``, the rule intake uses too) starts a replacement in the
    background: a new producer is started, then installed, the old one stopped (bounded);
    publishes meanwhile raise :class:`Retryable` having sent nothing.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        dlq_topic: str,
        timeout_s: float = 30.0,
        linger_ms: int = 2,
        max_batch_bytes: int = 512 * 1024,
        client_id: str = "handoff",
        start_timeout_s: float = 10.0,
        log: Any = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.timeout_s = timeout_s
        self.linger_ms = linger_ms
        self.max_batch_bytes = max_batch_bytes
        self.client_id = client_id
        self.start_timeout_s = start_timeout_s
        self.log = log
        self.producer: AIOKafkaProducer | None = None
        self.replacements = 0
        self._replacing: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            # aiokafka keeps ONE produce request in flight per broker, with at most one
            # batch per partition: with the default 16 KiB (~20 of our records) a
            # consumed batch's ~300 offers took several produce round trips one after
            # the other; one batch per partition and request now carries them all
            max_batch_size=self.max_batch_bytes,
        )

    async def start(self) -> None:
        self._closed = False
        producer = self._new_producer()
        await producer.start()
        self.producer = producer

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        if self._replacing is not None and not self._replacing.done():
            self._replacing.cancel()
            await asyncio.gather(self._replacing, return_exceptions=True)
        producer, self.producer = self.producer, None
        if producer is not None:
            await stop_producer(producer, timeout_s)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    @property
    def replacing(self) -> bool:
        return self._replacing is not None and not self._replacing.done()

    def _broken(self, producer: AIOKafkaProducer, exc: BaseException) -> None:
        """``producer`` failed with ``exc``: replace it (once) if it cannot recover."""
        if self._closed or producer is not self.producer or self.replacing:
            return
        if not needs_new_producer(exc):
            return
        if self.log is not None:
            self.log.warning("kafka_producer_broken", error=type(exc).__name__)
        self._replacing = asyncio.get_running_loop().create_task(
            self._replace(producer), name="handoff-producer-replace"
        )

    async def _replace(self, old: AIOKafkaProducer) -> None:
        def failed_start(attempt: int, exc: BaseException) -> None:
            if self.log is not None:
                self.log.warning(
                    "kafka_producer_start_failed", attempt=attempt, error=type(exc).__name__
                )

        started = await start_replacement_producer(
            self._new_producer,
            closed=lambda: self._closed,
            start_timeout_s=self.start_timeout_s,
            on_failed_start=failed_start,
        )
        if started is None:
            return
        self.producer, attempts = started
        self.replacements += 1
        if self.log is not None:
            self.log.warning("kafka_producer_replaced", attempts=attempts)
        retire = asyncio.get_running_loop().create_task(stop_producer(old, 30.0))
        self._retiring.add(retire)
        retire.add_done_callback(self._retiring.discard)

    async def publish(self, message: Message, *, event_id: str, trace: TraceContext | None) -> None:
        await self.publish_many([(message, event_id, trace)])

    async def publish_many(self, items: Sequence[tuple[Message, str, TraceContext | None]]) -> None:
        """Send every message (in order), then await all broker acks."""
        records = []
        for message, event_id, trace in items:
            record = encode(
                message,
                source=SOURCE,
                trace=trace,
                event_id=event_id,
                time=getattr(message, "occurred_at", None),
            )
            records.append((record.value, record.key, list(record.headers)))
        await self.send(self.topic, records)

    async def send(self, topic: str, records: Sequence[tuple[bytes, bytes, list[Any]]]) -> None:
        producer = self.producer
        if producer is None:
            raise Retryable("Kafka producer not started")
        if self.replacing:
            raise Retryable("Kafka producer is being replaced")
        try:
            async with asyncio.timeout(self.timeout_s):
                futures = [
                    await producer.send(topic, value, key=key, headers=headers)
                    for value, key, headers in records
                ]
                await asyncio.gather(*futures)
        except TimeoutError as exc:
            raise Retryable(f"publish to {topic!r} not acknowledged within {self.timeout_s:g}s"
                            ) from exc  # fmt: skip
        except KafkaError as exc:
            self._broken(producer, exc)
            raise Retryable(f"publish to {topic!r} failed: {type(exc).__name__}: {exc}") from exc


class DlqPublisher:
    """The dead-letter port of :func:`dead_letter` over :class:`KafkaPublisher`."""

    def __init__(self, publisher: KafkaPublisher) -> None:
        self.publisher = publisher

    async def publish(self, value: bytes, *, key: bytes, headers: dict[str, str]) -> None:
        await self.publisher.send(
            self.publisher.dlq_topic,
            [(value, key, [(k, v.encode()) for k, v in headers.items()])],
        )


async def dead_letter(dlq: Any, msg: Any, topic: str, error: Exception) -> None:
    """Dead-letter the record of a FastStream-style message (``msg.raw_message``)."""
    await dead_letter_record(dlq, msg.raw_message, topic, error)


async def dead_letter_record(dlq: Any, record: Any, topic: str, error: Exception) -> None:
    """Publish ``MessageDeadLettered`` (original coordinates, value and headers) and await
    the ack; ``dlq.publish(value, key=..., headers=dict)``."""
    key = record.key.decode("utf-8", "replace") if record.key else "unknown"
    case_id = key if _safe_id(key) else "unknown"
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


class BatchProcessor:
    """Handles the records of one consumed batch (see the module docstring)."""

    def __init__(
        self,
        service: HandoffService,
        dlq: Any,
        *,
        prefix: str,
        concurrency: int = 64,
        log: Any = None,
    ) -> None:
        self.service = service
        self.dlq = dlq
        self.concurrency = concurrency
        self.log = log
        self.handoffs_topic = topics.prefixed(topics.HANDOFFS, prefix)
        self.responses_topic = topics.prefixed(topics.HANDOFF_RESPONSES, prefix)
        self.consent_topic = topics.prefixed(topics.CONSENT, prefix)
        self.topics = [self.handoffs_topic, self.responses_topic, self.consent_topic]
        self.echoes_skipped = 0

    async def process(self, records: Sequence[Any]) -> tuple[list[Any], BaseException | None]:
        """Handle ``records``; returns the records of failed cases and the first error.

        1. Every record is decoded (poison dead-lettered, echoes of our own events
           skipped) and grouped by case id, keeping the given (offset) order per case.
        2. ONE Redis call locks and loads every case (:meth:`HandoffService.open_cases`).
        3. The cases run concurrently, each case's records in order against its loaded
           case; each decision publishes and awaits its acks (the sends of all cases go
           out together), its projection writes are staged. A case whose lock is held
           elsewhere runs in its own :meth:`HandoffService.case_session` instead (which
           waits for the lock; at most ``concurrency`` of those at a time).
        4. ONE Redis call writes every case's staged writes and releases its lock, each
           fenced by the lock token (:meth:`HandoffService.close_cases`); a case that
           failed in 3. still gets the writes of its steps that succeeded.
        """
        await self.service.ensure_ready()  # once per batch (rebuilds when the marker is gone)
        failed: list[Any] = []
        first: BaseException | None = None
        cases: dict[str, list[tuple[Any, Step]]] = {}
        for record in records:
            try:
                handle = await self._decode(record)
            except Exception as exc:  # the dead-letter publish failed: retry the record
                failed.append(record)
                first = first or exc
                continue
            if handle is not None:  # None: dead-lettered, or an echo of an event we applied
                cases.setdefault(handle[0], []).append((record, handle[1]))
        if not cases:
            return failed, first
        try:
            sessions = await self.service.open_cases(list(cases))
        except Exception as exc:  # Redis trouble: every case of the batch again
            failed.extend(r for steps in cases.values() for r, _ in steps)
            return failed, first or exc
        gate = asyncio.Semaphore(self.concurrency)

        async def run(case_id: str, steps: list[tuple[Any, Step]]) -> None:
            loaded = sessions[case_id]
            if loaded is None:  # locked elsewhere (HTTP API, a timer, another instance)
                async with gate, self.service.case_session(case_id) as own:
                    for _, step in steps:
                        await step(own)
                return
            for _, step in steps:
                await step(loaded)

        ordered = list(cases.items())
        staged = [loaded for loaded in sessions.values() if loaded is not None]
        try:
            results = await asyncio.gather(*(run(c, s) for c, s in ordered), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result  # cancellation and the like
            try:
                written = await self.service.close_cases(staged)
            except Exception as exc:
                written = [exc] * len(staged)
        except BaseException:
            self.service.abandon_cases([loaded for loaded in staged if loaded.staged is not None])
            raise
        outcomes = {id(loaded): error for loaded, error in zip(staged, written, strict=True)}
        for (case_id, steps), result in zip(ordered, results, strict=True):
            error: BaseException | None = result if isinstance(result, Exception) else None
            error = error or outcomes.get(id(sessions[case_id]))
            if error is not None:
                failed.extend(record for record, _ in steps)
                first = first or error
        return failed, first

    async def _decode(self, record: Any) -> tuple[str, Any] | None:
        """Decode ``record``: None (nothing to do) or (case id, step on the loaded case)."""
        topic = record.topic
        service = self.service
        if topic == self.handoffs_topic:
            event_id = _header(record.headers, "ce_id")
            if event_id is not None and service.recently_applied(event_id):
                # the echo of our own publish, already applied: skip it before decoding
                # (most records on this topic are; only ids we published are remembered)
                self.echoes_skipped += 1
                return None
            try:
                envelope = decode(record.value, record.headers, expect=PROJECTED)
            except DecodeError as exc:
                await self._dead_letter(record, exc)
                return None
            if isinstance(envelope.data, CaseRouted):
                routed: Envelope[Any] = envelope

                async def on_routed(loaded: LoadedCase) -> None:
                    await service.case_routed_in(loaded, routed)

                return envelope.data.case_id, on_routed
            if service.recently_applied(envelope.attributes.id):
                self.echoes_skipped += 1
                return None
            event: Envelope[Any] = envelope

            async def on_event(loaded: LoadedCase) -> None:
                await service.handoff_event_in(loaded, event)

            return envelope.data.case_id, on_event
        if topic == self.responses_topic:
            return await self._decode_command(record)
        if topic == self.consent_topic:
            try:
                consent = decode(
                    record.value, record.headers, expect=(ConsentGiven, ConsentWithdrawn)
                )
            except DecodeError as exc:
                await self._dead_letter(record, exc)
                return None

            async def on_consent(loaded: LoadedCase) -> None:
                await service.handoff_event_in(loaded, consent)

            return consent.data.case_id, on_consent
        raise RuntimeError(f"record from an unexpected topic {topic!r}")  # pragma: no cover

    async def _decode_command(self, record: Any) -> tuple[str, Any] | None:
        service = self.service
        try:
            envelope = decode(record.value, record.headers, expect=COMMANDS)
        except InvalidPayload as exc:
            target = _addressed(record)
            if target is None:
                await self._dead_letter(record, exc)
                return None
            case_id, handoff_id, command_id = target
            reason = f"invalid: {str(exc)[:900]}"

            async def on_invalid(loaded: LoadedCase) -> None:
                await service.reject_invalid_in(
                    loaded,
                    case_id=case_id,
                    handoff_id=handoff_id,
                    command_id=command_id,
                    reason=reason,
                )

            return case_id, on_invalid
        except DecodeError as exc:
            await self._dead_letter(record, exc)
            return None
        command = envelope.data
        assert isinstance(command, HandoffCommand)
        trace = envelope.attributes.trace
        command_id = envelope.attributes.id

        async def on_command(loaded: LoadedCase) -> None:
            await service.command_in(
                loaded,
                command,
                command_id=command_id,
                actor=command.agency.value,
                via="kafka",
                trace=trace.child() if trace else None,
            )

        return command.case_id, on_command

    async def _dead_letter(self, record: Any, error: Exception) -> None:
        await dead_letter_record(self.dlq, record, record.topic, error)
        if self.log is not None:
            self.log.warning(
                "dead_lettered",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(error)[:200],
            )


def _header(headers: Any, name: str) -> str | None:
    """The value of header ``name`` of a consumed record (None: absent or not UTF-8)."""
    for key, value in headers or ():
        if key == name:
            try:
                return value.decode() if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                return None
    return None


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
    if not (_safe_id(case_id) and _safe_id(handoff_id)):
        return None
    return str(case_id), str(handoff_id), attributes.id or str(uuid.uuid4())


def _safe_id(value: Any) -> bool:
    """An id the schemas accept (``^[A-Za-z0-9_.:-]+$``, at most 64 characters)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_.:-") for c in value)
    )
