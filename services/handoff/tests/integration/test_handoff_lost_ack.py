"""B4: decisions whose broker ack is lost or late, on real Kafka and Redis.

The records of a decision land on loket.handoffs.v1 but the handoff service does not get
the ack (in time). Afterwards the projection must hold every landed event exactly once,
no transition may be decided twice (one event id per transition; every record of that
id carries the same content), and nothing a later session wrote may be overwritten.
The lost/late ack is made deterministic by wrapping the publisher: the real publish runs
(records written and acknowledged), then the wrapper raises or holds the ack back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import OutOfOrderSequenceNumber
from handoff_itkit import (
    Producer,
    case_routed,
    client,
    eventually,
    handoff_events,
    running,
    settings_for,
    store_of,
)

from loket_handoff.domain import HandoffState, handoff_id_for
from loket_handoff.errors import Retryable
from loket_schemas import topics
from loket_schemas.events import (
    AcceptHandoff,
    ContactPerson,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
)
from loket_schemas.kafka import decode
from loket_schemas.vocabulary import AgencyCode

pytestmark = pytest.mark.integration

Items = Sequence[tuple[Any, str, Any]]


class AckGate:
    """Wraps ``publisher.publish_many``: the first publish matching ``match`` is really
    published (landed and acknowledged), then the ack is "lost" (``hold=False``: raises
    :class:`Retryable`, as a timeout would) or held back until :attr:`release` is set."""

    def __init__(self, publisher: Any, match: Callable[[Items], bool], *, hold: bool) -> None:
        self.real = publisher.publish_many
        self.match = match
        self.hold = hold
        self.armed = True
        self.landed = asyncio.Event()
        self.release = asyncio.Event()
        publisher.publish_many = self.publish_many

    async def publish_many(self, items: Items) -> None:
        await self.real(items)
        if not (self.armed and self.match(items)):
            return
        self.armed = False
        self.landed.set()
        if not self.hold:
            raise Retryable("test: broker ack lost after the records were written")
        await self.release.wait()  # the ack arrives late


def publishes(kind: type, handoff_id: str) -> Callable[[Items], bool]:
    return lambda items: any(
        isinstance(m, kind) and m.handoff_id == handoff_id for m, _, _ in items
    )


async def case_records(bootstrap: str, prefix: str, case_id: str) -> list[Any]:
    """Every envelope of ``case_id`` on loket.handoffs.v1 up to the end (as of the first
    poll)."""
    topic = topics.prefixed(topics.HANDOFFS, prefix)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[Any] = []
    end: dict[Any, int] | None = None
    try:
        async with asyncio.timeout(20):
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        e = decode(r.value, r.headers)
                        if e.data.case_id == case_id:
                            out.append(e)
                parts = list(consumer.assignment())
                if parts and end is None:
                    end = await consumer.end_offsets(parts)
                if end is not None and all(
                    [await consumer.position(tp) >= end[tp] for tp in parts]
                ):
                    return out
    finally:
        await consumer.stop()


def one_decision_per_transition(envelopes: list[Any]) -> None:
    """Records with the same event id are identical; no transition has two ids."""
    by_id: dict[str, Any] = {}
    by_transition: dict[tuple[str, str], set[str]] = {}
    for e in envelopes:
        if e.attributes.id in by_id:
            assert by_id[e.attributes.id] == e.data, f"{e.attributes.id} decided twice"
        by_id[e.attributes.id] = e.data
        key = (e.data.handoff_id, type(e.data).__name__)
        by_transition.setdefault(key, set()).add(e.attributes.id)
    doubled = {k: v for k, v in by_transition.items() if len(v) > 1}
    assert not doubled, f"transitions with more than one event id: {doubled}"


async def test_lost_ack_of_a_kafka_command_is_not_decided_again(
    loket_settings: dict[str, Any],
) -> None:
    """The accept lands, its ack is lost: the batch retry publishes the SAME event again
    (same id, same occurred_at) instead of deciding again, and applies it once."""
    settings = settings_for(loket_settings)
    case_id = str(uuid.uuid4())
    async with (
        running(settings) as app,
        Producer(settings.kafka_bootstrap, settings.topic_prefix) as producer,
    ):
        store = store_of(app)
        hid = handoff_id_for(case_id, AgencyCode.UWV, 0)
        gate = AckGate(app.state.handoff_publisher, publishes(HandoffAccepted, hid), hold=False)
        await producer.send(topics.HANDOFFS, case_routed(case_id))
        await eventually(lambda: store.get_handoff(hid), what="offer")
        await producer.send(
            topics.HANDOFF_RESPONSES,
            AcceptHandoff(
                case_id=case_id,
                handoff_id=hid,
                agency=AgencyCode.UWV,
                contact=ContactPerson(name="Anna de Vries"),
            ),
            source="agency:uwv",
        )
        await asyncio.wait_for(gate.landed.wait(), 20)
        # the retried batch re-publishes it (it cannot see the echo: the consumer is busy
        # with that batch), so the topic holds two records of the accept
        accepted = await handoff_events(
            settings.kafka_bootstrap,
            settings.topic_prefix,
            lambda e: isinstance(e.data, HandoffAccepted) and e.data.handoff_id == hid,
            count=2,
        )
        assert accepted[0].attributes.id == accepted[1].attributes.id
        assert accepted[0].data == accepted[1].data, "the accept was decided twice"

        async def settled() -> Any:
            h = await store.get_handoff(hid)
            return h if h and h.state is HandoffState.ACCEPTED else None

        await eventually(settled, what="accepted")
        timeline = await store.timeline(case_id)
        assert [e.kind for e in timeline].count("accepted") == 1
        assert (await store.stats()).get("accepted:uwv") == 1
        assert app.state.handoff_service.unconfirmed(case_id) == []


async def test_ack_later_than_the_lock_lease_loses_no_event(
    loket_settings: dict[str, Any],
) -> None:
    """The reported B4 case. uwv's decline lands, its ack comes after the case lock ran
    out; meanwhile svb declines the same case. Before the fix the late session wrote its
    stale case (declined_by [uwv], 1 decline) over svb's, and both echoes were skipped:
    svb's decline was gone from the state and the 2nd decline did not escalate. Now the
    late session writes nothing (its events are unconfirmed, the request answers 503),
    svb's session publishes them again and applies them first, then decides."""
    settings = settings_for(loket_settings)
    case_id = str(uuid.uuid4())
    async with (
        running(settings) as app,
        Producer(settings.kafka_bootstrap, settings.topic_prefix) as producer,
        client(app) as http,
    ):
        store = store_of(app)
        store.lock_ttl_ms = 2000  # a short lease, so the late ack outlives it quickly
        uwv = handoff_id_for(case_id, AgencyCode.UWV, 0)
        svb = handoff_id_for(case_id, AgencyCode.SVB, 0)
        gate = AckGate(app.state.handoff_publisher, publishes(HandoffDeclined, uwv), hold=True)
        await producer.send(topics.HANDOFFS, case_routed(case_id, supporting=(AgencyCode.SVB,)))
        await eventually(lambda: store.get_handoff(svb), what="offers")
        body = {"reason": "niet onze taak", "suggested_agency": "gemeente"}
        first = asyncio.create_task(
            http.post(
                f"/api/v1/handoffs/{uwv}/decline", json=body, headers={"X-API-Key": "dev-uwv"}
            )
        )
        await asyncio.wait_for(gate.landed.wait(), 20)
        lock_key = store.k("lock", case_id)

        async def lock_free() -> bool:
            return not await store.redis.exists(lock_key)

        await eventually(lock_free, what="case lock released or expired")
        second = await http.post(
            f"/api/v1/handoffs/{svb}/decline", json=body, headers={"X-API-Key": "dev-svb"}
        )
        assert second.status_code == 200, second.text
        gate.release.set()
        late = await first

        async def both_declined() -> Any:
            case = await store.get_case(case_id)
            return case if case and case.decline_count == 2 else None

        case = await eventually(both_declined, timeout=20, what="both declines in the state")
        assert set(case.declined_by) == {AgencyCode.UWV, AgencyCode.SVB}
        for hid in (uwv, svb):
            h = await store.get_handoff(hid)
            assert h is not None and h.state in (HandoffState.DECLINED, HandoffState.ESCALATED)
        # the escalation is the last of them on the case's partition: read up to it
        await handoff_events(
            settings.kafka_bootstrap,
            settings.topic_prefix,
            lambda e: e.data.case_id == case_id and isinstance(e.data, HandoffEscalated),
            count=1,
        )
        events = [
            e
            for e in await case_records(settings.kafka_bootstrap, settings.topic_prefix, case_id)
            if isinstance(e.data, HandoffDeclined | HandoffEscalated)
        ]
        one_decision_per_transition(events)
        declined = {
            e.data.handoff_id: e.data for e in events if isinstance(e.data, HandoffDeclined)
        }
        assert sorted(d.decline_count for d in declined.values()) == [1, 2]
        escalated = [e.data for e in events if isinstance(e.data, HandoffEscalated)]
        assert escalated and escalated[0].escalate_to is AgencyCode.MAATWERKLOKET
        stats = await store.stats()
        assert stats.get("declined:uwv") == 1 and stats.get("declined:svb") == 1
        kinds = [e.kind for e in await store.timeline(case_id)]
        assert kinds.count("declined") == 2 and kinds.count("escalated") == 1
        # the late session did not write, so it must not report success either
        assert late.status_code == 503, late.text


async def test_broken_producer_is_replaced(loket_settings: dict[str, Any]) -> None:
    """OutOfOrderSequenceNumber (a broker restart left a sequence gap) never recovers in
    aiokafka: the publisher starts a new producer; the retried request succeeds."""
    settings = settings_for(loket_settings)
    case_id = str(uuid.uuid4())
    async with (
        running(settings) as app,
        Producer(settings.kafka_bootstrap, settings.topic_prefix) as producer,
        client(app) as http,
    ):
        store = store_of(app)
        publisher = app.state.handoff_publisher
        hid = handoff_id_for(case_id, AgencyCode.UWV, 0)
        await producer.send(topics.HANDOFFS, case_routed(case_id))
        await eventually(lambda: store.get_handoff(hid), what="offer")
        broken = publisher.producer

        async def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise OutOfOrderSequenceNumber("test: sequence gap after a broker restart")

        broken.send = refuse
        body = {"contact": {"name": "Anna de Vries"}}
        r = await http.post(
            f"/api/v1/handoffs/{hid}/accept", json=body, headers={"X-API-Key": "dev-uwv"}
        )
        assert r.status_code == 503, r.text

        async def replaced() -> bool:
            return publisher.producer is not broken and not publisher.replacing

        await eventually(replaced, what="producer replaced")
        assert publisher.replacements == 1
        r = await http.post(
            f"/api/v1/handoffs/{hid}/accept", json=body, headers={"X-API-Key": "dev-uwv"}
        )
        assert r.status_code == 200, r.text
        h = await store.get_handoff(hid)
        assert h is not None and h.state is HandoffState.ACCEPTED
