"""Hypothesis fuzzing on real Kafka: random records on every input topic of a running stack.

Each example writes a batch of random records (random key, value and headers, kept only
when no consumer could decode them) to loket.questions.v1, loket.handoffs.v1,
loket.handoff-responses.v1 and loket.consent.v1, then a valid question and a valid
AcceptHandoff command. Asserts: every random record is dead-lettered exactly once by every
service that consumes its topic, and the valid messages afterwards are still processed
(no consumer crashed or got stuck).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_invariants import of_case, settle, snapshot, wait_events
from e2e_stack import Stack, stack_env
from e2e_traffic import TrafficDriver

from loket_schemas.events import (
    AcceptHandoff,
    AgencyRole,
    CaseRouted,
    ContactPerson,
    HandoffAccepted,
    HandoffOffered,
    MessageDeadLettered,
)
from loket_schemas.kafka import DecodeError, decode, encode
from loket_schemas.topics import CONSENT, DLQ, HANDOFF_RESPONSES, HANDOFFS, QUESTIONS

pytestmark = [pytest.mark.e2e]

CONSUMERS: dict[str, set[str]] = {
    QUESTIONS: {"router"},
    HANDOFFS: {"router", "handoff"},
    HANDOFF_RESPONSES: {"handoff"},
    CONSENT: {"router", "handoff"},
}
CE_NAMES = ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"]


@pytest.fixture(scope="module")
async def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("fuzz"), extra_env=stack_env()) as stack:
        yield stack


def is_poison(value: bytes | None, headers: list[tuple[str, bytes]]) -> bool:
    try:
        decode(value, headers)
    except DecodeError:
        return True
    return False


record_st = st.tuples(
    st.one_of(st.none(), st.binary(min_size=1, max_size=40)),
    st.one_of(st.none(), st.binary(max_size=300), st.just(b"{}"), st.just(b"[]")),
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(CE_NAMES), st.text(min_size=1, max_size=12)),
            st.one_of(
                st.binary(max_size=30),
                st.sampled_from([b"1.0", b"application/json", b"nl.loket.handoff.accept.v1", b"x"]),
            ),
        ),
        max_size=8,
    ),
).filter(lambda r: (r[0] is not None or r[1] is not None) and is_poison(r[1], r[2]))


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(record_st, min_size=5, max_size=25))
async def test_random_records_on_every_input_topic_land_in_dlq(
    fuzz_stack: Stack, batch: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
) -> None:
    stack = fuzz_stack
    produced: list[tuple[str, int, int, str]] = []
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        for topic in CONSUMERS:
            for key, value, headers in batch:
                md = await producer.send_and_wait(
                    stack.topic(topic), value, key=key, headers=headers
                )
                produced.append((stack.topic(topic), md.partition, md.offset, topic))
    finally:
        await producer.stop()

    # a valid question afterwards still flows: routed, offered, accepted over Kafka
    driver = TrafficDriver(stack.url("intake"), retry_deadline_s=30)
    try:
        sub = driver.new_submission()
        await driver.submit(sub)
        assert sub.case_id, sub.final_error
    finally:
        await driver.aclose()
    case_id = sub.case_id
    await wait_events(stack.bootstrap, stack.topic(HANDOFFS), of_case(case_id, CaseRouted))
    offers = await wait_events(
        stack.bootstrap,
        stack.topic(HANDOFFS),
        of_case(case_id, HandoffOffered, role=AgencyRole.LEAD),
    )
    lead: HandoffOffered = offers[0].data
    command = encode(
        AcceptHandoff(
            case_id=case_id,
            handoff_id=lead.handoff_id,
            agency=lead.agency,
            contact=ContactPerson(name="F. Uzzer"),
        ),
        source="urn:nld:loket:agency:fuzz",
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            stack.topic(HANDOFF_RESPONSES),
            command.value,
            key=command.key,
            headers=list(command.headers),
        )
    finally:
        await producer.stop()
    await wait_events(stack.bootstrap, stack.topic(HANDOFFS), of_case(case_id, HandoffAccepted))

    await settle(stack.bootstrap, stack.topic_prefix, quiet_s=2)
    snap = await snapshot(stack.bootstrap, stack.topic_prefix)
    dead: Counter[tuple[str, str, int, int]] = Counter(
        (d.service, d.original_topic, d.partition, d.offset)
        for d in snap.events(DLQ, MessageDeadLettered)
    )
    for topic, partition, offset, plain in produced:
        for service in CONSUMERS[plain]:
            assert dead[(service, topic, partition, offset)] == 1, (
                service,
                topic,
                partition,
                offset,
                dead[(service, topic, partition, offset)],
            )
