"""Batch processing of consumed records (in-memory records and publisher; Redis is real).

Checks decode -> handler -> publisher, poison -> DLQ, invalid command -> rejection, the
echo of our own events skipped without Redis, per-case order inside a batch with
concurrent cases, retry of only the failed case groups, the batch session (one lock+load
and one write call per batch, a case locked elsewhere in its own session, the lock token
fencing per case, the scripts reloaded by sha), the consumer loop's commit handling, and
the OpenAPI description of the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError

from loket_handoff.app import create_app
from loket_handoff.consumer import HandoffConsumer
from loket_handoff.domain import handoff_id_for
from loket_handoff.errors import LeaseExpired, Retryable
from loket_handoff.settings import HandoffSettings
from loket_schemas import topics
from loket_schemas.events import (
    AcceptHandoff,
    AgencyAssignment,
    AgencyRole,
    CaseRouted,
    ContactPerson,
    HandoffAccepted,
    Message,
)
from loket_schemas.kafka import decode, encode, service_source
from loket_schemas.tracing import TraceContext
from loket_schemas.vocabulary import AgencyCode


@dataclass
class Rec:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int = 0
    offset: int = 0


class Recorder:
    """Publisher + DLQ port: records what would go to Kafka; may fail for some cases."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Message]] = []
        self.records: list[Rec] = []
        self.dead: list[dict[str, Any]] = []
        self.fail_cases: set[str] = set()

    async def publish(self, message: Message, *, event_id: str, trace: TraceContext | None) -> None:
        await self.publish_many([(message, event_id, trace)])

    async def publish_many(self, items: list[tuple[Message, str, TraceContext | None]]) -> None:
        for message, _, _ in items:
            if message.case_id in self.fail_cases:
                raise Retryable("simulated Kafka trouble")
        for message, event_id, trace in items:
            self.events.append((event_id, message))
            rec = encode(message, source=service_source("handoff"), trace=trace, event_id=event_id)
            self.records.append(Rec(topics.HANDOFFS, rec.key, rec.value, list(rec.headers)))


class Dlq:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def publish(self, value: bytes, *, key: bytes, headers: dict[str, str]) -> None:
        self.sent.append(json.loads(value))


def record(topic: str, message: Message, source: str = "router", offset: int = 0) -> Rec:
    rec = encode(message, source=service_source(source))
    return Rec(topic, rec.key, rec.value, list(rec.headers), offset=offset)


def routed(case_id: str, agency: AgencyCode = AgencyCode.DUO) -> CaseRouted:
    return CaseRouted(
        case_id=case_id,
        reference=f"LK-{case_id[:4].upper()}-0001",
        initiative_id="bibliotheek-rotterdam-centrale",
        lead=agency,
        assignments=[AgencyAssignment(agency=agency, role=AgencyRole.LEAD, confidence=1)],
        routed_at=datetime.now(UTC),
    )


def accept(case_id: str, agency: AgencyCode = AgencyCode.DUO) -> AcceptHandoff:
    return AcceptHandoff(
        case_id=case_id,
        handoff_id=handoff_id_for(case_id, agency, 0),
        agency=agency,
        contact=ContactPerson(name="Test Medewerker"),
    )


@pytest.fixture
async def wired(redis_url: str, redis_prefix: str) -> Any:
    settings = HandoffSettings(
        redis_url=redis_url, redis_key_prefix=redis_prefix, topic_prefix="", handoff_dev_keys=True
    )
    app = create_app(settings)
    await app.state.handoff_store.mark_ready()  # no rebuild from Kafka in this tier
    recorder, dlq = Recorder(), Dlq()
    app.state.handoff_service.publisher = recorder
    processor = app.state.handoff_processor
    processor.dlq = dlq
    try:
        yield app, processor, recorder, dlq
    finally:
        await app.state.redis.aclose()


async def test_case_routed_offers_echo_poison_and_invalid_command(wired: Any) -> None:
    app, processor, recorder, dlq = wired
    store = app.state.handoff_store
    case_id = str(uuid.uuid4())
    failed, error = await processor.process([record(topics.HANDOFFS, routed(case_id))])
    assert (failed, error) == ([], None)
    [(_, offer)] = recorder.events
    assert offer.handoff_id == handoff_id_for(case_id, AgencyCode.DUO, 0)
    assert offer.agency is AgencyCode.DUO and offer.from_office.startswith("initiative:")
    # the echo of our own offer is skipped without touching Redis
    timeline_before = await store.timeline(case_id)
    await processor.process(recorder.records)
    assert processor.echoes_skipped == 1
    assert await store.timeline(case_id) == timeline_before
    # poison: not a CloudEvent at all
    await processor.process([Rec(topics.HANDOFFS, b"x", b"\xff garbage", [], 2, 7)])
    assert dlq.sent[-1]["original_topic"] == topics.HANDOFFS
    assert dlq.sent[-1]["error_class"] == "MissingAttribute"
    assert (dlq.sent[-1]["partition"], dlq.sent[-1]["offset"]) == (2, 7)
    # invalid decline (no reason) on Kafka -> HandoffResponseRejected, not the DLQ
    bad = {"case_id": case_id, "handoff_id": offer.handoff_id, "agency": "duo"}
    command_id = str(uuid.uuid4())
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", command_id.encode()),
        ("ce_source", b"urn:agency:duo"),
        ("ce_type", b"nl.loket.handoff.decline.v1"),
        ("content-type", b"application/json"),
    ]
    await processor.process(
        [Rec(topics.HANDOFF_RESPONSES, case_id.encode(), json.dumps(bad).encode(), headers)]
    )
    rejected = recorder.events[-1][1]
    assert rejected.command_id == command_id and "invalid" in rejected.reason
    assert len(dlq.sent) == 1


async def test_batch_keeps_case_order_and_retries_only_failed_cases(wired: Any) -> None:
    app, processor, recorder, _ = wired
    store = app.state.handoff_store
    cases = [str(uuid.uuid4()) for _ in range(20)]
    # one batch: every case routed then accepted (same key: handled in this order)
    batch = [record(topics.HANDOFFS, routed(c)) for c in cases] + [
        record(topics.HANDOFF_RESPONSES, accept(c), source="urn:agency:duo") for c in cases
    ]
    recorder.fail_cases = {cases[3], cases[11]}
    failed, error = await processor.process(batch)
    assert isinstance(error, Retryable)
    assert {r.key.decode() for r in failed} == {cases[3], cases[11]}
    assert len(failed) == 4  # both records of each failed case, in order
    recorder.fail_cases = set()
    assert await processor.process(failed) == ([], None)
    for c in cases:
        case = await store.get_case(c)
        assert case is not None and case.owner == "agency:duo"
        kinds = [e.kind for e in await store.timeline(c)]
        assert kinds == ["routed", "offered", "accepted"]
    # the whole batch again (a redelivery after a failed commit) changes nothing
    published = len(recorder.events)
    assert await processor.process(batch) == ([], None)
    assert len(recorder.events) == published
    assert [e.kind for e in await store.timeline(cases[0])] == ["routed", "offered", "accepted"]


async def test_batch_session_locks_loads_and_writes_every_case_in_one_call_each(
    wired: Any,
) -> None:
    """A batch of many cases costs two Redis script calls (lock+load, write+release),
    whatever the number of cases; every lock is released afterwards."""
    app, processor, recorder, _ = wired
    store = app.state.handoff_store
    calls: list[str] = []
    real = store._send_packed

    async def counting(command: tuple[Any, ...]) -> Any:
        calls.append(command[1])
        return await real(command)

    store._send_packed = counting
    cases = [str(uuid.uuid4()) for _ in range(30)]
    batch = [record(topics.HANDOFFS, routed(c)) for c in cases]
    assert await processor.process(batch) == ([], None)
    assert calls == [store._lock_load_many.sha, store._write_many.sha]
    assert len(recorder.events) == 30
    for c in cases:
        assert [e.kind for e in await store.timeline(c)] == ["routed", "offered"]
        assert not await store.redis.exists(store.k("lock", c))


async def test_case_locked_elsewhere_waits_for_its_lock_in_its_own_session(wired: Any) -> None:
    """A case whose lock another session holds (HTTP API, timer, other instance) is not
    part of the batch session: it waits for the lock and is handled in its own session,
    against what the other session wrote."""
    app, processor, _, _ = wired
    store, service = app.state.handoff_store, app.state.handoff_service
    busy, free = str(uuid.uuid4()), str(uuid.uuid4())
    assert await processor.process([record(topics.HANDOFFS, routed(busy))]) == ([], None)
    holding, waiting, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def other_session() -> None:
        async with service.case_session(busy):
            holding.set()
            await release.wait()

    real_session = service.case_session

    def session_spy(case_id: str) -> Any:
        waiting.set()
        return real_session(case_id)

    service.case_session = session_spy
    other = asyncio.create_task(other_session())
    await holding.wait()
    batch = [
        record(topics.HANDOFF_RESPONSES, accept(busy), source="urn:agency:duo"),
        record(topics.HANDOFFS, routed(free)),
    ]
    handling = asyncio.create_task(processor.process(batch))
    await waiting.wait()  # the busy case went to its own session (waiting for the lock)
    assert not handling.done()
    release.set()
    await other
    assert await handling == ([], None)
    case = await store.get_case(busy)
    assert case is not None and case.owner == "agency:duo"
    assert [e.kind for e in await store.timeline(free)] == ["routed", "offered"]
    for c in (busy, free):
        assert not await store.redis.exists(store.k("lock", c))


async def test_lease_lost_before_the_batch_write_writes_nothing_of_that_case(
    wired: Any,
) -> None:
    """B4 fencing per case in the batch write: a case whose lock was taken over while its
    offers were published writes nothing (the other cases are written); its offers stay
    unconfirmed, and the retry publishes the SAME events again instead of deciding anew."""
    app, processor, recorder, _ = wired
    store, service = app.state.handoff_store, app.state.handoff_service
    lost, kept = str(uuid.uuid4()), str(uuid.uuid4())
    real_publish = recorder.publish_many

    async def publish_then_lose_lock(items: list[tuple[Message, str, Any]]) -> None:
        await real_publish(items)
        if any(m.case_id == lost for m, _, _ in items):
            # the lease ran out and another session took the lock meanwhile
            await store.redis.set(store.k("lock", lost), "another-session")

    recorder.publish_many = publish_then_lose_lock
    batch = [record(topics.HANDOFFS, routed(lost)), record(topics.HANDOFFS, routed(kept))]
    failed, error = await processor.process(batch)
    assert isinstance(error, LeaseExpired)
    assert [r.key.decode() for r in failed] == [lost]
    assert await store.get_case(lost) is None and await store.timeline(lost) == []
    assert [e.kind for e in await store.timeline(kept)] == ["routed", "offered"]
    [(offer_id, offer)] = [(i, m) for i, m in recorder.events if m.case_id == lost]
    assert offer_id in service.unconfirmed(lost)  # with the CaseRouted applied with it
    assert await store.redis.get(store.k("lock", lost)) == b"another-session"
    await store.redis.delete(store.k("lock", lost))  # the other session ends
    recorder.publish_many = real_publish
    assert await processor.process(failed) == ([], None)
    again = [(i, m) for i, m in recorder.events if m.case_id == lost]
    assert again == [(offer_id, offer), (offer_id, offer)]  # published again, not re-decided
    assert [e.kind for e in await store.timeline(lost)] == ["routed", "offered"]
    assert service.unconfirmed(lost) == []
    assert (await store.stats()).get("offered:duo") == 2


async def test_failed_step_keeps_the_written_steps_before_it(wired: Any) -> None:
    """A case whose second record fails still gets the first record's (acknowledged)
    events written; the retry of both records decides nothing twice."""
    app, processor, recorder, _ = wired
    store = app.state.handoff_store
    case_id = str(uuid.uuid4())
    real_publish = recorder.publish_many

    async def accept_fails(items: list[tuple[Message, str, Any]]) -> None:
        if any(isinstance(m, HandoffAccepted) for m, _, _ in items):
            raise Retryable("simulated Kafka trouble")
        await real_publish(items)

    recorder.publish_many = accept_fails
    batch = [
        record(topics.HANDOFFS, routed(case_id)),
        record(topics.HANDOFF_RESPONSES, accept(case_id), source="urn:agency:duo"),
    ]
    failed, error = await processor.process(batch)
    assert isinstance(error, Retryable) and len(failed) == 2
    assert [e.kind for e in await store.timeline(case_id)] == ["routed", "offered"]
    assert not await store.redis.exists(store.k("lock", case_id))
    recorder.publish_many = real_publish
    assert await processor.process(failed) == ([], None)
    assert [e.kind for e in await store.timeline(case_id)] == ["routed", "offered", "accepted"]
    assert [type(m).__name__ for _, m in recorder.events] == [
        "HandoffOffered",
        "HandoffAccepted",
    ]


async def test_batch_scripts_are_loaded_again_after_a_redis_script_flush(wired: Any) -> None:
    """The batch scripts are sent by their sha; an unknown sha (Redis restarted or its
    script cache flushed) loads the script again."""
    app, processor, _, _ = wired
    store = app.state.handoff_store
    store._lock_load_many.sha = "0" * 40
    store._write_many.sha = "0" * 40
    case_id = str(uuid.uuid4())
    assert await processor.process([record(topics.HANDOFFS, routed(case_id))]) == ([], None)
    assert [e.kind for e in await store.timeline(case_id)] == ["routed", "offered"]
    assert store._write_many.sha != "0" * 40


class FakeConsumer:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.error is not None:
            raise self.error
        self.commits.append(offsets)


class ListProcessor:
    def __init__(self, fail_times: int) -> None:
        self.fail_times = fail_times
        self.calls: list[int] = []

    async def process(self, records: list[Any]) -> tuple[list[Any], BaseException | None]:
        self.calls.append(len(records))
        if self.fail_times:
            self.fail_times -= 1
            return list(records[:1]), Retryable("busy")
        return [], None


def consumer_for(app: Any, processor: Any) -> HandoffConsumer:
    return HandoffConsumer(
        processor,
        bootstrap="unused:9092",
        topics=["t"],
        group_id="g",
        metrics=app.state.handoff_metrics,
        log=app.state.runtime.log,
        retry_backoff_s=0.001,
    )


async def test_consumer_commits_explicit_offsets_after_retrying_failed_groups(
    wired: Any,
) -> None:
    app = wired[0]
    processor = ListProcessor(fail_times=2)
    loop = consumer_for(app, processor)
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    batch = {tp0: [Rec("t", b"a", b"", [], 0, 5), Rec("t", b"b", b"", [], 0, 6)],
             tp1: [Rec("t", b"c", b"", [], 1, 41)]}  # fmt: skip
    fake = FakeConsumer(None)
    await loop._handle_batch(fake, batch)
    assert processor.calls == [3, 1, 1]  # only the failed records are retried
    await loop.commit_done()  # the commit runs while the next batch is fetched
    assert fake.commits == [{tp0: 7, tp1: 42}]
    # the next batch's commit waits for the previous one: commits stay in order
    await loop._handle_batch(fake, {tp0: [Rec("t", b"a", b"", [], 0, 7)]})
    await loop._handle_batch(fake, {tp1: [Rec("t", b"c", b"", [], 1, 42)]})
    await loop.commit_done()
    assert fake.commits == [{tp0: 7, tp1: 42}, {tp0: 8}, {tp1: 43}]


async def test_a_failed_offset_commit_surfaces_at_the_next_batch(wired: Any) -> None:
    """The commit runs in the background; its error (not a rebalance) is raised when the
    next batch commits, which restarts the loop from the committed offsets."""
    app = wired[0]
    loop = consumer_for(app, ListProcessor(fail_times=0))
    fake = FakeConsumer(KafkaConnectionError("coordinator gone"))
    await loop._handle_batch(fake, {TopicPartition("t", 0): [Rec("t", b"a", b"", [], 0, 5)]})
    with pytest.raises(KafkaConnectionError):
        await loop._handle_batch(fake, {TopicPartition("t", 0): [Rec("t", b"a", b"", [], 0, 6)]})
    assert app.state.handoff_metrics.commit_failures._value.get() == 1


async def test_consumer_survives_a_commit_that_fails_after_a_rebalance(wired: Any) -> None:
    app = wired[0]
    loop = consumer_for(app, ListProcessor(fail_times=0))
    batch = {TopicPartition("t", 0): [Rec("t", b"a", b"", [], 0, 5)]}
    fake = FakeConsumer(CommitFailedError("rebalanced"))
    await loop._handle_batch(fake, batch)
    await loop.commit_done()  # does not raise
    assert app.state.handoff_metrics.commit_failures._value.get() == 1


def test_openapi_describes_error_responses() -> None:
    app = create_app(HandoffSettings(handoff_dev_keys=False))
    spec = app.openapi()
    decline = spec["paths"]["/api/v1/handoffs/{handoff_id}/decline"]["post"]
    assert {"200", "401", "403", "404", "409", "422", "503"} <= set(decline["responses"])
    assert "/api/v1/status/{reference}" in spec["paths"]
    assert "/api/v1/cases/{case_id}" in spec["paths"]


def test_encode_roundtrip_of_published_event_headers() -> None:
    """What the KafkaPublisher sends decodes with the shared binding."""
    event = CaseRouted(
        case_id="c1",
        reference="LK-AAAA-BBBB",
        initiative_id="x",
        lead=AgencyCode.UWV,
        assignments=[AgencyAssignment(agency=AgencyCode.UWV, role=AgencyRole.LEAD, confidence=1)],
        routed_at=datetime.now(UTC),
    )
    rec = encode(event, source=service_source("handoff"), event_id="e1")
    env: Any = decode(rec.value, rec.headers)
    assert env.attributes.id == "e1" and env.data == event


def test_handoff_hash_keeps_event_times_exactly() -> None:
    """The projection returns the times the events carry (microseconds), and still reads
    the millisecond stamps of the first layout."""
    from datetime import timedelta

    from loket_handoff.domain import Handoff, HandoffState
    from loket_handoff.store import decode_handoff, encode_handoff, ms
    from loket_schemas.vocabulary import Urgency

    t = datetime(2026, 11, 29, 6, 14, 22, 5779, tzinfo=UTC)
    h = Handoff(
        handoff_id="h1",
        case_id=str(uuid.uuid4()),
        agency=AgencyCode.UWV,
        role=AgencyRole.LEAD,
        state=HandoffState.ACCEPTED,
        urgency=Urgency.NORMAL,
        initiative_id="x",
        reference="LK-AAAA-BBBB",
        offered_at=t,
        accept_due_at=t + timedelta(seconds=25.000123),
        accept_warn_at=t + timedelta(seconds=18.75),
        accepted_at=t + timedelta(seconds=3, microseconds=7),
        expected_by=t + timedelta(days=2, microseconds=1),
    )
    assert decode_handoff("h1", encode_handoff(h)) == h
    old = encode_handoff(h) | {"t": str(ms(t))}
    assert decode_handoff("h1", old).offered_at == t.replace(microsecond=5000)
