"""Use cases of the intake service: plain async functions taking ports.

Ports: :class:`EventPublisher` (Kafka, awaits the broker's acknowledgement) and
:class:`~loket_intake.store.IntakeStore` (Redis). The HTTP layer (api.py, desk.py) only
parses, authenticates and maps errors.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
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
from loket_intake.store import IdempotencyRecord, IntakeStore, NewCase
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


@dataclass(frozen=True)
class CaseChoice:
    """The case a request publishes: new, or resumed from an earlier attempt's intent."""

    case_id: str
    reference: str
    received_at: datetime
    resumed: bool = False


def _draw_case(question: QuestionIn, deps: Deps) -> NewCase:
    case_id = domain.new_case_id()
    return NewCase(
        case_id=case_id,
        reference=domain.new_reference(),
        received_at=deps.now().isoformat(),
        initiative=question.initiative,
        consent_id=domain.consent_id_for(case_id) if question.consent else None,
        consent_categories=(
            [c.value for c in question.consent.categories] if question.consent else []
        ),
    )


async def _claim_key(
    question: QuestionIn, deps: Deps, idem: Idempotency, token: str
) -> CaseChoice | Submitted:
    """Claim the Idempotency-Key: a new case, a resumed case, or the stored 202 to replay.

    While another request holds the key's lease, wait up to ``idempotency_wait_s`` for it
    to settle (replay its 202), or for its lease to run out (then resume its case: the
    holder died); after that, 409 ``idempotency_key_in_progress``. Raises
    IdempotencyConflict when the key was used with another body.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deps.idempotency_wait_s
    delay = 0.02
    while True:
        for attempt in range(MAX_REFERENCE_ATTEMPTS):
            drawn = _draw_case(question, deps)
            claim = await deps.store.claim(
                idem.scope, idem.key, token=token, body_hash=idem.body_hash, case=drawn
            )
            if claim.outcome != "reference_taken":
                break
            log.info("reference_collision", attempt=attempt + 1)
        else:
            raise StoreUnavailable("could not reserve a unique reference")
        if claim.outcome == "claimed":
            received = datetime.fromisoformat(drawn.received_at)
            return CaseChoice(drawn.case_id, drawn.reference, received)
        if claim.outcome == "resumed":
            intent = claim.intent
            assert intent is not None
            # an earlier attempt chose this case and may have published it (a crash after
            # the ack, a lost ack, a 503): publish the identical event again
            log.info("question_resumed", case_id=intent.case_id)
            received = datetime.fromisoformat(intent.received_at)
            return CaseChoice(intent.case_id, intent.reference, received, resumed=True)
        if claim.outcome == "conflict":
            raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
        existing = claim.record
        assert existing is not None
        if existing.body_hash != idem.body_hash:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
        if existing.state == "done" and existing.response is not None:
            r = existing.response
            log.info("question_replayed", case_id=r["case_id"])
            return Submitted(Accepted(r["case_id"], r["reference"], r["status_url"]), True)
        # pending: another request holds the lease
        if loop.time() + delay > deadline:
            seconds = max(1, -(-claim.lease_ms // 1000))
            raise IdempotencyInProgress(
                "a request with this Idempotency-Key is still in progress; "
                f"retry in {seconds} s or later"
            )
        await asyncio.sleep(delay)  # the holder settles in Redis; nothing to await here
        delay = min(delay * 2, 0.2)


async def _reserve_without_key(question: QuestionIn, deps: Deps) -> CaseChoice:
    """No Idempotency-Key: reserve a unique reference and write the case record."""
    for attempt in range(MAX_REFERENCE_ATTEMPTS):
        drawn = _draw_case(question, deps)
        if await deps.store.reserve_case(
            drawn.reference,
            drawn.case_id,
            drawn.initiative,
            drawn.consent_id,
            drawn.consent_categories,
        ):
            received = datetime.fromisoformat(drawn.received_at)
            return CaseChoice(drawn.case_id, drawn.reference, received)
        log.info("reference_collision", attempt=attempt + 1)
    raise StoreUnavailable("could not reserve a unique reference")


async def submit_question(
    question: QuestionIn,
    deps: Deps,
    *,
    trace: TraceContext,
    idempotency: Idempotency | None = None,
    attachments: list[Attachment] | None = None,
) -> Submitted:
    """Capture one question: choose its case, publish QuestionReceived, answer.

    Returns only after Kafka acknowledged the event. With an Idempotency-Key the case
    (id, reference, receive time) is stored before anything is published, so every retry
    with the key publishes the identical event (same ``ce_id``) and gets the same answer.
    Raises IdempotencyConflict / IdempotencyInProgress (409), PublishFailed /
    StoreUnavailable (503).
    """
    token = secrets.token_hex(16)
    if idempotency is not None:
        claimed = await _claim_key(question, deps, idempotency, token)
        if isinstance(claimed, Submitted):
            return claimed
        case = claimed
    else:
        case = await _reserve_without_key(question, deps)

    event = domain.build_event(
        question,
        case_id=case.case_id,
        reference=case.reference,
        received_at=case.received_at,
        pseudonym_key=deps.pseudonym_key,
        attachments=attachments,
    )
    # ce_time = received_at and ce_id from the case id: a republished event is identical
    # (only its traceparent differs)
    record = encode(
        event,
        source=SOURCE,
        trace=trace,
        event_id=question_event_id(case.case_id),
        time=case.received_at,
    )
    try:
        await _publish(deps.questions, event, record)
    except PublishFailed as exc:
        if idempotency is not None:
            # Release the lease now; the intent keeps the case, so the client's retry
            # resumes it and republishes this very event (if this one still lands late,
            # the router sees the same case id twice and routes it once).
            await _settle_quietly(deps, idempotency, token, None)
        elif not exc.in_flight:
            # Definitely not written: free the reference. (A timed-out record is still
            # queued in the producer and may land later: its case record stays.)
            await _release_quietly(deps, case.reference, case.case_id)
        raise

    token_value = domain.status_token(case.reference, deps.pseudonym_key)
    accepted = Accepted(
        case.case_id,
        case.reference,
        domain.status_url(deps.status_public_url, case.reference, token_value),
    )
    if idempotency is not None:
        done = IdempotencyRecord(
            "done", idempotency.body_hash, response=accepted.body(), case_id=case.case_id
        )
        await _settle_quietly(deps, idempotency, token, done)
    if log.is_enabled_for(logging.INFO):  # one line per question: skip it cheaply when off
        log.info(
            "question_accepted",
            case_id=case.case_id,
            channel=question.channel.value,
            initiative=question.initiative,
            consent=question.consent is not None,
            identified=question.requester is not None,
            attachments=len(attachments or []),
            resumed=case.resumed,
        )
    return Submitted(accepted)


async def _settle_quietly(
    deps: Deps, idem: Idempotency | None, token: str, record: IdempotencyRecord | None
) -> None:
    """Settle the idempotency lease; a Redis failure here costs no correctness.

    If it fails, the lease runs out and the intent stays: a retry then resumes the case
    and republishes the same event (it never claims success without the Kafka ack).
    """
    if idem is None:
        return
    try:
        settled = await deps.store.settle_idempotency(idem.scope, idem.key, token, record)
    except StoreUnavailable:
        log.warning("idempotency_settle_failed", state=record.state if record else "released")
        return
    if not settled:
        # our lease ran out and a retry resumed the case: it publishes the same event and
        # answers the same body, so nothing is lost or doubled
        log.warning("idempotency_lease_lost", state=record.state if record else "released")


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
