"""Benchmark: latency of one consume-transform-produce transaction, per step order.

The router's loop commits one Kafka transaction per unit: outputs (``AddPartitionsToTxn``
and produce), input offsets (``AddOffsetsToTxn`` and ``TxnOffsetCommit``), ``EndTxn``.
This script runs back-to-back transactions the same way on a real broker
(LOKET_KAFKA_BOOTSTRAP, default 127.0.0.1:9092; fresh topics of 3 partitions): 3
transactional producers take turns, as the router's per-partition producers do, each
transaction writes one 500-byte record to each of 3 partitions and adds one input offset.
It prints per order the time per transaction (p50 / p90 / max) and the retries aiokafka
logged: ``NOT_ENOUGH_REPLICAS`` (a produce whose KIP-890 verification met the
coordinator mid-write) and ``CONCURRENT_TRANSACTIONS``-style waits show up as tails of
``--retry-backoff-ms``.

Orders:

* ``acks-then-offsets``: outputs, wait for their acks, then offsets, commit (the router
  before 2026-12-04 evening);
* ``overlap``: offsets added while the outputs are produced, commit after both;
* ``offsets-first``: offsets, then outputs and their acks, commit (the router now).

    uv run python bench/kafka_transactions.py [--count 300] [--retry-backoff-ms 100]
        [--orders acks-then-offsets,overlap,offsets-first]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
import uuid

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from loket_router.loop import set_concurrent_transactions_backoff

ORDERS = ("acks-then-offsets", "overlap", "offsets-first")


class _Retries(logging.Handler):
    """Counts aiokafka's produce-retry warnings by error name."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "retrying" in message:
            name = message.rsplit(".", 1)[-1].strip("'>")
            self.counts[name] = self.counts.get(name, 0) + 1


async def run(bootstrap: str, order: str, count: int, retry_backoff_ms: int) -> None:
    name = f"bench-txn-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1), NewTopic(f"{name}-in", 3, 1)])
    finally:
        await admin.close()
    producers = [
        AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"{name}-{i}",
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            retry_backoff_ms=retry_backoff_ms,
        )
        for i in range(3)
    ]
    for p in producers:
        await p.start()
    retries = _Retries()
    logging.getLogger("aiokafka.producer.sender").addHandler(retries)
    times: list[float] = []
    try:
        for i in range(count + 10):  # the first 10: warm-up, not counted
            p = producers[i % 3]
            offsets = {TopicPartition(f"{name}-in", i % 3): i}
            started = time.perf_counter()
            await p.begin_transaction()
            if order == "offsets-first":
                await p.send_offsets_to_transaction(offsets, f"{name}-group")
            futures = [
                await p.send(name, b"x" * 500, key=str(j).encode(), partition=j) for j in range(3)
            ]
            if order == "overlap":
                await asyncio.gather(
                    p.send_offsets_to_transaction(offsets, f"{name}-group"), *futures
                )
            else:
                await asyncio.gather(*futures)
            if order == "acks-then-offsets":
                await p.send_offsets_to_transaction(offsets, f"{name}-group")
            await p.commit_transaction()
            if i >= 10:
                times.append((time.perf_counter() - started) * 1000)
    finally:
        logging.getLogger("aiokafka.producer.sender").removeHandler(retries)
        for p in producers:
            await p.stop()
    times.sort()
    print(
        f"{order:18s} {count} transactions: p50 {times[len(times) // 2]:6.2f}  "
        f"p90 {times[int(len(times) * 0.9)]:6.2f}  max {times[-1]:7.2f} ms; "
        f"produce retries {retries.counts or 0}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--retry-backoff-ms", type=int, default=100)
    parser.add_argument("--orders", default=",".join(ORDERS))
    args = parser.parse_args()
    bootstrap = os.environ.get("LOKET_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    set_concurrent_transactions_backoff(2.0)  # as the router does
    print(f"broker {bootstrap}, retry backoff {args.retry_backoff_ms} ms")
    for order in args.orders.split(","):
        if order not in ORDERS:
            raise SystemExit(f"unknown order {order!r}; one of {', '.join(ORDERS)}")
        await run(bootstrap, order, args.count, args.retry_backoff_ms)


if __name__ == "__main__":
    asyncio.run(main())
