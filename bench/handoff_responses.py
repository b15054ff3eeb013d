"""Benchmark: agency responses processed per second by ONE handoff process.

Real Kafka and Redis (LOKET_KAFKA_BOOTSTRAP / LOKET_REDIS_URL, default 127.0.0.1), fresh
prefixed topics and Redis prefix. Opens N handoffs (CaseRouted -> HandoffOffered), then
publishes N AcceptHandoff commands on loket.handoff-responses.v1 at once and measures
the time until all N are accepted in the projection (decode, per-case lock, load,
decide, publish HandoffAccepted with broker ack, apply; plus applying the event again
when it comes back through the consumer).

    uv run python bench/handoff_responses.py [--count 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from loket_handoff.app import create_app
from loket_handoff.domain import handoff_id_for
from loket_handoff.settings import HandoffSettings
from loket_schemas import topics
from loket_schemas.events import (
    AcceptHandoff,
    AgencyAssignment,
    AgencyRole,
    CaseRouted,
    ContactPerson,
)
from loket_schemas.kafka import encode, service_source
from loket_schemas.vocabulary import AgencyCode


async def wait_for(store: object, kind: str, count: int) -> None:
    """Until ``count`` handoffs were offered/accepted in the projection.

    Reads the projection's counters (one HGETALL per poll; the prefix is fresh), so the
    polling costs the measured process next to nothing.
    """
    while True:
        stats = await store.stats()  # type: ignore[attr-defined]
        done = sum(n for name, n in stats.items() if name.startswith(kind + ":"))
        if done >= count:
            return
        await asyncio.sleep(0.02)  # bench polling interval


async def main(count: int) -> None:
    run = uuid.uuid4().hex[:8]
    settings = HandoffSettings(
        kafka_bootstrap=os.environ.get("LOKET_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        redis_url=os.environ.get("LOKET_REDIS_URL", "redis://127.0.0.1:6379/0"),
        topic_prefix=f"bench{run}.",
        redis_key_prefix=f"bench:{run}:",
        handoff_timers_enabled=False,
    )
    app = create_app(settings)
    agencies = [a for a in AgencyCode if a is not AgencyCode.MAATWERKLOKET]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    async with app.router.lifespan_context(app):
        store = app.state.handoff_store
        await producer.start()
        try:
            cases = [str(uuid.uuid4()) for _ in range(count)]
            hids = []
            t0 = time.perf_counter()
            c0 = time.process_time()
            futures = []
            for n, case_id in enumerate(cases):
                agency = agencies[n % len(agencies)]
                hids.append(handoff_id_for(case_id, agency, 0))
                routed = CaseRouted(
                    case_id=case_id,
                    reference=f"LK-{n // 10000:04d}-{n % 10000:04d}",
                    initiative_id="bibliotheek-rotterdam-centrale",
                    lead=agency,
                    assignments=[
                        AgencyAssignment(agency=agency, role=AgencyRole.LEAD, confidence=1)
                    ],
                    routed_at=datetime.now(UTC),
                )
                rec = encode(routed, source=service_source("router"))
                futures.append(
                    await producer.send(
                        settings.topic(topics.HANDOFFS), rec.value, key=rec.key,
                        headers=list(rec.headers),
                    )
                )  # fmt: skip
            await asyncio.gather(*futures)
            await wait_for(store, "offered", count)
            offered_s = time.perf_counter() - t0
            offered_cpu = time.process_time() - c0
            t1 = time.perf_counter()
            c1 = time.process_time()
            futures = []
            for n, (case_id, hid) in enumerate(zip(cases, hids, strict=True)):
                cmd = AcceptHandoff(
                    case_id=case_id,
                    handoff_id=hid,
                    agency=agencies[n % len(agencies)],
                    contact=ContactPerson(name="Bench Medewerker"),
                )
                rec = encode(cmd, source="urn:agency:bench")
                futures.append(
                    await producer.send(
                        settings.topic(topics.HANDOFF_RESPONSES), rec.value, key=rec.key,
                        headers=list(rec.headers),
                    )
                )  # fmt: skip
            await asyncio.gather(*futures)
            await wait_for(store, "accepted", count)
            accept_s = time.perf_counter() - t1
            accept_cpu = time.process_time() - c1
        finally:
            await producer.stop()
    # clean up after the app stopped (else its sweep would rebuild the deleted projection)
    redis = Redis.from_url(settings.redis_url)
    keys = [k async for k in redis.scan_iter(match=f"bench:{run}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i : i + 1000])
    await redis.aclose()
    print(f"handoffs opened (CaseRouted -> HandoffOffered): {count:,} in {offered_s:.1f}s "
          f"= {count / offered_s:,.0f}/s; "
          f"CPU {offered_cpu / count * 1000:.2f} ms each")  # fmt: skip
    print(f"responses processed (AcceptHandoff -> HandoffAccepted, applied): {count:,} in "
          f"{accept_s:.1f}s = {count / accept_s:,.0f}/s per process; "
          f"CPU {accept_cpu / count * 1000:.2f} ms each")  # fmt: skip
    print("(CPU = this process, the bench's own producer included)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    asyncio.run(main(parser.parse_args().count))
