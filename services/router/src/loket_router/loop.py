"""The consume-transform-produce loop: raw aiokafka, one Kafka transaction per batch.

FastStream has no transactions, so each input topic of the router runs one
:class:`TransactionalLoop` as a background task (started and stopped in the app lifespan):

1. ``getmany(max_records=N)`` from a ``read_committed`` consumer without auto-commit;
   records of one partition come in offset order and are processed in that order.
2. ``processor.process(records)``: decisions, output records, Redis state (one read round
   trip); poison records become ``MessageDeadLettered`` outputs.
3. Redis state written (idempotent) *before* the commit.
4. One transaction: every output record, then ``send_offsets_to_transaction`` with
   ``last offset + 1`` per input partition, then commit. Either all outputs and the input
   offsets are committed, or none: a crash (kill -9) anywhere leaves an open transaction
   that the restarted producer (same ``transactional_id``) aborts in ``init_transactions``,
   and the new consumer resumes from the last committed offsets.
5. After the commit: "done" markers in Redis, metrics.

Rebalances: the listener bumps a generation counter on revoke and waits for the
in-flight batch (a lock); a batch whose generation changed aborts its transaction instead
of committing, and its records are read again by whoever owns the partition next.
Transient errors (Kafka, Redis) retry the batch with exponential backoff; after
``retry_attempts`` the loop restarts (fresh consumer and producer, from the committed
offsets). ``ProducerFenced`` (another producer took our transactional id) restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.partitioner import murmur2

from loket_router.errors import LoopFenced, RetryableError
from loket_router.handlers import BatchResult, ConsumerRecordLike
from loket_router.metrics import RouterMetrics
from loket_router.store import RedisStore


class Processor(Protocol):
    name: str
    group_id: str
    input_topic: str

    async def process(self, records: Sequence[ConsumerRecordLike]) -> BatchResult: ...


class _Revoked(Exception):
    """The batch's partitions were revoked: abort, do not commit."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: TransactionalLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.loop.generation += 1
        # wait until an in-flight batch committed or aborted before giving partitions up
        async with self.loop.txn_lock:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.loop.assigned = set(assigned)


class TransactionalLoop:
    """One input topic, one consumer group, one transactional producer."""

    def __init__(
        self,
        processor: Processor,
        *,
        bootstrap: str,
        topic: str,
        group_id: str,
        transactional_id: str,
        store: RedisStore,
        metrics: RouterMetrics,
        log: Any,
        max_records: int = 500,
        poll_timeout_ms: int = 200,
        retry_attempts: int = 5,
        retry_backoff_s: float = 0.2,
        retry_backoff_max_s: float = 5.0,
        transaction_timeout_ms: int = 60000,
        linger_ms: int = 5,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 3000,
        on_commit: Callable[[BatchResult], Awaitable[None]] | None = None,
    ) -> None:
        self.processor = processor
        self.name = processor.name
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.store = store
        self.metrics = metrics
        self.log = log.bind(loop=self.name) if hasattr(log, "bind") else log
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.transaction_timeout_ms = transaction_timeout_ms
        self.linger_ms = linger_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.on_commit = on_commit
        self.generation = 0
        self._partitions: dict[str, list[int]] = {}
        self.assigned: set[TopicPartition] = set()
        self.txn_lock = asyncio.Lock()
        self.running = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name=f"router-loop-{self.name}")

    async def wait_running(self, within_s: float = 30.0) -> None:
        await asyncio.wait_for(self._started.wait(), within_s)

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _backoff(self, attempt: int) -> float:
        return float(min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** (attempt - 1)))

    async def _supervise(self) -> None:
        restarts = 0
        while not self._stopping:
            try:
                await self._run()
                restarts = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                restarts += 1
                self.metrics.restarts.labels(loop=self.name).inc()
                self.log.warning(
                    "loop_restart",
                    error_class=type(exc).__name__,
                    error=str(exc)[:300],
                    restarts=restarts,
                )
                await asyncio.sleep(self._backoff(min(restarts, 6)))
            finally:
                self.running = False
                self.metrics.loop_up.labels(loop=self.name).set(0)

    # ----------------------------------------------------------------- the loop

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"loket-router-{self.name}",
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
            transaction_timeout_ms=self.transaction_timeout_ms,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"loket-router-{self.name}",
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            metadata_max_age_ms=5000,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        try:
            # init_transactions: fences an older producer with this id and aborts its
            # open transaction (e.g. the one a killed router left behind)
            await producer.start()
            await consumer.start()
            self.running = True
            self.metrics.loop_up.labels(loop=self.name).set(1)
            self._started.set()
            self.log.info("loop_started", topic=self.topic, group_id=self.group_id)
            while not self._stopping:
                batch = await consumer.getmany(
                    timeout_ms=self.poll_timeout_ms, max_records=self.max_records
                )
                if batch:
                    await self._handle_batch(producer, batch)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _handle_batch(
        self,
        producer: AIOKafkaProducer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        generation = self.generation
        records: list[ConsumerRecordLike] = [r for recs in batch.values() for r in recs]
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
        attempt = 0
        while True:
            if self._stopping or generation != self.generation:
                return  # not committed: read again from the committed offsets
            try:
                result = await self.processor.process(records)
                await self.store.write(result.writes)
                if result.recheck:
                    now = await self.store.withdrawals(result.recheck)
                    if any(now.get(cid, {}) != seen for cid, seen in result.recheck.items()):
                        raise RetryableError("consent withdrawn while routing: redo the batch")
                started = time.perf_counter()
                await self._commit(producer, result, offsets, generation)
                elapsed = time.perf_counter() - started
                break
            except _Revoked:
                self.log.info("batch_aborted_on_revoke", records=len(records))
                return
            except ProducerFenced as exc:
                raise LoopFenced(str(exc)) from exc
            except (RetryableError, KafkaError, OSError) as exc:
                attempt += 1
                self.metrics.retries.labels(loop=self.name).inc()
                if getattr(producer, "_txn_manager", None) is not None and (
                    producer._txn_manager.is_fatal_error()
                ):
                    raise LoopFenced(f"producer in fatal state: {exc}") from exc
                if attempt >= self.retry_attempts:
                    raise
                delay = self._backoff(attempt)
                self.log.warning(
                    "batch_retry",
                    attempt=attempt,
                    delay_s=delay,
                    error_class=type(exc).__name__,
                    error=str(exc)[:300],
                )
                await asyncio.sleep(delay)
        self.metrics.committed(self.name, result.stats, len(records), elapsed)
        try:
            await self.store.mark_done(result.markers)
        except RetryableError as exc:
            # the transaction already guarantees exactly-once for replays; only the
            # duplicate-publication guard for these cases is weaker until Redis is back
            self.log.warning("done_markers_not_written", error=str(exc)[:300])
        if self.on_commit is not None:
            await self.on_commit(result)

    async def _commit(
        self,
        producer: AIOKafkaProducer,
        result: BatchResult,
        offsets: dict[TopicPartition, int],
        generation: int,
    ) -> None:
        async with self.txn_lock:
            if generation != self.generation:
                raise _Revoked
            async with producer.transaction():
                futures = await self._send_all(producer, result)
                if futures:
                    await asyncio.gather(*futures)
                if generation != self.generation:
                    raise _Revoked
                await producer.send_offsets_to_transaction(offsets, self.group_id)

    async def _send_all(
        self, producer: AIOKafkaProducer, result: BatchResult
    ) -> list[asyncio.Future[Any]]:
        """Send the batch's outputs as record batches, one builder per topic-partition.

        Partitions are those of the default (murmur2) partitioner over the record key, the
        same as a plain ``send``, so every record of a case lands on one partition (the
        hash is computed once per key); the records of one partition keep their order.
        ``send_batch`` saves most of the per-record overhead of ``send``.
        """
        grouped: dict[tuple[str, int], list[Any]] = {}
        hashes: dict[bytes, int] = {}  # every output of a case has the case id as key
        for out in result.outgoing:
            parts = self._partitions.get(out.topic)
            if parts is None:
                parts = sorted(await producer.partitions_for(out.topic))
                self._partitions[out.topic] = parts
            key = out.record.key
            h = hashes.get(key)
            if h is None:  # DefaultPartitioner: murmur2(key) & 0x7fffffff mod partitions
                h = hashes[key] = murmur2(key) & 0x7FFFFFFF
            grouped.setdefault((out.topic, parts[h % len(parts)]), []).append(out.record)
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), records in grouped.items():
            builder = producer.create_batch()
            for rec in records:
                if (
                    builder.append(
                        key=rec.key, value=rec.value, timestamp=None, headers=list(rec.headers)
                    )
                    is None
                ):
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
                    builder = producer.create_batch()
                    if (
                        builder.append(
                            key=rec.key, value=rec.value, timestamp=None, headers=list(rec.headers)
                        )
                        is None
                    ):  # pragma: no cover - a record larger than max_batch_size
                        raise RetryableError(f"record too large for a batch on {topic}")
            if builder.record_count():
                futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures
