"""Rebuild the Redis projection from Kafka (Redis is a projection of loket.handoffs.v1).

When the ``ready`` marker key is missing (first start, or Redis was wiped or lost),
one instance takes a global rebuild lock, reads loket.handoffs.v1 (and loket.consent.v1
for the timeline) from the beginning with ``read_committed`` up to the end offsets
captured when the rebuild starts, applies every event per case (idempotent, by event
id), and sets the marker. Live handlers wait for the marker (``ensure_ready``) before
they decide or apply anything, so no live event is applied before its history.
Afterwards the consumer group continues from its committed offsets: anything after the
captured end offsets arrives live.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from loket_handoff.errors import NotReady
from loket_handoff.store import HandoffStore
from loket_schemas.events import (
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    HandoffResolved,
    HandoffResponseRejected,
    HandoffSlaBreached,
    HandoffSlaWarning,
    Message,
)
from loket_schemas.kafka import DecodeError, decode

PROJECTED: tuple[type[Message], ...] = (
    CaseRouted,
    HandoffOffered,
    HandoffAccepted,
    HandoffDeclined,
    HandoffResolved,
    HandoffEscalated,
    HandoffSlaWarning,
    HandoffSlaBreached,
    HandoffResponseRejected,
)
CONSENT_EVENTS: tuple[type[Message], ...] = (ConsentGiven, ConsentWithdrawn)
#: Cases rebuilt concurrently.
REBUILD_CONCURRENCY = 32


async def read_topic_to_end(
    bootstrap: str, topic: str, *, idle_timeout_s: float = 5.0
) -> list[Any]:
    """Every committed record of ``topic`` up to the end offsets captured now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        # the consumer's own cache only knows assigned topics: read the cluster metadata
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while True:
            # with read_committed, end_offsets are the last stable offsets
            pending = [tp for tp in tps if await consumer.position(tp) < end[tp]]
            if not pending:
                return records
            batch = await consumer.getmany(*pending, timeout_ms=300)
            got = sum(len(v) for v in batch.values())
            for tp in tps:
                for record in batch.get(tp, []):
                    if record.offset < end[tp]:
                        records.append(record)
            if got:
                last_progress = loop.time()
            elif loop.time() - last_progress > idle_timeout_s:
                # e.g. an open transaction holds the stable offset: continue live instead
                return records
    finally:
        await consumer.stop()


class Rebuilder:
    """Makes sure the projection is complete before anything decides or applies."""

    def __init__(
        self,
        store: HandoffStore,
        *,
        bootstrap: str,
        handoffs_topic: str,
        consent_topic: str,
        wait_s: float = 60.0,
        log: Any = None,
        on_rebuilt: Any = None,
    ) -> None:
        self.store = store
        self.bootstrap = bootstrap
        self.handoffs_topic = handoffs_topic
        self.consent_topic = consent_topic
        self.wait_s = wait_s
        self.log = log
        self.on_rebuilt = on_rebuilt
        self._local = asyncio.Lock()

    async def ensure_ready(self) -> None:
        if await self.store.is_ready():
            return
        async with self._local:
            if await self.store.is_ready():
                return
            redis = self.store.redis
            key = self.store.k("rebuild")
            token = secrets.token_hex(8)
            if await redis.set(key, token, nx=True, px=int(self.wait_s * 1000)):
                try:
                    await self.rebuild()
                finally:
                    await redis.eval(
                        "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                        "return redis.call('DEL', KEYS[1]) else return 0 end",
                        1,
                        key,
                        token,
                    )
                return
            await self._wait_for_other()

    async def _wait_for_other(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while not await self.store.is_ready():
            if loop.time() > deadline:
                raise NotReady("projection rebuild by another instance did not finish")
            await asyncio.sleep(0.05)  # another instance is rebuilding; poll its marker

    async def rebuild(self) -> int:
        """Replay loket.handoffs.v1 (+ consent) into Redis; returns the events applied."""
        started = datetime.now().astimezone()
        handoff_records = await read_topic_to_end(self.bootstrap, self.handoffs_topic)
        consent_records = await read_topic_to_end(self.bootstrap, self.consent_topic)
        per_case: dict[str, list[tuple[str, Message, datetime]]] = defaultdict(list)
        consent: dict[str, list[tuple[str, Message, datetime]]] = defaultdict(list)
        skipped = 0
        for records, expect, target in (
            (handoff_records, PROJECTED, per_case),
            (consent_records, CONSENT_EVENTS, consent),
        ):
            for record in records:
                try:
                    envelope = decode(record.value, record.headers, expect=expect)
                except DecodeError:
                    skipped += 1  # poison or not ours: the live consumer dead-letters it
                    continue
                target[envelope.data.case_id].append(
                    (envelope.attributes.id, envelope.data, envelope.attributes.time)
                )
        # cases are independent: REBUILD_CONCURRENCY workers, each case's events in order
        pending = iter({*per_case, *consent})
        counts: list[int] = []

        async def worker() -> None:
            for case_id in pending:
                async with self.store.session(case_id) as loaded:
                    for items in (per_case.get(case_id), consent.get(case_id)):
                        if items:
                            result = await self.store.apply(loaded, items)
                            counts.append(len(result.new_events))

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the other workers
                for _ in range(REBUILD_CONCURRENCY):
                    group.create_task(worker())
        except ExceptionGroup as errors:
            raise errors.exceptions[0] from None  # e.g. RedisError: callers map it (503)
        applied = sum(counts)
        await self.store.mark_ready(started.isoformat())
        if self.log is not None:
            self.log.info(
                "projection_rebuilt",
                records=len(handoff_records) + len(consent_records),
                cases=len(per_case),
                applied=applied,
                skipped=skipped,
            )
        if self.on_rebuilt is not None:
            self.on_rebuilt()
        return applied
