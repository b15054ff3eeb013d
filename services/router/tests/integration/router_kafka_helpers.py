"""Helpers for the router's integration tests: read_committed snapshots, publishing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loket_router.routing import RoutingDecision
from loket_schemas.events import AgencyAssignment, AgencyRole, Message
from loket_schemas.kafka import encode
from loket_schemas.vocabulary import AgencyCode


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: bytes | None

    @property
    def type(self) -> str | None:
        return self.headers.get("ce_type")

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.value or b"{}")
        return data


async def snapshot(bootstrap: str, topics: Sequence[str]) -> list[Rec]:
    """Everything committed on ``topics`` right now (read_committed, up to the LSO)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(cluster.partitions_for_topic(t) or set())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Rec] = []
        async with asyncio.timeout(60):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for r in records:
                        if r.offset < ends[tp]:
                            out.append(_rec(r))
        return out
    finally:
        await consumer.stop()


def _rec(r: Any) -> Rec:
    return Rec(
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        key=r.key.decode() if r.key is not None else None,
        headers={k: v.decode("utf-8", "replace") for k, v in (r.headers or ())},
        value=r.value,
    )


async def open_transaction_lag(bootstrap: str, names: list[str]) -> dict[TopicPartition, int]:
    """Per partition: high watermark minus last stable offset (> 0: a transaction is open)."""
    ends: dict[str, dict[TopicPartition, int]] = {}
    for isolation in ("read_uncommitted", "read_committed"):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, isolation_level=isolation
        )
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()
            tps = [
                TopicPartition(t, p) for t in names for p in cluster.partitions_for_topic(t) or ()
            ]
            ends[isolation] = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
    hw, lso = ends["read_uncommitted"], ends["read_committed"]
    return {tp: hw[tp] - lso[tp] for tp in hw if hw[tp] != lso[tp]}


async def wait_for(
    bootstrap: str,
    topics: Sequence[str],
    done: Callable[[list[Rec]], bool],
    within_s: float = 30.0,
) -> list[Rec]:
    """Poll read_committed snapshots until ``done(records)`` (bounded by ``within_s``).

    The snapshot returned is taken once no transaction is open on ``topics``: a commit's
    markers land partition by partition, so a snapshot taken just after a commit can hold
    its records on one partition (e.g. ``CaseRouted``) and not yet on another (its
    ``CaseDelivered``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        recs = await snapshot(bootstrap, topics)
        if done(recs) and not await open_transaction_lag(bootstrap, list(topics)):
            recs = await snapshot(bootstrap, topics)
            if done(recs):
                return recs
        if loop.time() > deadline:
            types = sorted({(r.topic, r.type) for r in recs}, key=str)
            raise AssertionError(f"condition not met after {within_s}s; seen {len(recs)}: {types}")
        await asyncio.sleep(0.2)  # committed state of a broker: nothing to await on


async def publish(
    bootstrap: str,
    topic: str,
    messages: Iterable[Message],
    *,
    source: str = "urn:nld:loket:service:intake",
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for m in messages:
            rec = encode(m, source=source)
            futures.append(
                await producer.send(topic, rec.value, key=rec.key, headers=list(rec.headers))
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def publish_raw(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> list[Any]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        metas = []
        for key, value, headers in records:
            metas.append(await producer.send_and_wait(topic, value, key=key, headers=headers))
        return metas
    finally:
        await producer.stop()


def fixed_classifier(lead: AgencyCode, *supporting: AgencyCode) -> Callable[..., RoutingDecision]:
    """A routing decision independent of the routing engine's data."""

    def classify(text: str, *, vulnerable: bool = False) -> RoutingDecision:
        assignments = [
            AgencyAssignment(agency=lead, role=AgencyRole.LEAD, reasons=["test"], confidence=0.9)
        ] + [
            AgencyAssignment(agency=a, role=AgencyRole.SUPPORTING, reasons=["test"], confidence=0.6)
            for a in supporting
        ]
        return RoutingDecision(
            lead=lead,
            assignments=tuple(assignments),
            reasons={a.agency.value: a.reasons for a in assignments},
            unclassified=False,
        )

    return classify
