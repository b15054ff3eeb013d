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
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import pydantic_core
from pydantic import BaseModel, ValidationError

from loket_router import domain
from loket_router.errors import PoisonMessage
from loket_router.routing import RoutingDecision
from loket_router.store import CaseState, RedisStore, Writes
from loket_schemas import topics
from loket_schemas.catalog import Agency, AgencyCatalog
from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    CaseDelivered,
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    DataShareLogged,
    HandoffDeclined,
    HandoffEscalated,
    Message,
    MessageDeadLettered,
    QuestionReceived,
    RouteCause,
    SharedCategory,
    SharingManifest,
    WithheldCategory,
    WithheldReason,
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
from loket_schemas.vocabulary import (
    AgencyCode,
    BusinessRequester,
    Channel,
    DataCategory,
    GdprBasis,
    LegalBasis,
    PersonRequester,
    Urgency,
)

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


class Outgoing(NamedTuple):
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


class RecordHeaders:
    """Header values shared by every output of one input record (encoded once), with their
    (name, value) header pairs and those of the last subject (case id) used."""

    __slots__ = (
        "_subject",
        "_subject_header",
        "_subject_key",
        "source",
        "source_header",
        "time",
        "time_header",
        "trace_header",
        "traceparent",
    )

    def __init__(self, source: bytes, time: bytes, traceparent: bytes) -> None:
        self.source = source
        self.time = time
        self.traceparent = traceparent
        self.source_header = ("ce_source", source)
        self.time_header = ("ce_time", time)
        self.trace_header = (TRACEPARENT_HEADER, traceparent)
        self._subject: str | None = None
        self._subject_key = b""
        self._subject_header: tuple[str, bytes] = ("ce_subject", b"")

    def subject(self, subject: str) -> tuple[bytes, tuple[str, bytes]]:
        """The record key and ``ce_subject`` header of ``subject`` (the case id)."""
        if subject != self._subject:
            self._subject = subject
            self._subject_key = subject.encode()
            self._subject_header = ("ce_subject", self._subject_key)
        return self._subject_key, self._subject_header

    def __repr__(self) -> str:
        return f"RecordHeaders({self.source!r}, {self.time!r}, {self.traceparent!r})"


#: per message class: its ``ce_type`` and ``ce_dataschema`` header pairs
_TYPE_HEADERS: dict[type[Message], tuple[tuple[str, bytes], tuple[str, bytes]]] = {}
_SPECVERSION_HEADER = ("ce_specversion", SPECVERSION.encode())
_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())


def to_record(message: Message, ident: str, shared: RecordHeaders) -> KafkaRecord:
    """``loket_schemas.kafka.encode(message, ...)`` with the per-record parts precomputed.

    Byte for byte the same record as ``encode`` (tests/unit/test_router_fast_outputs.py
    checks it): CloudEvents binary mode, key = case id, value = the model's JSON
    (:func:`message_json`).
    """
    cls = type(message)
    per_type = _TYPE_HEADERS.get(cls)
    if per_type is None:
        if not cls.EVENT_TYPE:
            raise TypeError(f"{cls.__name__} has no EVENT_TYPE")
        per_type = _TYPE_HEADERS[cls] = (
            ("ce_type", cls.EVENT_TYPE.encode()),
            ("ce_dataschema", schema_uri(cls.EVENT_TYPE).encode()),
        )
    key, subject_header = shared.subject(message.subject)
    headers = (
        _SPECVERSION_HEADER,
        ("ce_id", ident.encode()),
        shared.source_header,
        per_type[0],
        shared.time_header,
        subject_header,
        per_type[1],
        _CONTENT_TYPE_HEADER,
        shared.trace_header,
    )
    return KafkaRecord(key=key, value=message_json(message), headers=headers)


# --------------------------------------------------------------------------- output JSON
#
# The JSON of the three outputs of every routed question (CaseDelivered, DataShareLogged,
# CaseRouted) is written here from the model's fields, byte for byte what pydantic's
# ``model_dump_json()`` gives (no whitespace, fields in declaration order, enums as their
# values, strings escaped like serde_json, which is what ``json.encoder.encode_basestring``
# does; floats and datetimes through pydantic_core itself). pydantic spends most of its
# time on these models reading enum ``.value`` properties. Anything unexpected (another
# field list, a value of another type) falls back to pydantic; tests compare both ways on
# many variants (tests/unit/test_router_fast_outputs.py).


class _Unexpected(Exception):
    """A value the fast JSON writer does not handle: use pydantic's serializer."""


#: JSON of a string (TypeError for anything that is not a str)
_json_str: Callable[[str], str] = json.encoder.encode_basestring
#: enum member -> its JSON (a quoted value); a member's hash and equality are its value's
_ENUM_JSON: dict[str, str] = {
    member: _json_str(member.value)
    for enum in (
        AgencyCode,
        AgencyRole,
        Channel,
        DataCategory,
        GdprBasis,
        RouteCause,
        Urgency,
        WithheldReason,
    )
    for member in enum
}
_FLOAT_JSON: dict[float, str] = {}
#: the last datetime, requester and their JSON (the outputs of a question share them)
_last: dict[str, tuple[Any, str]] = {"time": (None, ""), "requester": (None, "")}
#: id(obj) -> (obj, JSON) of shared/withheld category objects (mostly the same few shared
#: objects, see domain.shared_category; an entry keeps its object, so ids are not reused)
_PART_JSON: dict[int, tuple[Any, str]] = {}


def _unexpected(value: Any) -> str:
    raise _Unexpected(repr(value)[:100])


def _float(value: Any) -> str:
    if type(value) is not float:
        raise _Unexpected(repr(value))
    found = _FLOAT_JSON.get(value)
    if found is None:
        found = pydantic_core.to_json(value).decode()
        if value > 0.0 and len(_FLOAT_JSON) < 4096:  # not 0.0: -0.0 == 0.0 as a key
            _FLOAT_JSON[value] = found
    return found


def _time(value: Any) -> str:
    last = _last["time"]
    if value is last[0]:
        return last[1]
    if type(value) is not datetime:
        raise _Unexpected(repr(value))
    found = pydantic_core.to_json(value).decode()
    _last["time"] = (value, found)
    return found


def _requester(value: Any) -> str:
    """A requester (or none) through pydantic: a nested model is written as on its own."""
    if value is None:
        return "null"
    last = _last["requester"]
    if value is last[0]:
        return last[1]
    if type(value) is not PersonRequester and type(value) is not BusinessRequester:
        raise _Unexpected(repr(value))
    found = value.__pydantic_serializer__.to_json(value).decode()
    _last["requester"] = (value, found)
    return str(found)


def _part(value: Any) -> str:
    """A SharedCategory or WithheldCategory."""
    found = _PART_JSON.get(id(value))
    if found is not None and found[0] is value:
        return found[1]
    d = value.__dict__
    if type(value) is SharedCategory:
        basis = d["basis"]
        if type(basis) is not LegalBasis:
            raise _Unexpected(repr(basis))
        b = basis.__dict__
        law = b["law_reference"]
        text = (
            f'{{"category":{_ENUM_JSON[d["category"]]},'
            f'"basis":{{"article":{_ENUM_JSON[b["article"]]},'
            f'"law_reference":{"null" if law is None else _json_str(law)}}}}}'
        )
    elif type(value) is WithheldCategory:
        text = f'{{"category":{_ENUM_JSON[d["category"]]},"reason":{_ENUM_JSON[d["reason"]]}}}'
    else:
        raise _Unexpected(repr(value))
    if len(_PART_JSON) >= 4096:
        _PART_JSON.clear()
    _PART_JSON[id(value)] = (value, text)
    return text


def _manifest(value: Any) -> str:
    if type(value) is not SharingManifest:
        raise _Unexpected(repr(value))
    d = value.__dict__
    days = d["retention_days"]
    ref = d["consent_reference"]
    return (
        f'{{"recipient":{_ENUM_JSON[d["recipient"]]},"purpose":{_json_str(d["purpose"])},'
        f'"shared":[{",".join(map(_part, d["shared"]))}],'
        f'"withheld":[{",".join(map(_part, d["withheld"]))}],'
        f'"retention_days":{str(days) if type(days) is int else _unexpected(days)},'
        f'"consent_reference":{"null" if ref is None else _json_str(ref)}}}'
    )


def _assignment(value: Any) -> str:
    if type(value) is not AgencyAssignment:
        raise _Unexpected(repr(value))
    d = value.__dict__
    return (
        f'{{"agency":{_ENUM_JSON[d["agency"]]},"role":{_ENUM_JSON[d["role"]]},'
        f'"reasons":[{",".join(map(_json_str, d["reasons"]))}],'
        f'"confidence":{_float(d["confidence"])}}}'
    )


def _delivered_json(d: dict[str, Any]) -> str:
    text = d["text"]
    vulnerable = d["vulnerable"]
    flag = "true" if vulnerable is True else "false" if vulnerable is False else None
    pseudonym = d["subject_pseudonym"]
    return (
        f'{{"case_id":{_json_str(d["case_id"])},"reference":{_json_str(d["reference"])},'
        f'"agency":{_ENUM_JSON[d["agency"]]},"role":{_ENUM_JSON[d["role"]]},'
        f'"lead":{_ENUM_JSON[d["lead"]]},'
        f'"reasons":[{",".join(map(_json_str, d["reasons"]))}],'
        f'"confidence":{_float(d["confidence"])},"channel":{_ENUM_JSON[d["channel"]]},'
        f'"initiative_id":{_json_str(d["initiative_id"])},'
        f'"urgency":{_ENUM_JSON[d["urgency"]]},'
        f'"vulnerable":{flag or _unexpected(vulnerable)},'
        f'"cause":{_ENUM_JSON[d["cause"]]},'
        f'"text":{"null" if text is None else _json_str(text)},'
        f'"requester":{_requester(d["requester"])},'
        f'"subject_pseudonym":{"null" if pseudonym is None else _json_str(pseudonym)},'
        f'"manifest":{_manifest(d["manifest"])},"delivered_at":{_time(d["delivered_at"])}}}'
    )


def _audit_json(d: dict[str, Any]) -> str:
    pseudonym = d["data_subject_pseudonym"]
    return (
        f'{{"case_id":{_json_str(d["case_id"])},"trace_id":{_json_str(d["trace_id"])},'
        f'"span_id":{_json_str(d["span_id"])},'
        f'"processing_activity_id":{_json_str(d["processing_activity_id"])},'
        f'"sender":{_json_str(d["sender"])},"receiver":{_ENUM_JSON[d["receiver"]]},'
        f'"data_subject_pseudonym":{"null" if pseudonym is None else _json_str(pseudonym)},'
        f'"categories":[{",".join([_ENUM_JSON[c] for c in d["categories"]])}],'
        f'"legal_bases":[{",".join(map(_part, d["legal_bases"]))}],'
        f'"occurred_at":{_time(d["occurred_at"])}}}'
    )


def _routed_json(d: dict[str, Any]) -> str:
    replaces = d["replaces_handoff_id"]
    return (
        f'{{"case_id":{_json_str(d["case_id"])},"reference":{_json_str(d["reference"])},'
        f'"initiative_id":{_json_str(d["initiative_id"])},"lead":{_ENUM_JSON[d["lead"]]},'
        f'"assignments":[{",".join(map(_assignment, d["assignments"]))}],'
        f'"urgency":{_ENUM_JSON[d["urgency"]]},"cause":{_ENUM_JSON[d["cause"]]},'
        f'"replaces_handoff_id":{"null" if replaces is None else _json_str(replaces)},'
        f'"routed_at":{_time(d["routed_at"])}}}'
    )


#: message class -> (the field names its writer expects, in order; the writer)
_WRITERS: dict[type[BaseModel], tuple[tuple[str, ...], Callable[[dict[str, Any]], str]]] = {
    CaseDelivered: (
        (
            "case_id",
            "reference",
            "agency",
            "role",
            "lead",
            "reasons",
            "confidence",
            "channel",
            "initiative_id",
            "urgency",
            "vulnerable",
            "cause",
            "text",
            "requester",
            "subject_pseudonym",
            "manifest",
            "delivered_at",
        ),
        _delivered_json,
    ),
    DataShareLogged: (
        (
            "case_id",
            "trace_id",
            "span_id",
            "processing_activity_id",
            "sender",
            "receiver",
            "data_subject_pseudonym",
            "categories",
            "legal_bases",
            "occurred_at",
        ),
        _audit_json,
    ),
    CaseRouted: (
        (
            "case_id",
            "reference",
            "initiative_id",
            "lead",
            "assignments",
            "urgency",
            "cause",
            "replaces_handoff_id",
            "routed_at",
        ),
        _routed_json,
    ),
}
_NESTED_FIELDS: dict[type[BaseModel], tuple[str, ...]] = {
    SharingManifest: (
        "recipient",
        "purpose",
        "shared",
        "withheld",
        "retention_days",
        "consent_reference",
    ),
    SharedCategory: ("category", "basis"),
    WithheldCategory: ("category", "reason"),
    LegalBasis: ("article", "law_reference"),
    AgencyAssignment: ("agency", "role", "reasons", "confidence"),
}
#: message class -> its JSON writer, for the classes whose fields are what the writers
#: expect (a schema change takes a class off this list: pydantic writes it then)
FAST_JSON: dict[type[BaseModel], Callable[[dict[str, Any]], str]] = (
    {cls: writer for cls, (names, writer) in _WRITERS.items() if tuple(cls.model_fields) == names}
    if all(tuple(cls.model_fields) == names for cls, names in _NESTED_FIELDS.items())
    else {}
)


def message_json(message: BaseModel) -> bytes:
    """``message.model_dump_json().encode()``, written directly for the routing outputs."""
    writer = FAST_JSON.get(type(message))
    if writer is not None:
        try:
            return writer(message.__dict__).encode()
        except (_Unexpected, KeyError, TypeError, AttributeError, UnicodeEncodeError):
            pass  # pydantic writes it (or raises its own error)
    return message.__pydantic_serializer__.to_json(message)


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
    #: agency code -> (the catalog's agency, its prefixed topic)
    _agencies: dict[AgencyCode, tuple[Agency, str]] = field(default_factory=dict, repr=False)

    def topic(self, name: str) -> str:
        found = self._topics.get(name)
        if found is None:
            found = self._topics[name] = topics.prefixed(name, self.topic_prefix)
        return found

    def agency(self, code: AgencyCode) -> tuple[Agency, str]:
        """The catalog entry of an agency and the (prefixed) topic it receives cases on.

        ``catalog.get`` and ``topics.agency_topic`` once per agency (KeyError / ValueError
        for an unknown code, as those raise)."""
        found = self._agencies.get(code)
        if found is None:
            found = (self.catalog.get(code), self.topic(topics.agency_topic(code)))
            self._agencies[code] = found
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


class _SpanIds:
    """Random 64-bit span ids as 16 hex digits, like ``secrets.token_hex(8)`` (which
    ``TraceContext.child`` uses), read from ``os.urandom`` 512 at a time: one system call
    per 512 ids instead of one per routed question."""

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def next(self) -> str:
        pos = self._pos
        if pos >= len(self._hex):
            self._hex = os.urandom(4096).hex()
            pos = 0
        self._pos = pos + 16
        return self._hex[pos : pos + 16]


_span_ids = _SpanIds()


def trace_of(record: ConsumerRecordLike, env: Envelope[Any] | None = None) -> TraceContext:
    """The router's span for this record: a child of the incoming traceparent (or new);
    ``parent.child()`` with a pooled random span id."""
    parent = env.attributes.trace if env is not None else None
    if parent is None:
        for name, value in record.headers or ():
            if name == "traceparent":
                parent = parse_traceparent(value.decode("utf-8", "replace"))
    if parent is None:
        parent = new_trace()
    return TraceContext(parent.trace_id, _span_ids.next(), parent.flags)


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
    """Route one question: deliveries, audit records, CaseRouted, state, marker.

    Everything is built first and added to ``out`` only when all of it was built: a
    question that fails half-way (poison) leaves nothing behind."""
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
    audit_topic = ctx.topic(topics.AUDIT)
    outgoing: list[Outgoing] = []
    roles: list[tuple[str, AgencyCode, AgencyRole]] = []
    shares: list[tuple[str, domain.ConsentShare]] = []
    codes: list[str] = []
    for a in assignments:
        agency, agency_topic = ctx.agency(a.agency)
        manifest = domain.build_manifest(categories, agency, q.consent, at, withdrawals)
        delivery = domain.deliver(q, a, decision.lead, manifest, pseudonym=pseudonym, at=at)
        code = a.agency.value
        outgoing.append(
            Outgoing(
                agency_topic,
                to_record(
                    delivery,
                    domain.event_id(cid, "delivered", code, "initial"),
                    shared_headers,
                ),
            )
        )
        audit = domain.audit_record(delivery, agency, trace=trace, sender=ctx.source, at=at)
        outgoing.append(
            Outgoing(
                audit_topic,
                to_record(audit, domain.event_id(cid, "audit", code, "initial"), shared_headers),
            )
        )
        roles.append((cid, a.agency, a.role))
        shared = domain.consent_shares(manifest)
        if shared and q.consent is not None:
            shares.append((cid, domain.ConsentShare(a.agency, q.consent.consent_id, shared)))
        codes.append(code)
    routed = domain.case_routed(q, decision.lead, assignments, at=at)
    outgoing.append(
        Outgoing(
            ctx.topic(topics.HANDOFFS),
            to_record(routed, domain.event_id(cid, "routed", "initial"), shared_headers),
        )
    )
    # all built without error: add to the batch
    out.outgoing.extend(outgoing)
    out.writes.questions.append(q)
    out.writes.leads[cid] = decision.lead
    out.writes.roles.extend(roles)
    out.writes.shares.extend(shares)
    deliveries = out.stats.deliveries
    for code in codes:
        deliveries[code] += 1
    out.stats.routed += 1
    out.markers.append(store.done_key("routed", cid))
    if shares:
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
