"""Poison on every input topic while 2,000 questions flow.

Every undecodable record on loket.questions.v1, loket.handoffs.v1,
loket.handoff-responses.v1 and loket.consent.v1 lands in loket.dlq.v1 exactly once per
consuming service (with its original topic and offset), and the flow around it goes on:
every invariant still holds afterwards.
"""

from __future__ import annotations

from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer
from e2e_stack import Stack
from e2e_traffic import TrafficDriver
from fault_helpers import owner_violations, run_flow

from loket_schemas.events import MessageDeadLettered
from loket_schemas.topics import CONSENT, DLQ, HANDOFF_RESPONSES, HANDOFFS, QUESTIONS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

#: Which services consume each input topic (DESIGN.md topics table and the protocol).
CONSUMERS: dict[str, set[str]] = {
    QUESTIONS: {"router"},
    HANDOFFS: {"router", "handoff"},
    HANDOFF_RESPONSES: {"handoff"},
    CONSENT: {"router", "handoff"},
}

CE = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"poison-1"),
    ("ce_source", b"urn:nld:loket:service:fuzz"),
    ("ce_time", b"2025-01-01T00:00:00Z"),
    ("content-type", b"application/json"),
]


def poison_records(topic: str) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """(key, value, headers) of records no consumer can decode."""
    typ = {
        QUESTIONS: b"nl.loket.question.received.v1",
        HANDOFFS: b"nl.loket.handoff.declined.v1",
        HANDOFF_RESPONSES: b"nl.loket.handoff.accept.v1",
        CONSENT: b"nl.loket.consent.withdrawn.v1",
    }[topic]
    return [
        (b"case-garbage", b"\x00\xff garbage \xfe", []),  # no CloudEvents headers at all
        (b"case-notjson", b"{not json", [*CE, ("ce_type", typ)]),
        (b"case-schema", b'{"case_id": "case-schema", "x": 1}', [*CE, ("ce_type", typ)]),
        (b"case-unknown", b"{}", [*CE, ("ce_type", b"nl.loket.nothing.v9")]),
        (None, b'{"a": [[[[[[[[[[]]]]]]]]]]}', [*CE, ("ce_type", b"\xff\xfe")]),
        (b"case-tombstone", None, [*CE, ("ce_type", typ)]),
        (b"case-v2", b"{}", [*CE, ("ce_type", typ.replace(b".v1", b".v2"))]),
    ]


async def test_poison_on_every_input_topic_is_dead_lettered_and_flow_continues(
    stack: Stack,
) -> None:
    produced: dict[tuple[str, int, int], str] = {}

    async def fault(stack: Stack, _driver: TrafficDriver) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            for topic in CONSUMERS:
                for key, value, headers in poison_records(topic):
                    md = await producer.send_and_wait(
                        stack.topic(topic), value, key=key, headers=headers
                    )
                    produced[(stack.topic(topic), md.partition, md.offset)] = topic
        finally:
            await producer.stop()

    result = await run_flow(stack, n=2000, rate=200.0, fault=fault, fault_after=0.3)
    print(f"\n[poison] {result.summary()}")
    assert result.violations == [], result.violations[:20]
    assert await owner_violations(stack, result.snap, sample=100) == []

    dead: Counter[tuple[str, str, int, int]] = Counter()
    for dl in result.snap.events(DLQ, MessageDeadLettered):
        dead[(dl.service, dl.original_topic, dl.partition, dl.offset)] += 1
    missing, duplicated = [], []
    for (topic, partition, offset), plain in produced.items():
        for service in CONSUMERS[plain]:
            n = dead[(service, topic, partition, offset)]
            if n == 0:
                missing.append((service, topic, partition, offset))
            elif n > 1:
                duplicated.append((service, topic, partition, offset, n))
    assert missing == [], f"not dead-lettered: {missing}; DLQ has {sorted(dead)[:20]}"
    assert duplicated == []
    # nothing else was dead-lettered: valid traffic never lands in the DLQ
    expected = {(s, t, p, o) for (t, p, o), plain in produced.items() for s in CONSUMERS[plain]}
    assert set(dead) - expected == set(), sorted(set(dead) - expected)[:10]
