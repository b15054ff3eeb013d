"""Router throughput vs a raw aiokafka passthrough, same run, same machine, real Kafka + Redis.

    uv run python bench/router_throughput.py [--n 20000] [--batch 500] [--partitions 3]

Three consume-produce loops read the same N pre-encoded QuestionReceived records (each
from its own copy of the input topic, 3 partitions) with the same batching
(``getmany(max_records=batch)``, read_committed, acks=all, idempotent producer):

1. passthrough: produce the same bytes to one output topic, commit offsets per batch
   (no transaction);
2. passthrough-txn: the same inside one Kafka transaction per batch
   (``send_offsets_to_transaction``);
3. router: the real question loop (loket_router.loop.TransactionalLoop +
   QuestionProcessor: decode, classify with the routing engine, manifests, deliveries,
   audit records, CaseRouted, Redis state and markers, one transaction per batch).

Each figure is questions (input records) per second from the first fetched batch to the
last commit. The router writes 2 * agencies + 1 records per question; the passthrough 1.
The process CPU time per input record is printed too: on a shared machine it moves much
less with the load of other processes than the wall-clock rates do.

The process gets the router's production GC settings (``loket_router.service.tune_gc``,
as in ``python -m loket_router``) before any loop runs, so all three loops use them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from loket_router.handlers import QuestionProcessor, RouterContext
from loket_router.loop import TransactionalLoop
from loket_router.metrics import RouterMetrics
from loket_router.routing import classify
from loket_router.service import tune_gc
from loket_router.store import RedisStore
from loket_runtime.health import new_registry
from loket_runtime.kafka import ensure_topics
from loket_runtime.logging import get_logger
from loket_schemas import topics
from loket_schemas.catalog import load_agencies
from loket_schemas.events import QuestionReceived
from loket_schemas.kafka import encode, service_source
from loket_schemas.vocabulary import ConsentRecord, ContactDetails, DataCategory, PersonRequester

TEXTS = [
    "Ik heb een belastingschuld en mijn toeslag is stopgezet, wat moet ik doen?",
    "Mijn WW-uitkering is gestopt en ik kan de huur niet meer betalen.",
    "Ik heb een studieschuld bij DUO en een boete van het CJIB die ik niet kan betalen.",
    "Mijn verblijfsvergunning verloopt en ik heb vragen over zorgtoeslag en huurtoeslag.",
    "Ik wil een eenmanszaak starten en weet niet hoe het zit met btw en inschrijving.",
    "Mijn AOW is lager dan verwacht en de gemeente wil bijzondere bijstand terugvorderen.",
]


def questions(n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        q = QuestionReceived(
            case_id=str(uuid.uuid4()),
            reference=f"LK-{i % 10000:04d}-BNCH",
            channel="balie",
            initiative_id="bibliotheek-utrecht-neude",
            text=TEXTS[i % len(TEXTS)],
            requester=PersonRequester(bsn="111222333", contact=ContactDetails(email="a@b.nl")),
            consent=ConsentRecord(
                consent_id=f"c-{i}",
                categories=[DataCategory.QUESTION_TEXT, DataCategory.CONTACT],
                given_at=now,
            ),
            received_at=now,
        )
        rec = encode(q, source=service_source("intake"))
        out.append((rec.key, rec.value, list(rec.headers)))
    return out


async def fill(bootstrap: str, topic: str, records: list) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def passthrough(
    bootstrap: str, src: str, dst: str, n: int, batch: int, txn: bool
) -> tuple[float, float]:
    group = f"bench-pass-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        transactional_id=f"{group}-txn" if txn else None,
    )
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await producer.start()
    await consumer.start()
    done = 0
    first: float | None = None
    cpu0 = 0.0
    try:
        while done < n:
            data = await consumer.getmany(timeout_ms=200, max_records=batch)
            if not data:
                continue
            if first is None:
                first, cpu0 = time.perf_counter(), time.process_time()
            offsets = {tp: recs[-1].offset + 1 for tp, recs in data.items()}
            if txn:
                async with producer.transaction():
                    futs = [
                        await producer.send(dst, r.value, key=r.key, headers=list(r.headers))
                        for recs in data.values()
                        for r in recs
                    ]
                    await asyncio.gather(*futs)
                    await producer.send_offsets_to_transaction(offsets, group)
            else:
                futs = [
                    await producer.send(dst, r.value, key=r.key, headers=list(r.headers))
                    for recs in data.values()
                    for r in recs
                ]
                await asyncio.gather(*futs)
                await consumer.commit(offsets)
            done += sum(len(recs) for recs in data.values())
        wall = time.perf_counter() - (first or time.perf_counter())
        return n / wall, (time.process_time() - cpu0) / n
    finally:
        await consumer.stop()
        await producer.stop()


async def router(
    bootstrap: str, redis_url: str, prefix: str, n: int, batch: int
) -> tuple[float, float, float]:
    redis = Redis.from_url(redis_url)
    store = RedisStore(redis, f"bench:{prefix}", 3600)
    ctx = RouterContext(
        catalog=load_agencies(),
        classify=classify,
        pseudonym_key="bench-key",
        topic_prefix=prefix,
        source=service_source("router"),
    )
    processor = QuestionProcessor(ctx, store)
    routed = 0
    outputs = 0
    first: float | None = None
    last = 0.0
    cpu0 = cpu1 = 0.0
    finished = asyncio.Event()
    inner = processor.process

    async def timed(records):  # type: ignore[no-untyped-def]
        nonlocal first, cpu0
        if first is None:
            first, cpu0 = time.perf_counter(), time.process_time()
        return await inner(records)

    processor.process = timed  # type: ignore[method-assign]

    async def on_commit(result) -> None:  # type: ignore[no-untyped-def]
        nonlocal routed, last, outputs, cpu1
        routed += result.stats.routed + result.stats.duplicates + result.stats.dead_lettered
        outputs += len(result.outgoing)
        last, cpu1 = time.perf_counter(), time.process_time()
        if routed >= n:
            finished.set()

    loop = TransactionalLoop(
        processor,
        bootstrap=bootstrap,
        topic=prefix + topics.QUESTIONS,
        group_id=f"{prefix}loket-router",
        transactional_id_prefix=f"{prefix}loket-router-bench",
        store=store,
        metrics=RouterMetrics(new_registry()),
        log=get_logger("bench"),
        max_records=batch,
        on_commit=on_commit,
    )
    await loop.start()
    try:
        await asyncio.wait_for(finished.wait(), 600)
    finally:
        await loop.stop()
        keys = [k async for k in redis.scan_iter(match=f"bench:{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i : i + 500])
        await redis.aclose()
    return n / (last - (first or last)), outputs / n, (cpu1 - cpu0) / n


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--no-txn-passthrough", action="store_true")
    args = parser.parse_args()
    tune_gc()
    bootstrap = os.environ.get("LOKET_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    redis_url = os.environ.get("LOKET_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    names = [prefix + t for t in topics.ALL_TOPICS] + [
        prefix + "pass.in.v1",
        prefix + "pass.out.v1",
        prefix + "passtx.in.v1",
        prefix + "passtx.out.v1",
    ]
    await ensure_topics(bootstrap, names, partitions=args.partitions)
    records = questions(args.n)
    await asyncio.gather(
        fill(bootstrap, prefix + topics.QUESTIONS, records),
        fill(bootstrap, prefix + "pass.in.v1", records),
        fill(bootstrap, prefix + "passtx.in.v1", records),
    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(f"questions: {args.n}, batch: {args.batch}, partitions: {args.partitions}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    plain, plain_cpu = await passthrough(
        bootstrap, prefix + "pass.in.v1", prefix + "pass.out.v1", args.n, args.batch, txn=False
    )
    print(
        f"passthrough (no transaction):   {plain:10.0f} records/s   "
        f"{plain_cpu * 1e6:6.0f} us CPU/record"
    )
    txn = None
    if not args.no_txn_passthrough:
        txn, txn_cpu = await passthrough(
            bootstrap,
            prefix + "passtx.in.v1",
            prefix + "passtx.out.v1",
            args.n,
            args.batch,
            txn=True,
        )
        print(
            f"passthrough (transactional):    {txn:10.0f} records/s   "
            f"{txn_cpu * 1e6:6.0f} us CPU/record"
        )
    routed, per_question, router_cpu = await router(
        bootstrap, redis_url, prefix, args.n, args.batch
    )
    print(
        f"router (transactional, routed): {routed:10.0f} questions/s "
        f"{router_cpu * 1e6:6.0f} us CPU/question"
    )
    print(
        f"router output records:          {routed * per_question:10.0f} records/s "
        f"({per_question:.2f} per question)"
    )
    print(f"ratio router / passthrough:     {routed / plain:10.2f}")
    if txn:
        print(f"ratio router / passthrough-txn: {routed / txn:10.2f}")
    print(f"load average after:  {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
