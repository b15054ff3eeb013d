"""Use cases of the intake service: plain async functions taking ports.

Ports: :class:`EventPublisher` (Kafka, awaits the broker's acknowledgement) and
:class:`~loket_intake.store.IntakeStore` (Redis). The HTTP layer (api.py, desk.py) only
parses, authenticates and maps errors.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from loket_intake import domain
from loket_intake.domain import Accepted, QuestionIn
from loket_intake.errors import (
    Forbidden,
    IdempotencyConflict,
    IdempotencyInProgress,
    NoConsent,
    NotFound,
    PublishFailed,
    StoreUnavailable,
)
from loket_intake.store import IdempotencyRecord, IntakeStore
from loket_runtime.logging import get_logger
from loket_schemas.events import Attachment, ConsentWithdrawn, Message
from loket_schemas.kafka import KafkaRecord, encode, service_source
from loket_schemas.tracing import TraceContext

SOURCE = service_source("intake")
MAX_REFERENCE_ATTEMPTS = 8

log = get_logger("loket.intake")


class EventPublisher(Protocol):
    """Publishes one record and returns only after Kafka acknowledged it (acks=all)."""

    async def publish(self, record: KafkaRecord) -> None: ...


@dataclass(frozen=True)
class Deps:
    store: IntakeStore
    questions: EventPublisher
    consent: EventPublisher
    pseudonym_key: str
    status_public_url: str
    idempotency_wait_s: float = 2.0
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` scoped to the caller's initiative, with the body's hash."""

    scope: str
    key: str
    body_hash: str


@dataclass(frozen=True)
class Submitted:
    accepted: Accepted
    replayed: bool = False


def question_event_id(case_id: str) -> str:
    """Deterministic ``ce_id``: a republished question (after a lost ack) has the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"loket:question-received:{case_id}"))


async def _publish(publisher: EventPublisher, message: Message, record: KafkaRecord) -> None:
    try:
        await publisher.publish(record)
    except asyncio.CancelledError:
        raise
    except TimeoutError as exc:
        log.warning("publish_timeout", event_type=message.EVENT_TYPE, case_id=message.case_id)
        raise PublishFailed(
            "Kafka did not acknowledge the event in time; retry later", in_flight=True
        ) from exc
    except Exception as exc:
        log.warning(
            "publish_failed",
            event_type=message.EVENT_TYPE,
            case_id=message.case_id,
            error=type(exc).__name__,
        )
        raise PublishFailed("Kafka did not acknowledge the event; retry later") from exc


async def _wait_for_other(
    deps: Deps, idem: Idempotency, first: IdempotencyRecord
) -> IdempotencyRecord:
    """Another request holds the key: wait briefly for it to finish."""
    record = first
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deps.idempotency_wait_s
    delay = 0.02
    while record.state == "pending" and loop.time() < deadline:
        await asyncio.sleep(delay)  # the other request settles in Redis; nothing to await
        delay = min(delay * 2, 0.2)
        current = await deps.store.get_idempotency(idem.scope, idem.key)
        if current is None:
            break
        record = current
    return record


async def submit_question(
    question: QuestionIn,
    deps: Deps,
    *,
    trace: TraceContext,
    idempotency: Idempotency | None = None,
    attachments: list[Attachment] | None = None,
) -> Submitted:
    """Capture one question: reserve a reference, publish QuestionReceived, answer.

    Returns only after Kafka acknowledged the event. Raises IdempotencyConflict /
    IdempotencyInProgress (409), PublishFailed / StoreUnavailable (503).
    """
    token = uuid.uuid4().hex
    reuse: IdempotencyRecord | None = None
    case_id = domain.new_case_id()
    received_at = deps.now()
    consent_id = domain.consent_id_for(case_id) if question.consent else None
    categories = [c.value for c in question.consent.categories] if question.consent else []
    reference = domain.new_reference()
    reserved = False
    if idempotency is not None:
        pending = IdempotencyRecord("pending", idempotency.body_hash, token=token)
        # common case in one round trip: claim the key and reserve the reference
        claim, reserved = await deps.store.claim_and_reserve(
            idempotency.scope,
            idempotency.key,
            pending,
            reference,
            case_id,
            question.initiative,
            consent_id,
            categories,
        )
        if not claim.claimed:  # key taken: look closer (replay, conflict, takeover)
            claim = await deps.store.claim_idempotency(idempotency.scope, idempotency.key, pending)
        if not claim.claimed:
            existing = claim.record
            assert existing is not None
            if existing.state == "pending" and existing.body_hash == idempotency.body_hash:
                existing = await _wait_for_other(deps, idempotency, existing)
            if existing.body_hash != idempotency.body_hash:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request body"
                )
            if existing.state == "done" and existing.response is not None:
                r = existing.response
                log.info("question_replayed", case_id=r["case_id"])
                return Submitted(Accepted(r["case_id"], r["reference"], r["status_url"]), True)
            raise IdempotencyInProgress(
                "a request with this Idempotency-Key is still in progress; retry shortly"
            )
        reuse = claim.record

    if reuse is not None and reuse.case_id and reuse.reference and reuse.received_at:
        # retry after a failed publish: the same case, reference and event id
        case_id, reference = reuse.case_id, reuse.reference
        received_at = datetime.fromisoformat(reuse.received_at)
    elif not reserved:
        try:
            for attempt in range(MAX_REFERENCE_ATTEMPTS):
                if attempt:
                    log.info("reference_collision", reference=reference)
                    reference = domain.new_reference()
                if await deps.store.reserve_case(
                    reference, case_id, question.initiative, consent_id, categories
                ):
                    break
            else:
                raise StoreUnavailable("could not reserve a unique reference")
        except StoreUnavailable:
            await _settle_quietly(deps, idempotency, token, None)
            raise

    event = domain.build_event(
        question,
        case_id=case_id,
        reference=reference,
        received_at=received_at,
        pseudonym_key=deps.pseudonym_key,
        attachments=attachments,
    )
    record = encode(event, source=SOURCE, trace=trace, event_id=question_event_id(case_id))
    try:
        await _publish(deps.questions, event, record)
    except PublishFailed as exc:
        if idempotency is not None:
            # Keep case id and reference: a retry with this key republishes the same event.
            failed = IdempotencyRecord(
                "failed",
                idempotency.body_hash,
                case_id=case_id,
                reference=reference,
                received_at=received_at.isoformat(),
            )
            await _settle_quietly(deps, idempotency, token, failed)
        elif not exc.in_flight:
            # Definitely not written: free the reference. (A timed-out record is still
            # queued in the producer and may land later: its case record stays.)
            await _release_quietly(deps, reference, case_id)
        raise

    token_value = domain.status_token(reference, deps.pseudonym_key)
    accepted = Accepted(
        case_id, reference, domain.status_url(deps.status_public_url, reference, token_value)
    )
    if idempotency is not None:
        done = IdempotencyRecord(
            "done", idempotency.body_hash, response=accepted.body(), case_id=case_id
        )
        await _settle_quietly(deps, idempotency, token, done)
    log.info(
        "question_accepted",
        case_id=case_id,
        channel=question.channel.value,
        initiative=question.initiative,
        consent=question.consent is not None,
        identified=question.requester is not None,
        attachments=len(attachments or []),
    )
    return Submitted(accepted)


async def _settle_quietly(
    deps: Deps, idem: Idempotency | None, token: str, record: IdempotencyRecord | None
) -> None:
    """Settle the idempotency record; a Redis failure here only loses replay protection.

    (The pending marker then expires after 30 s; it never claims success.)
    """
    if idem is None:
        return
    try:
        await deps.store.settle_idempotency(idem.scope, idem.key, token, record)
    except StoreUnavailable:
        log.warning("idempotency_settle_failed", state=record.state if record else "deleted")


async def _release_quietly(deps: Deps, reference: str, case_id: str) -> None:
    try:
        await deps.store.release_case(reference, case_id)
    except StoreUnavailable:
        log.warning("case_release_failed", case_id=case_id)


def withdrawal_event_id(case_id: str, consent_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"loket:consent-withdrawn:{case_id}:{consent_id}"))


async def withdraw_consent(
    case_id: str, initiative: str, deps: Deps, *, trace: TraceContext
) -> dict[str, Any]:
    """Withdraw the whole consent of a case: ConsentWithdrawn on loket.consent.v1.

    Only the initiative that took the case may do this. Repeating it answers the same
    body and publishes nothing new. Raises NotFound, Forbidden, NoConsent, PublishFailed.
    """
    case = await deps.store.get_case(case_id)
    if case is None:
        raise NotFound("no case with this id")
    if case.initiative != initiative:
        raise Forbidden("only the initiative that took the case may withdraw its consent")
    if not case.consent_id:
        raise NoConsent("this case has no consent to withdraw")
    if case.withdrawn_at:
        return _withdrawn_body(case_id, case.consent_id, case.withdrawn_at)
    withdrawn_at = deps.now()
    event = ConsentWithdrawn(
        case_id=case_id, consent_id=case.consent_id, withdrawn_at=withdrawn_at, categories=[]
    )
    record = encode(
        event,
        source=SOURCE,
        trace=trace,
        event_id=withdrawal_event_id(case_id, case.consent_id),
    )
    await _publish(deps.consent, event, record)
    stored = await deps.store.mark_withdrawn(case_id, withdrawn_at.isoformat())
    log.info("consent_withdrawn", case_id=case_id, initiative=initiative)
    return _withdrawn_body(case_id, case.consent_id, stored or withdrawn_at.isoformat())


def _withdrawn_body(case_id: str, consent_id: str, withdrawn_at: str) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "consent_id": consent_id,
        "status": "withdrawn",
        "withdrawn_at": withdrawn_at,
    }
