"""Read every Loket topic (read_committed, beginning to end) and check DESIGN.md's invariants.

:func:`snapshot` reads all topics of a stack into a :class:`Snapshot` of decoded records;
``check_*`` functions return a list of human-readable violations (empty = invariant holds):

1. :func:`check_questions_routed_once`: every accepted (HTTP 202) question is on
   ``loket.questions.v1``; no question was taken twice; each case got exactly one
   ``CaseRouted(cause=initial)``.
2. :func:`check_deliveries`: every (case, agency, cause) ``CaseDelivered`` appears exactly as
   often as the ``CaseRouted`` assignments ask for, and carries only data its manifest
   allows (lawful basis from the catalog, or consent that covers it).
3. :func:`expected_owners` / :func:`check_owners`: exactly one responsible office per case,
   moved only by the acceptance of the lead handoff.
4. :func:`check_no_bounce`: no ``HandoffOffered`` to an agency that declined the case;
   escalation to maatwerkloket after 2 declines; one re-route per declined handoff (1st
   decline) and per escalated handoff. :func:`check_offers`: every agency a routing
   assigns is offered the case (handoff processed every ``CaseRouted``).
5. :func:`open_handoffs`: the open handoffs (and their SLA deadlines) a replay of
   ``loket.handoffs.v1`` yields, to compare with the handoff service after a Redis wipe.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from loket_schemas.catalog import load_agencies
from loket_schemas.events import (
    AgencyRole,
    CaseDelivered,
    CaseRouted,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    HandoffResolved,
    HandoffSlaBreached,
    Message,
    MessageDeadLettered,
    QuestionReceived,
    RouteCause,
)
from loket_schemas.kafka import DecodeError, Envelope, decode
from loket_schemas.topics import (
    AUDIT,
    CONSENT,
    DLQ,
    HANDOFF_RESPONSES,
    HANDOFFS,
    QUESTIONS,
    agency_topic,
)
from loket_schemas.vocabulary import AgencyCode, DataCategory, GdprBasis

CONSENT_ARTICLE = GdprBasis.CONSENT


@dataclass(frozen=True)
class Rec:
    """One record as read from Kafka, decoded when it is a valid Loket event."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int
    envelope: Envelope[Any] | None
    error: str | None

    @property
    def data(self) -> Message | None:
        return self.envelope.data if self.envelope is not None else None

    @property
    def event_id(self) -> str | None:
        return self.envelope.attributes.id if self.envelope is not None else None


async def read_topic(
    bootstrap: str, topic: str, *, within: float = 60.0, isolation: str = "read_committed"
) -> list[Rec]:
    """Every record of ``topic`` from the beginning up to the end offsets taken at start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    out: list[Rec] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > 0}
        deadline = time.monotonic() + within
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {pending} not at end offsets")
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset >= end[tp]:
                        continue
                    out.append(_rec(r))
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


def _rec(r: Any) -> Rec:
    headers = tuple((k, bytes(v) if v is not None else b"") for k, v in (r.headers or ()))
    envelope: Envelope[Any] | None = None
    error: str | None = None
    try:
        envelope = decode(r.value, headers)
    except DecodeError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    return Rec(
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        key=r.key,
        value=r.value,
        headers=headers,
        timestamp_ms=r.timestamp,
        envelope=envelope,
        error=error,
    )


@dataclass
class Snapshot:
    """All records of all Loket topics of one stack at one moment."""

    topics: dict[str, list[Rec]]
    prefix: str = ""

    def records(self, topic: str) -> list[Rec]:
        return self.topics.get(self.prefix + topic, [])

    def events(self, topic: str, cls: type[Any]) -> list[Any]:
        return [r.data for r in self.records(topic) if isinstance(r.data, cls)]

    def recs_of(self, topic: str, cls: type[Any]) -> list[Rec]:
        return [r for r in self.records(topic) if isinstance(r.data, cls)]

    @property
    def questions(self) -> list[QuestionReceived]:
        return self.events(QUESTIONS, QuestionReceived)

    @property
    def routed(self) -> list[CaseRouted]:
        return self.events(HANDOFFS, CaseRouted)

    @property
    def deliveries(self) -> list[CaseDelivered]:
        out: list[CaseDelivered] = []
        for code in AgencyCode:
            out.extend(self.events(agency_topic(code), CaseDelivered))
        return out

    @property
    def dead_letters(self) -> list[MessageDeadLettered]:
        return self.events(DLQ, MessageDeadLettered)

    def summary(self) -> dict[str, int]:
        return {t: len(rs) for t, rs in sorted(self.topics.items()) if rs}


def all_topic_names(prefix: str = "") -> list[str]:
    fixed = [QUESTIONS, HANDOFFS, HANDOFF_RESPONSES, CONSENT, AUDIT, DLQ]
    return [prefix + t for t in fixed + [agency_topic(c) for c in AgencyCode]]


async def snapshot(bootstrap: str, prefix: str = "", within: float = 60.0) -> Snapshot:
    names = all_topic_names(prefix)
    results = await asyncio.gather(*(read_topic(bootstrap, n, within=within) for n in names))
    return Snapshot(topics=dict(zip(names, results, strict=True)), prefix=prefix)


# --------------------------------------------------------------------------- invariant 1


def check_questions_routed_once(
    snap: Snapshot,
    accepted: Mapping[str, str],
) -> list[str]:
    """``accepted`` maps a unique client token (in the question text) to the 202's case id."""
    problems: list[str] = []
    by_case: dict[str, list[QuestionReceived]] = defaultdict(list)
    for q in snap.questions:
        by_case[q.case_id].append(q)
    # none lost
    for token, case_id in accepted.items():
        if case_id not in by_case:
            problems.append(f"accepted question {token} (case {case_id}) not on {QUESTIONS}")
    # none taken twice: one case id per client token (token embedded in the text)
    token_cases: dict[str, set[str]] = defaultdict(set)
    for q in snap.questions:
        for token in _tokens(q.text, accepted):
            token_cases[token].add(q.case_id)
    for token, cases in token_cases.items():
        if len(cases) > 1:
            problems.append(f"question {token} became {len(cases)} cases: {sorted(cases)}")
        elif accepted.get(token) not in cases:
            problems.append(f"question {token}: 202 said {accepted.get(token)}, topic {cases}")
    # routed exactly once
    initial = Counter(r.case_id for r in snap.routed if r.cause == RouteCause.INITIAL)
    for case_id in by_case:
        if initial[case_id] != 1:
            problems.append(f"case {case_id}: {initial[case_id]} CaseRouted(cause=initial)")
    for case_id in initial:
        if case_id not in by_case:
            problems.append(f"case {case_id} routed but no QuestionReceived")
    return problems


def _tokens(text: str, accepted: Mapping[str, str]) -> Iterable[str]:
    # tokens are formatted "[q:<token>]" by the traffic driver
    start = text.find("[q:")
    if start < 0:
        return ()
    end = text.find("]", start)
    return (text[start + 3 : end],) if end > 0 else ()


# --------------------------------------------------------------------------- invariant 2


def check_deliveries(snap: Snapshot) -> list[str]:
    problems: list[str] = []
    expected: Counter[tuple[str, str, str]] = Counter()
    for routed in snap.routed:
        for a in routed.assignments:
            expected[(routed.case_id, a.agency.value, routed.cause.value)] += 1
    delivered: Counter[tuple[str, str, str]] = Counter()
    questions = {q.case_id: q for q in snap.questions}
    for code in AgencyCode:
        for rec in snap.recs_of(agency_topic(code), CaseDelivered):
            d: CaseDelivered = rec.data  # type: ignore[assignment]
            if d.agency != code:
                problems.append(f"{d.case_id}: CaseDelivered for {d.agency} on topic of {code}")
            delivered[(d.case_id, d.agency.value, d.cause.value)] += 1
            problems.extend(check_minimised(d, questions.get(d.case_id)))
    for key in expected.keys() | delivered.keys():
        if expected[key] != delivered[key]:
            problems.append(
                f"case {key[0]} agency {key[1]} cause {key[2]}: "
                f"{delivered[key]} CaseDelivered for {expected[key]} routed assignment(s)"
            )
    return problems


def check_minimised(d: CaseDelivered, question: QuestionReceived | None) -> list[str]:
    """Only the data the manifest lists, and each listed share lawful."""
    p: list[str] = []
    tag = f"case {d.case_id} -> {d.agency.value}"
    m = d.manifest
    if m.recipient != d.agency:
        p.append(f"{tag}: manifest recipient {m.recipient}")
    shared = {s.category for s in m.shared}
    if DataCategory.QUESTION_TEXT not in shared and d.text is not None:
        p.append(f"{tag}: text present without question_text in manifest")
    if d.requester is not None:
        if DataCategory.IDENTITY not in shared:
            if getattr(d.requester, "bsn", None) is not None:
                p.append(f"{tag}: requester.bsn present without identity in manifest")
        if getattr(d.requester, "kind", "") == "business" and DataCategory.BUSINESS not in shared:
            p.append(f"{tag}: business requester (KvK) without business in manifest")
        if DataCategory.CONTACT not in shared and d.requester.contact is not None:
            p.append(f"{tag}: requester.contact present without contact in manifest")
    agency = load_agencies().get(d.agency)
    for s in m.shared:
        if s.basis.article == CONSENT_ARTICLE:
            consent = question.consent if question is not None else None
            if consent is None:
                p.append(f"{tag}: {s.category} shared on consent but the question has none")
            elif not consent.covers(s.category, d.agency, m.purpose, d.delivered_at):
                p.append(f"{tag}: {s.category} shared on consent the consent does not cover")
            elif m.consent_reference != consent.consent_id:
                p.append(f"{tag}: consent_reference {m.consent_reference} != {consent.consent_id}")
        else:
            perm = agency.permission(s.category)
            if perm is None:
                p.append(f"{tag}: {s.category} shared but agency may not receive it")
            elif perm.basis.article != s.basis.article:
                p.append(f"{tag}: {s.category} basis {s.basis.article} not {perm.basis.article}")
    return p


# --------------------------------------------------------------------------- invariants 3, 4, 5


@dataclass
class HandoffView:
    handoff_id: str
    case_id: str
    agency: AgencyCode
    role: AgencyRole
    state: str = "offered"
    accept_due_at: datetime | None = None
    resolve_due_at: datetime | None = None
    offered_event_ids: set[str] = field(default_factory=set)


def replay_handoffs(snap: Snapshot) -> dict[str, HandoffView]:
    """Handoff states from ``loket.handoffs.v1`` (events deduplicated by ce_id)."""
    views: dict[str, HandoffView] = {}
    seen: set[str] = set()
    for rec in snap.records(HANDOFFS):
        ev = rec.data
        if ev is None or rec.event_id in seen:
            continue
        seen.add(rec.event_id or "")
        if isinstance(ev, HandoffOffered):
            v = views.setdefault(
                ev.handoff_id,
                HandoffView(ev.handoff_id, ev.case_id, ev.agency, ev.role),
            )
            v.accept_due_at = ev.accept_due_at
            v.offered_event_ids.add(rec.event_id or "")
            continue
        v2 = views.get(getattr(ev, "handoff_id", ""))
        if v2 is None:
            continue
        if isinstance(ev, HandoffAccepted):
            v2.state = "accepted"
            v2.resolve_due_at = ev.resolve_due_at
        elif isinstance(ev, HandoffDeclined):
            v2.state = "declined"
        elif isinstance(ev, HandoffResolved):
            v2.state = "resolved"
        elif isinstance(ev, HandoffEscalated):
            v2.state = "escalated"
    return views


def open_handoffs(snap: Snapshot) -> dict[str, HandoffView]:
    return {k: v for k, v in replay_handoffs(snap).items() if v.state in ("offered", "accepted")}


def expected_owners(snap: Snapshot) -> dict[str, str]:
    """case id -> responsible office (``initiative:<id>`` until the LEAD handoff is accepted
    by a named person, then ``agency:<code>``), replayed from the topics."""
    owners: dict[str, str] = {}
    for q in snap.questions:
        owners.setdefault(q.case_id, f"initiative:{q.initiative_id}")
    views = replay_handoffs(snap)
    seen: set[str] = set()
    for rec in snap.records(HANDOFFS):
        ev = rec.data
        if isinstance(ev, HandoffAccepted) and rec.event_id not in seen:
            seen.add(rec.event_id or "")
            v = views.get(ev.handoff_id)
            if v is not None and v.role == AgencyRole.LEAD:
                owners[ev.case_id] = f"agency:{ev.agency.value}"
    return owners


def check_no_bounce(snap: Snapshot) -> list[str]:
    problems: list[str] = []
    declined: dict[str, set[str]] = defaultdict(set)
    declines: Counter[str] = Counter()
    escalated_bounce: set[str] = set()
    seen: set[str] = set()
    reroutes: Counter[str] = Counter()
    offered_per_handoff: dict[str, set[str]] = defaultdict(set)
    declined_handoffs: dict[str, HandoffDeclined] = {}
    escalated_handoffs: dict[str, str] = {}
    escalation_routes: Counter[str] = Counter()
    for rec in snap.records(HANDOFFS):
        ev = rec.data
        if ev is None:
            continue
        if isinstance(ev, CaseRouted):
            if ev.cause != RouteCause.INITIAL and ev.replaces_handoff_id:
                reroutes[ev.replaces_handoff_id] += 1
                if ev.cause == RouteCause.ESCALATION:
                    escalation_routes[ev.replaces_handoff_id] += 1
            continue
        if rec.event_id in seen:
            continue
        seen.add(rec.event_id or "")
        if isinstance(ev, HandoffOffered):
            offered_per_handoff[ev.handoff_id].add(rec.event_id or "")
            if ev.agency.value in declined[ev.case_id]:
                problems.append(
                    f"case {ev.case_id}: offered to {ev.agency.value} which declined it before"
                )
        elif isinstance(ev, HandoffDeclined):
            declined[ev.case_id].add(ev.agency.value)
            declines[ev.case_id] += 1
            declined_handoffs[ev.handoff_id] = ev
            if ev.decline_count != declines[ev.case_id]:
                problems.append(
                    f"case {ev.case_id}: decline_count {ev.decline_count}, "
                    f"replay counts {declines[ev.case_id]}"
                )
            if not set(declined[ev.case_id]) <= {a.value for a in ev.declined_by}:
                problems.append(f"case {ev.case_id}: declined_by misses {declined[ev.case_id]}")
        elif isinstance(ev, HandoffEscalated):
            escalated_handoffs[ev.handoff_id] = ev.case_id
            if ev.reason.value == "bounce_limit":
                escalated_bounce.add(ev.case_id)
                if ev.escalate_to != AgencyCode.MAATWERKLOKET:
                    problems.append(f"case {ev.case_id}: escalated to {ev.escalate_to}")
    for case_id, n in declines.items():
        if n >= 2 and case_id not in escalated_bounce:
            problems.append(f"case {case_id}: {n} declines but no HandoffEscalated(bounce_limit)")
    for hid, ids in offered_per_handoff.items():
        if len(ids) > 1:
            problems.append(f"handoff {hid}: {len(ids)} distinct HandoffOffered events")
    for hid, n in reroutes.items():
        if n > 1:
            problems.append(f"handoff {hid} re-routed {n} times")
    for hid, dec in declined_handoffs.items():
        if dec.decline_count < 2 and reroutes[hid] != 1:
            problems.append(f"declined handoff {hid} (1st decline) re-routed {reroutes[hid]} times")
    for hid, case_id in escalated_handoffs.items():
        if escalation_routes[hid] != 1:
            problems.append(
                f"case {case_id}: escalated handoff {hid} re-routed {escalation_routes[hid]} "
                "times (cause escalation), expected once"
            )
    return problems


def check_offers(snap: Snapshot) -> list[str]:
    """Every agency a ``CaseRouted`` assigns has a ``HandoffOffered`` of that case: handoff
    processed every routing (no partition stuck, nothing lost).

    An assignment to an agency that declined the case before is offered to maatwerkloket
    instead (handoff's guard). An initial routing's offers follow it on its partition
    (key = case id). A re-routing may find the agency's handoff already open (handoff then
    opens none), so any offer of that case to that agency counts."""
    offers: dict[tuple[str, AgencyCode], list[int]] = defaultdict(list)
    for rec in snap.recs_of(HANDOFFS, HandoffOffered):
        ev = rec.data
        assert isinstance(ev, HandoffOffered)
        offers[(ev.case_id, ev.agency)].append(rec.offset)
    declined: dict[str, set[AgencyCode]] = defaultdict(set)
    initial_seen: set[str] = set()
    problems: list[str] = []
    for rec in snap.records(HANDOFFS):  # per partition in offset order: per case in order
        ev = rec.data
        if isinstance(ev, HandoffDeclined):
            declined[ev.case_id].add(ev.agency)
        if not isinstance(ev, CaseRouted):
            continue
        initial = ev.cause == RouteCause.INITIAL
        if initial:
            if ev.case_id in initial_seen:
                continue  # a duplicate; check_questions_routed_once reports it
            initial_seen.add(ev.case_id)
        for a in ev.assignments:
            agency = a.agency
            if agency in declined[ev.case_id]:
                agency = AgencyCode.MAATWERKLOKET
            at = offers.get((ev.case_id, agency), [])
            if not (any(o > rec.offset for o in at) if initial else at):
                problems.append(
                    f"case {ev.case_id}: {ev.cause.value} routing to {agency.value} "
                    f"(partition {rec.partition}, offset {rec.offset}) has no HandoffOffered"
                )
    return problems


def check_sla_escalations(snap: Snapshot) -> list[str]:
    """Every acceptance SLA breach (not at maatwerkloket) is followed by HandoffEscalated(sla)."""
    breached: set[str] = set()
    escalated: set[str] = set()
    for ev in snap.events(HANDOFFS, HandoffSlaBreached):
        if ev.sla.value == "accept" and ev.agency != AgencyCode.MAATWERKLOKET:
            breached.add(ev.handoff_id)
    for ev in snap.events(HANDOFFS, HandoffEscalated):
        if ev.reason.value == "sla":
            escalated.add(ev.handoff_id)
    return [f"handoff {h}: accept SLA breached, not escalated" for h in breached - escalated]


def check_all(snap: Snapshot, accepted: Mapping[str, str]) -> list[str]:
    return (
        check_questions_routed_once(snap, accepted)
        + check_deliveries(snap)
        + check_no_bounce(snap)
        + check_offers(snap)
        + check_sla_escalations(snap)
    )


# --------------------------------------------------------------------------- waiting


async def wait_events(
    bootstrap: str,
    topic: str,
    predicate: Any,
    *,
    count: int = 1,
    within: float = 60.0,
) -> list[Rec]:
    """Read ``topic`` (read_committed, from the beginning) until ``count`` decoded records
    match ``predicate(rec)``; AssertionError with what was seen after ``within`` seconds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    found: list[Rec] = []
    seen: list[str] = []
    try:
        deadline = time.monotonic() + within
        while len(found) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{topic}: {len(found)}/{count} matching records after {within}s; "
                    f"seen {len(seen)}: {seen[-10:]}"
                )
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                for r in records:
                    rec = _rec(r)
                    seen.append(type(rec.data).__name__ if rec.data else f"poison({rec.error})")
                    if rec.data is not None and predicate(rec) and len(found) < count:
                        found.append(rec)
    finally:
        await consumer.stop()
    return found


def of_case(case_id: str, cls: type[Any] | tuple[type[Any], ...], **fields: Any) -> Any:
    """Predicate: a record of ``case_id`` of type ``cls`` whose fields equal ``fields``."""

    def match(rec: Rec) -> bool:
        d = rec.data
        if not isinstance(d, cls) or d.case_id != case_id:
            return False
        return all(getattr(d, k) == v for k, v in fields.items())

    return match


async def end_offsets(
    bootstrap: str, topics: list[str], isolation: str = "read_committed"
) -> dict[Any, int]:
    """End offset per partition: the last stable offset (``read_committed``, the default)
    or the high watermark (``read_uncommitted``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, isolation_level=isolation
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not tps or len({tp.topic for tp in tps}) < len(topics):
            await consumer._client.force_metadata_update()
            tps = [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def consumer_lag(
    bootstrap: str, topics: list[str], ends: Mapping[Any, int] | None = None
) -> dict[str, int]:
    """``"group topic/partition" -> records not yet consumed`` for every consumer group
    with committed offsets on ``topics`` (the services' groups: test readers have none).

    A committed offset below the last stable offset is only lag if a record visible to
    read_committed readers lies in between: transaction markers and aborted records take
    offsets too, and a consumer never sees them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ends = ends if ends is not None else await end_offsets(bootstrap, topics)
        behind: dict[tuple[str, TopicPartition], int] = {}
        for group, protocol in await admin.list_consumer_groups():
            if protocol != "consumer":
                continue
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                end = ends.get(tp)
                if end is not None and 0 <= meta.offset < end:
                    behind[(group, tp)] = meta.offset
    finally:
        await admin.close()
    if not behind:
        return {}
    start: dict[TopicPartition, int] = {}
    for (_, tp), offset in behind.items():
        start[tp] = min(offset, start.get(tp, offset))
    last_visible = await _last_visible_offsets(bootstrap, start, ends)
    return {
        f"{group} {tp.topic}/{tp.partition}": ends[tp] - offset
        for (group, tp), offset in sorted(behind.items(), key=str)
        if last_visible.get(tp, -1) >= offset
    }


async def _last_visible_offsets(
    bootstrap: str, start: Mapping[TopicPartition, int], ends: Mapping[Any, int]
) -> dict[TopicPartition, int]:
    """Offset of the last record a read_committed reader sees in ``[start, end)``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    last: dict[TopicPartition, int] = {}
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        pending = set(start)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < ends[tp]:
                        last[tp] = max(r.offset, last.get(tp, -1))
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return last


async def settle(
    bootstrap: str,
    prefix: str = "",
    quiet_s: float = 3.0,
    within: float = 120.0,
    lag_grace_s: float = 30.0,
) -> dict[str, int]:
    """Wait until no topic grows for ``quiet_s`` seconds, no transaction is open and every
    consumer group has consumed everything (all services idle).

    Quiet is judged on the high watermarks, and every partition's last stable offset must
    have caught up with it: an open transaction (e.g. of a killed router nobody fenced
    yet) freezes the last stable offset, which would look quiet while read_committed
    readers, the snapshot included, still miss everything after it.

    Quiet topics are not enough: a service that stalls for a few seconds (rejoining its
    group after a restart, a broker coming back) leaves them quiet with its input unread.
    So the services' consumer groups must have committed everything too; a group still
    behind after ``lag_grace_s`` more seconds (a service killed on purpose, or one that is
    stuck: then the invariants will say what is missing) is returned, not waited for."""
    names = all_topic_names(prefix)
    deadline = time.monotonic() + within
    last = await end_offsets(bootstrap, names, "read_uncommitted")
    stable: dict[Any, int] = {}
    quiet_since = time.monotonic()
    lag_since: float | None = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # observing a system we do not control
        now = await end_offsets(bootstrap, names, "read_uncommitted")
        if now != last:
            last, quiet_since, lag_since = now, time.monotonic(), None
        elif time.monotonic() - quiet_since >= quiet_s:
            stable = await end_offsets(bootstrap, names, "read_committed")
            if stable == now:
                lag = await consumer_lag(bootstrap, names, stable)
                if not lag:
                    return {}
                lag_since = lag_since or time.monotonic()
                if time.monotonic() - lag_since >= lag_grace_s:
                    return lag
    open_txn = {str(tp): last[tp] - stable.get(tp, 0) for tp in last if stable.get(tp) != last[tp]}
    raise TimeoutError(f"topics still growing or transactions open after {within}s: {open_txn}")
