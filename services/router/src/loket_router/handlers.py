"""Use cases of the router: turn a batch of input records into output records and state.

Each processor handles one input topic and runs inside a :class:`TransactionalLoop`
(loket_router.loop). ``process(records)`` reads what it needs from the store (one round
trip per batch), decides with the pure domain functions, and returns a
:class:`BatchResult`: the records to publish in the batch's Kafka transaction, the state
to write to Redis before the commit, and the "done" markers to write after it. Poison
records become ``MessageDeadLettered`` records in the same result.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from loket_router import domain
from loket_router.errors import PoisonMessage
from loket_router.routing import RoutingDecision
from loket_router.store import CaseState, RedisStore, Writes
from loket_schemas import topics
from loket_schemas.catalog import AgencyCatalog
from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    HandoffDeclined,
    HandoffEscalated,
    Message,
    MessageDeadLettered,
    QuestionReceived,
    RouteCause,
)
from loket_schemas.kafka import (
    CONTENT_TYPE,
    SPECVERSION,
    DecodeError,
    Envelope,
    KafkaRecord,
    decode,
    format_time,
    schema_uri,
)
from loket_schemas.pseudonym import pseudonymise
from loket_schemas.tracing import TRACEPARENT_HEADER, TraceContext, new_trace, parse_traceparent
from loket_schemas.vocabulary import BusinessRequester, PersonRequester

SERVICE = "router"
_CASE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Classifier = Callable[..., RoutingDecision]


class ConsumerRecordLike(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Outgoing:
    """One record to publish in the batch's transaction."""

    topic: str
    record: KafkaRecord


@dataclass
class Stats:
    """What a committed batch did (metrics are counted only after the commit)."""

    routed: int = 0
    rerouted: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    duplicates: int = 0
    erasures: int = 0
    unknown_cases: int = 0


@dataclass
class BatchResult:
    outgoing: list[Outgoing] = field(default_factory=list)
    writes: Writes = field(default_factory=Writes)
    markers: list[str] = field(default_factory=list)
    #: case id -> withdrawals the decisions relied on; re-read after the writes and redo
    #: the batch when they changed (a ConsentWithdrawn raced the consent-based shares).
    recheck: dict[str, dict[str, domain.Withdrawal]] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)


@dataclass(frozen=True)
class RecordHeaders:
    """Header values shared by every output of one input record (encoded once)."""

    source: bytes
    time: bytes
    traceparent: bytes


_TYPE_HEADERS: dict[type[Message], tuple[bytes, bytes]] = {}
_SPECVERSION = SPECVERSION.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()


def to_record(message: Message, ident: str, shared: RecordHeaders) -> KafkaRecord:
    """``loket_schemas.kafka.encode(message, ...)`` with the per-record parts precomputed.

    Byte for byte the same record as ``encode`` (tests/unit/test_router_fast_outputs.py
    checks it): CloudEvents binary mode, key = case id, value = the model's JSON.
    """
    cls = type(message)
    per_type = _TYPE_HEADERS.get(cls)
    if per_type is None:
        if not cls.EVENT_TYPE:
            raise TypeError(f"{cls.__name__} has no EVENT_TYPE")
        per_type = _TYPE_HEADERS[cls] = (
            cls.EVENT_TYPE.encode(),
            schema_uri(cls.EVENT_TYPE).encode(),
        )
    subject = message.subject.encode()
    headers = (
        ("ce_specversion", _SPECVERSION),
        ("ce_id", ident.encode()),
        ("ce_source", shared.source),
        ("ce_type", per_type[0]),
        ("ce_time", shared.time),
        ("ce_subject", subject),
        ("ce_dataschema", per_type[1]),
        ("content-type", _CONTENT_TYPE),
        (TRACEPARENT_HEADER, shared.traceparent),
    )
    value = message.__pydantic_serializer__.to_json(message)
    return KafkaRecord(key=subject, value=value, headers=headers)


@dataclass
class RouterContext:
    """Everything the use cases need besides the store (built by the composition root)."""

    catalog: AgencyCatalog
    classify: Classifier
    pseudonym_key: str
    topic_prefix: str = ""
    source: str = "urn:nld:loket:service:router"
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    log: Any = None
    _topics: dict[str, str] = field(default_factory=dict, repr=False)

    def topic(self, name: str) -> str:
        found = self._topics.get(name)
        if found is None:
            found = self._topics[name] = topics.prefixed(name, self.topic_prefix)
        return found

    def headers_for(self, trace: TraceContext, at: datetime) -> RecordHeaders:
        """The CloudEvents header values all outputs of one input record share."""
        return RecordHeaders(
            source=self.source.encode(),
            time=format_time(at).encode(),
            traceparent=trace.traceparent.encode(),
        )

    def emit(
        self,
        out: BatchResult,
        topic: str,
        message: Message,
        trace: TraceContext | RecordHeaders,
        ident: str,
        at: datetime,
    ) -> None:
        """Add ``message`` as a record to the batch's transaction (``loket_schemas.kafka.encode``
        format; ``trace`` may be the input record's precomputed :class:`RecordHeaders`)."""
        shared = trace if isinstance(trace, RecordHeaders) else self.headers_for(trace, at)
        out.outgoing.append(Outgoing(self.topic(topic), to_record(message, ident, shared)))

    def warn(self, event: str, **kw: Any) -> None:
        if self.log is not None:
            self.log.warning(event, **kw)


def trace_of(record: ConsumerRecordLike, env: Envelope[Any] | None = None) -> TraceContext:
    """The router's span for this record: a child of the incoming traceparent (or new)."""
    parent = env.attributes.trace if env is not None else None
    if parent is None:
        for name, value in record.headers or ():
            if name == "traceparent":
                parent = parse_traceparent(value.decode("utf-8", "replace"))
    return (parent or new_trace()).child()


def dead_letter(
    ctx: RouterContext, out: BatchResult, record: ConsumerRecordLike, exc: Exception
) -> None:
    """Add a ``MessageDeadLettered`` for a poison record to the batch's transaction."""
    at = ctx.clock()
    key = record.key.decode("utf-8", "replace") if record.key else ""
    reason = exc.reason if isinstance(exc, PoisonMessage) else str(exc)
    error_class = exc.error_class if isinstance(exc, PoisonMessage) else type(exc).__name__
    message = MessageDeadLettered(
        case_id=key if _CASE_ID.fullmatch(key) else "unknown",
        service=SERVICE,
        original_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error_class=error_class[:200],
        message=(reason or error_class)[:2000],
        attempts=1,
        original_value_b64=(
            base64.b64encode(record.value).decode() if record.value is not None else None
        ),
        original_headers={
            str(k): (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
            for k, v in (record.headers or ())
        },
        dead_lettered_at=at,
    )
    ident = domain.event_id("dlq", record.topic, str(record.partition), str(record.offset))
    ctx.emit(out, topics.DLQ, message, trace_of(record), ident, at)
    out.stats.dead_lettered += 1
    ctx.warn(
        "dead_lettered",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error_class=error_class,
    )


def subject_pseudonym(question: QuestionReceived, key: str) -> str | None:
    """The subject's pseudonym: from intake, else computed from the BSN or KvK number."""
    if question.subject_pseudonym:
        return question.subject_pseudonym
    requester = question.requester
    if isinstance(requester, PersonRequester) and requester.bsn:
        return pseudonymise(requester.bsn, key, domain="subject")
    if isinstance(requester, BusinessRequester):
        return pseudonymise(requester.kvk_number, key, domain="subject")
    return None


def poison(exc: Exception) -> PoisonMessage:
    """A processing failure caused by the record's content (not transport): poison."""
    return PoisonMessage(str(exc), error_class=type(exc).__name__)


def _decode_all(
    ctx: RouterContext,
    out: BatchResult,
    records: Sequence[ConsumerRecordLike],
    expect: tuple[type[Message], ...] | None,
) -> list[tuple[ConsumerRecordLike, Envelope[Any]]]:
    decoded: list[tuple[ConsumerRecordLike, Envelope[Any]]] = []
    for record in records:
        try:
            decoded.append((record, decode(record.value, record.headers, expect=expect)))
        except DecodeError as exc:
            dead_letter(ctx, out, record, exc)
    return decoded


# --------------------------------------------------------------------------- questions


def route_question(
    ctx: RouterContext,
    out: BatchResult,
    env: Envelope[QuestionReceived],
    record: ConsumerRecordLike,
    withdrawals: domain.Withdrawals,
    store: RedisStore,
) -> None:
    """Route one question: deliveries, audit records, CaseRouted, state, marker."""
    q = env.data
    cid = q.case_id
    at = domain.require_aware(ctx.clock())
    trace = trace_of(record, env)
    shared_headers = ctx.headers_for(trace, at)
    decision = ctx.classify(q.text, vulnerable=q.vulnerable)
    assignments: list[AgencyAssignment] = []
    for a in decision.assignments:
        if all(a.agency != b.agency for b in assignments):
            assignments.append(a)
    categories = domain.question_categories(q)
    pseudonym = subject_pseudonym(q, ctx.pseudonym_key)
    local = BatchResult()
    local.writes.questions.append(q)
    local.writes.leads[cid] = decision.lead
    consent_based = False
    for a in assignments:
        agency = ctx.catalog.get(a.agency)
        manifest = domain.build_manifest(categories, agency, q.consent, at, withdrawals)
        delivery = domain.deliver(q, a, decision.lead, manifest, pseudonym=pseudonym, at=at)
        code = a.agency.value
        ctx.emit(
            local,
            topics.agency_topic(a.agency),
            delivery,
            shared_headers,
            domain.event_id(cid, "delivered", code, "initial"),
            at,
        )
        audit = domain.audit_record(delivery, agency, trace=trace, sender=ctx.source, at=at)
        ctx.emit(
            local,
            topics.AUDIT,
            audit,
            shared_headers,
            domain.event_id(cid, "audit", code, "initial"),
            at,
        )
        local.writes.roles.append((cid, a.agency, a.role))
        shared = domain.consent_shares(manifest)
        if shared and q.consent is not None:
            consent_based = True
            local.writes.shares.append(
                (cid, domain.ConsentShare(a.agency, q.consent.consent_id, shared))
            )
        local.stats.deliveries[code] += 1
    routed = domain.case_routed(q, decision.lead, assignments, at=at)
    ctx.emit(
        local,
        topics.HANDOFFS,
        routed,
        shared_headers,
        domain.event_id(cid, "routed", "initial"),
        at,
    )
    # all built without error: merge into the batch
    out.outgoing.extend(local.outgoing)
    out.writes.questions.extend(local.writes.questions)
    out.writes.leads.update(local.writes.leads)
    out.writes.roles.extend(local.writes.roles)
    out.writes.shares.extend(local.writes.shares)
    out.stats.deliveries.update(local.stats.deliveries)
    out.stats.routed += 1
    out.markers.append(store.done_key("routed", cid))
    if consent_based:
        out.recheck[cid] = dict(withdrawals)


@dataclass
class QuestionProcessor:
    """loket.questions.v1 (group ``loket-router``): route each question once."""

    ctx: RouterContext
    store: RedisStore
    name: str = "questions"
    group_id: str = "loket-router"
    input_topic: str = topics.QUESTIONS

    async def process(self, records: Sequence[ConsumerRecordLike]) -> BatchResult:
        out = BatchResult()
        decoded = _decode_all(self.ctx, out, records, (QuestionReceived,))
        ids = [env.data.case_id for _, env in decoded]
        states = await self.store.load(
            ids, done_keys=[self.store.done_key("routed", cid) for cid in ids], full=False
        )
        seen: set[str] = set()
        for record, env in decoded:
            cid = env.data.case_id
            if cid in seen or states[cid].done:
                out.stats.duplicates += 1
                continue
            try:
                route_question(self.ctx, out, env, record, states[cid].withdrawals, self.store)
            except (ValidationError, ValueError, KeyError) as exc:
                dead_letter(self.ctx, out, record, poison(exc))
                continue
            seen.add(cid)
        return out


# --------------------------------------------------------------------------- re-routing


def reroute_action(event: HandoffDeclined | HandoffEscalated) -> str:
    """The re-route action an event asks for: ``<cause>:<handoff_id>`` (its done-marker,
    the ``ce_id`` seed of its outputs and the ``via`` of the role it writes)."""
    cause = RouteCause.ESCALATION if isinstance(event, HandoffEscalated) else RouteCause.DECLINE
    return f"{cause.value}:{event.handoff_id}"


def reroute_case(
    ctx: RouterContext,
    out: BatchResult,
    env: Envelope[HandoffDeclined | HandoffEscalated],
    record: ConsumerRecordLike,
    state: CaseState,
    store: RedisStore,
) -> bool:
    """Route a declined/escalated handoff's case to its next agency. False: nothing to do."""
    event = env.data
    cid = event.case_id
    action = reroute_action(event)
    # an agency this very action delivered to in an attempt that was aborted (roles are
    # written before the commit) does not count as "already handling": a replay decides
    # exactly as the first attempt did
    handling = {a for a in state.roles if state.via.get(a) != action}
    rr = domain.reroute_target(event, handling=handling, roles=state.roles)
    if rr is None:
        return False
    at = ctx.clock()
    trace = trace_of(record, env)
    agency = ctx.catalog.get(rr.target)
    assignment = AgencyAssignment(
        agency=rr.target, role=rr.role, reasons=[rr.reason], confidence=1.0
    )
    lead = rr.target if rr.role == AgencyRole.LEAD else (state.lead or rr.target)
    q = state.question
    tag = action  # == f"{rr.cause.value}:{rr.replaces_handoff_id}"
    if q is not None:
        manifest = domain.build_manifest(
            domain.question_categories(q), agency, q.consent, at, state.withdrawals
        )
        delivery = domain.deliver(
            q,
            assignment,
            lead,
            manifest,
            pseudonym=subject_pseudonym(q, ctx.pseudonym_key),
            at=at,
            cause=rr.cause,
        )
        shared = domain.consent_shares(manifest)
        if shared and q.consent is not None:
            out.writes.shares.append(
                (cid, domain.ConsentShare(rr.target, q.consent.consent_id, shared))
            )
            out.recheck[cid] = dict(state.withdrawals)
    else:
        ctx.warn("reroute_unknown_case", case_id=cid, handoff_id=event.handoff_id)
        out.stats.unknown_cases += 1
        manifest = domain.not_provided_manifest(agency)
        delivery = domain.deliver_unknown(cid, assignment, lead, manifest, at=at, cause=rr.cause)
    code = rr.target.value
    ctx.emit(
        out,
        topics.agency_topic(rr.target),
        delivery,
        trace,
        domain.event_id(cid, "delivered", code, tag),
        at,
    )
    audit = domain.audit_record(delivery, agency, trace=trace, sender=ctx.source, at=at)
    ctx.emit(out, topics.AUDIT, audit, trace, domain.event_id(cid, "audit", code, tag), at)
    routed = CaseRouted(
        case_id=cid,
        reference=q.reference if q is not None else domain.UNKNOWN,
        initiative_id=q.initiative_id if q is not None else domain.UNKNOWN,
        lead=lead,
        assignments=[assignment],
        urgency=delivery.urgency,
        cause=rr.cause,
        replaces_handoff_id=rr.replaces_handoff_id,
        routed_at=at,
    )
    ctx.emit(out, topics.HANDOFFS, routed, trace, domain.event_id(cid, "routed", tag), at)
    out.writes.roles.append((cid, rr.target, rr.role))
    out.writes.via.append((cid, rr.target, action))
    if rr.role == AgencyRole.LEAD:
        out.writes.leads[cid] = rr.target
        state.lead = rr.target
    state.roles[rr.target] = rr.role  # later events of this batch see it
    state.via[rr.target] = action
    out.stats.deliveries[code] += 1
    out.stats.rerouted[rr.cause.value] += 1
    return True


@dataclass
class RerouteProcessor:
    """loket.handoffs.v1 (group ``loket-router-reroute``): act on declines and escalations."""

    ctx: RouterContext
    store: RedisStore
    name: str = "reroute"
    group_id: str = "loket-router-reroute"
    input_topic: str = topics.HANDOFFS

    def marker(self, event: HandoffDeclined | HandoffEscalated) -> str:
        """The done-marker of the *action* this event asks for: one per (case, cause,
        replaced handoff). A decline-reroute and an escalation-reroute of one handoff are
        different actions; a replay of the same event maps to the same marker."""
        return self.store.done_key("reroute", f"{event.case_id}:{reroute_action(event)}")

    def legacy_marker(self, event: HandoffDeclined | HandoffEscalated) -> str:
        """The marker format before the cause was part of it (``<case>:<handoff_id>``),
        written only for acted-on events: still honoured so that a replay across the
        upgrade stays idempotent. Can go once every such marker expired (case TTL)."""
        return self.store.done_key("reroute", f"{event.case_id}:{event.handoff_id}")

    async def process(self, records: Sequence[ConsumerRecordLike]) -> BatchResult:
        out = BatchResult()
        decoded = [
            (r, env)
            for r, env in _decode_all(self.ctx, out, records, None)
            if isinstance(env.data, HandoffDeclined | HandoffEscalated)
        ]
        if not decoded:
            return out
        ids = [env.data.case_id for _, env in decoded]
        markers = [self.marker(env.data) for _, env in decoded]
        legacy = [self.legacy_marker(env.data) for _, env in decoded]
        states = await self.store.load(ids, full=True)
        flags = await self.store.done(markers + legacy)
        done = [
            new or old
            for new, old in zip(flags[: len(markers)], flags[len(markers) :], strict=True)
        ]
        # markers of the events acted on earlier in this batch (committed together)
        acted_in_batch: set[str] = set()
        for (record, env), marker, is_done in zip(decoded, markers, done, strict=True):
            if is_done or marker in acted_in_batch:
                out.stats.duplicates += 1
                continue
            try:
                state = states[env.data.case_id]
                acted = reroute_case(self.ctx, out, env, record, state, self.store)
            except (ValidationError, ValueError, KeyError) as exc:
                dead_letter(self.ctx, out, record, poison(exc))
                continue
            # only an action taken is "done": an event the router waits on (2nd decline)
            # must not hide the escalation that follows it in the same batch
            if acted:
                acted_in_batch.add(marker)
                out.markers.append(marker)
        return out


# --------------------------------------------------------------------------- consent


@dataclass
class ConsentProcessor:
    """loket.consent.v1 (group ``loket-router-consent``): record withdrawals, request erasure.

    The withdrawal is written to Redis *before* the shares are read (and the routing side
    writes shares before re-reading withdrawals), so a withdrawal racing a routing is
    always seen by one of the two.
    """

    ctx: RouterContext
    store: RedisStore
    name: str = "consent"
    group_id: str = "loket-router-consent"
    input_topic: str = topics.CONSENT

    async def process(self, records: Sequence[ConsumerRecordLike]) -> BatchResult:
        out = BatchResult()
        decoded = [
            (r, env)
            for r, env in _decode_all(self.ctx, out, records, (ConsentWithdrawn, ConsentGiven))
            if isinstance(env.data, ConsentWithdrawn)
        ]
        if not decoded:
            return out
        record_first = Writes()
        for _, env in decoded:
            ev: ConsentWithdrawn = env.data
            record_first.withdrawals.append(
                (ev.case_id, domain.Withdrawal(ev.consent_id, frozenset(ev.categories)))
            )
        await self.store.write(record_first)
        ids = [env.data.case_id for _, env in decoded]
        markers = [
            self.store.done_key("erasure", f"{env.data.case_id}:{env.attributes.id}")
            for _, env in decoded
        ]
        states = await self.store.load(ids, full=True)
        done = await self.store.done(markers)
        for (record, env), marker, is_done in zip(decoded, markers, done, strict=True):
            if is_done or marker in out.markers:
                out.stats.duplicates += 1
                continue
            ev = env.data
            at = self.ctx.clock()
            trace = trace_of(record, env)
            withdrawal = domain.Withdrawal(ev.consent_id, frozenset(ev.categories))
            shares = states[ev.case_id].shares
            for req in domain.erasure_requests(ev.case_id, withdrawal, shares, at=at):
                cats = ",".join(c.value for c in req.categories)
                ident = domain.event_id(
                    cid_of(ev), "erasure", ev.consent_id, req.agency.value, cats
                )
                self.ctx.emit(out, topics.agency_topic(req.agency), req, trace, ident, at)
                out.stats.erasures += 1
            out.markers.append(marker)
        return out


def cid_of(message: Message) -> str:
    return message.case_id
