"""The consume-transform-produce loop: raw aiokafka, Kafka transactions per input partition.

FastStream has no transactions, so each input topic of the router runs one
:class:`TransactionalLoop` as a background task (started and stopped in the app lifespan):

1. ``getmany(max_records=N)`` from a ``read_committed`` consumer without auto-commit;
   records of one partition come in offset order and are processed in that order. The
   fetched records go to their partition's queue, and the consumer fetches again at once.
2. **A pipeline per input partition** (since 2026-12-04): one worker task per assigned
   partition takes what its queue holds (at most N records: one *unit*) and handles it,
   then the next unit; so each partition has at most one unit, and one transaction, in
   flight, handled in offset order, while the consumer keeps fetching and the other
   partitions commit independently. A question waits for at most its own partition's
   unit in flight instead of every partition's transaction of the current batch (at 200
   questions/s that wait was the router's p50). Under load the queue fills while a
   transaction is in flight, so units grow; a partition whose queue holds N records is
   not fetched (``getmany`` of the other partitions only) until its worker takes them.
   A failing worker (retries exhausted, ``LoopFenced``) restarts the whole loop.
   The *writes* of the partitions' transactions still take turns by default
   (``transactions_in_flight=1``): the units are processed concurrently, and a unit's
   transaction begins and adds its input offsets at once, but it writes its outputs and
   commits only when no other transaction of the loop is writing. Overlapping writes of
   one loop (3 producers writing the same output partitions) kept an open transaction on
   nearly every output partition at all times, and read_committed consumers then got
   their records in bursts (handoff stage p50 35 -> 540-640 ms at 200 questions/s;
   docs/benchmarks.md, 2026-12-04).
3. A unit: ``processor.process(records)`` (decisions, output records, Redis state in one
   read round trip; poison records become ``MessageDeadLettered`` outputs; called
   concurrently for different partitions, never twice at once for one), Redis state
   written (idempotent) *before* the commit, then one transaction on that partition's
   producer: ``send_offsets_to_transaction`` with ``last offset + 1``, then (in the
   loop's turn) every output record and the commit. Either all outputs and the input
   offset are committed, or none.
4. After the commit: "done" markers in Redis, metrics, then the partition's next unit.

**One transactional producer per assigned input partition**, ``transactional_id =
<base>-<partition>`` (not one per router instance). aiokafka has no consumer-group-metadata
fencing (KIP-447: it sends ``TxnOffsetCommit`` v0, without member id and generation), so
fencing rests on the transactional id, and only an id that follows the *partition* fences
whoever owned the partition before: when a partition is assigned, the loop starts its
producer (``init_transactions``: bumps the epoch, so the previous owner's producer can no
longer commit, and aborts the transaction it left open, e.g. a router killed mid-commit
and never restarted), then re-reads the committed offset and seeks to it (so a commit the
previous owner completed just before the fence is seen). With one id per instance, a dead
instance's open transaction stayed open until the broker's transaction timeout and held
back the last stable offset of every partition it had written to: read_committed readers
(handoff, the agencies) saw nothing after it on those partitions for ~60-70 s.

Rebalances: the listener bumps a generation counter on revoke and waits until no commit
(of any partition) is in flight; a unit whose generation changed aborts its transaction
instead of committing, queued records of an earlier generation are dropped, and all of
them are read again by whoever owns the partition next (or by this instance, from the
committed offset, when it keeps the partition). On
assignment the partitions stay paused until their producers are fenced in and their
positions set from the committed offsets read after the fence.
Transient errors (Kafka, Redis) retry the unit with exponential backoff; after
``retry_attempts`` the loop restarts (fresh consumer and producers, from the committed
offsets). ``ProducerFenced`` (another owner took the partition's transactional id) and a
failed assignment (a producer could not be fenced in) restart too.

Units without outputs cost no transaction of their own: a unit that publishes nothing and
marks nothing done (most re-route inputs: offers, accepts, responses the router does not
act on) only advances its partition's *deferred* offset. The next transaction of that
partition commits it with its own (later) offset; a deferred offset no transaction took
along within ``defer_offsets_s`` is committed in an offsets-only transaction by the
partition's worker (so it never overlaps a transaction of the same partition), and so
are all of them when the loop stops. A revoke or a restart drops them: the next owner reads
those records again, and they produce nothing again (outputs and done markers only come
with a transaction). ``defer_offsets_s=0`` commits every unit at once.

Bounded waits (docs/reliability.md B5): aiokafka runs all requests of a producer in one
background "sender" task; once that task is dead (it died on an unexpected error, e.g. a
connection error while a broker restarts, or was cancelled) nothing completes a pending
send, offset commit, commit or abort of that producer again. So a whole transaction
(begin, sends and their acks, offsets, commit, or the abort after an error) runs within
``commit_timeout_s``; a transaction not done by then, a dead sender task and a producer
in a fatal state restart the loop (``LoopFenced``) with new producers, whose
``init_transactions`` aborts the transaction the old one left open. Starting and
stopping producers and stopping the consumer are bounded the same way.
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
from aiokafka.producer import sender as _aiokafka_sender
from aiokafka.producer.transaction_manager import TransactionState

from loket_router.errors import LoopFenced, RetryableError
from loket_router.handlers import BatchResult, ConsumerRecordLike
from loket_router.metrics import RouterMetrics
from loket_router.store import RedisStore
from loket_runtime.tasks import stop_task


class Processor(Protocol):
    name: str
    group_id: str
    input_topic: str

    async def process(self, records: Sequence[ConsumerRecordLike]) -> BatchResult: ...


class _Revoked(Exception):
    """The unit's partition was revoked: abort, do not commit."""


class _PartitionQueue:
    """Records of one input partition fetched but not handled yet, and its worker task.

    ``generation`` is the loop generation the records were fetched in: records of an
    earlier one are dropped (a rebalance came in between; they are fetched again from the
    committed offset)."""

    __slots__ = ("generation", "records", "task", "wakeup")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        #: set when records were queued (or the loop stops)
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: TransactionalLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.loop.generation += 1
        for q in self.loop._queues.values():
            q.wakeup.set()  # the workers drop what they queued before the rebalance
        # wait until in-flight commits (of every partition) finished, committed or
        # aborted, before giving the partitions up
        await self.loop.idle.wait()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.loop.take_over(set(assigned))


class TransactionalLoop:
    """One input topic, one consumer group, one transactional producer per input partition."""

    def __init__(
        self,
        processor: Processor,
        *,
        bootstrap: str,
        topic: str,
        group_id: str,
        transactional_id_prefix: str,
        store: RedisStore,
        metrics: RouterMetrics,
        log: Any,
        client_id: str | None = None,
        max_records: int = 500,
        poll_timeout_ms: int = 200,
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        retry_attempts: int = 5,
        retry_backoff_s: float = 0.2,
        retry_backoff_max_s: float = 5.0,
        transaction_timeout_ms: int = 60000,
        commit_timeout_s: float = 30.0,
        defer_offsets_s: float = 1.0,
        linger_ms: int = 5,
        producer_retry_backoff_ms: int = 100,
        concurrent_txn_backoff_ms: float | None = None,
        transactions_in_flight: int = 1,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 3000,
        on_commit: Callable[[BatchResult], Awaitable[None]] | None = None,
    ) -> None:
        self.processor = processor
        self.name = processor.name
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.transactional_id_prefix = transactional_id_prefix
        self.client_id = client_id or f"loket-router-{self.name}"
        self.store = store
        self.metrics = metrics
        self.log = log.bind(loop=self.name) if hasattr(log, "bind") else log
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.transaction_timeout_ms = transaction_timeout_ms
        self.commit_timeout_s = commit_timeout_s
        self.defer_offsets_s = defer_offsets_s
        #: input partition -> (offset to commit, since when, generation) of units that
        #: had nothing to publish (committed with the partition's next transaction)
        self._deferred: dict[TopicPartition, tuple[int, float, int]] = {}
        self.linger_ms = linger_ms
        self.producer_retry_backoff_ms = producer_retry_backoff_ms
        #: the consumer's fetch batching: the broker answers a fetch once it has this many
        #: bytes, or after ``fetch_max_wait_ms`` (1 byte: at once, for the latency path)
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.concurrent_txn_backoff_ms = concurrent_txn_backoff_ms
        #: transactions of this loop (all partitions) that may run at once, see _commit
        self._txn_slots = asyncio.Semaphore(transactions_in_flight)
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.on_commit = on_commit
        self.generation = 0
        self._partitions: dict[str, list[int]] = {}
        self.assigned: set[TopicPartition] = set()
        #: input partition -> its transactional producer (fenced in on assignment)
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._assign_error: BaseException | None = None
        #: input partition -> its queue and worker (the pipeline, see module docstring)
        self._queues: dict[TopicPartition, _PartitionQueue] = {}
        #: the first error a partition worker died of (the loop restarts on it)
        self._worker_error: BaseException | None = None
        #: set when a worker took records from a full queue, or died
        self._room = asyncio.Event()
        #: set when no commit is in flight (a revoke waits for it)
        self.idle = asyncio.Event()
        self.idle.set()
        self._inflight = 0
        self.running = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    def transactional_id(self, tp: TopicPartition) -> str:
        """The transactional id of input partition ``tp`` (same for whichever instance
        owns it, so the next owner fences the previous one)."""
        return f"{self.transactional_id_prefix}-{tp.partition}"

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._stopping = False
        if self.concurrent_txn_backoff_ms is not None:
            set_concurrent_transactions_backoff(self.concurrent_txn_backoff_ms)
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
            # re-cancels until it ended (a cancel lost on Python 3.11), bounded
            await stop_task(task, timeout_s=self.commit_timeout_s, log=self.log)

    def _backoff(self, attempt: int) -> float:
        return float(min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** (attempt - 1)))

    async def _supervise(self) -> None:
        restarts = 0
        while not self._stopping:
            try:
                await self._run()
                restarts = 0
            except (Exception, asyncio.CancelledError) as exc:
                # a CancelledError that is not our own cancel: a library's task was
                # cancelled under us (e.g. a producer's sender task); restart instead of
                # ending the loop for good
                if isinstance(exc, asyncio.CancelledError) and _cancelling():
                    raise
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

    # ----------------------------------------------------------------- partitions

    def _new_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self.client_id}-p{tp.partition}",
            transactional_id=self.transactional_id(tp),
            enable_idempotence=True,
            acks="all",
            linger_ms=self.linger_ms,
            retry_backoff_ms=self.producer_retry_backoff_ms,
            max_batch_size=256 * 1024,
            transaction_timeout_ms=self.transaction_timeout_ms,
        )

    async def take_over(self, assigned: set[TopicPartition]) -> None:
        """Fence in the producers of newly assigned partitions, then seek every assigned
        partition to its committed offset (called by the rebalance listener).

        The partitions stay paused meanwhile, so no record is fetched from a position
        read before the fence."""
        consumer = self._consumer
        if consumer is not None and assigned:
            consumer.pause(*assigned)  # first, before any await
        self.assigned = assigned
        try:
            for tp in [tp for tp in self.producers if tp not in assigned]:
                await self._close_producer(tp)
            new = [tp for tp in sorted(assigned) if tp not in self.producers]
            for tp in new:
                self.producers[tp] = self._new_producer(tp)
            # init_transactions: fences the previous owner's producer (same id) and aborts
            # the transaction it left open (bounded: a timeout restarts the loop)
            await asyncio.wait_for(
                asyncio.gather(*(self.producers[tp].start() for tp in new)),
                self.commit_timeout_s,
            )
            if consumer is not None and assigned:
                # read after the fence: the previous owner cannot commit any more, and a
                # commit it completed before the fence is in this offset
                for tp in sorted(assigned):
                    committed = await consumer.committed(tp)
                    if committed is None:
                        committed = (await consumer.beginning_offsets([tp]))[tp]
                    consumer.seek(tp, committed)
                consumer.resume(*assigned)
            if new:
                self.log.info("partitions_taken_over", partitions=[tp.partition for tp in new])
        except Exception as exc:
            # the consumer only logs listener errors: make the loop restart instead (the
            # partitions stay paused until then)
            self._assign_error = exc
            self.log.warning(
                "take_over_failed", error_class=type(exc).__name__, error=str(exc)[:300]
            )

    async def _close_producer(self, tp: TopicPartition) -> None:
        """Stop the partition's producer, bounded: ``stop`` flushes first, which never ends
        when the producer's sender task is stuck; the sender task is then cancelled and the
        connections closed."""
        producer = self.producers.pop(tp, None)
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), self.commit_timeout_s)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelling():
                raise
            self.log.warning(
                "producer_stop_failed",
                partition=tp.partition,
                error_class=type(exc).__name__,
                error=str(exc)[:300],
            )
            task = _sender_task(producer)
            if task is not None and not task.done():
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.client.close(), 5.0)

    # ----------------------------------------------------------------- the loop

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_min_bytes=self.fetch_min_bytes,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            metadata_max_age_ms=5000,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        self._consumer = consumer
        self._assign_error = None
        self._worker_error = None
        try:
            await consumer.start()
            self.running = True
            self.metrics.loop_up.labels(loop=self.name).set(1)
            self._started.set()
            self.log.info("loop_started", topic=self.topic, group_id=self.group_id)
            while not self._stopping:
                self._check_workers()
                self._room.clear()
                fetchable = self._fetchable(consumer.assignment())
                if fetchable is None:  # every queue is full: wait until a worker takes some
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), self.poll_timeout_ms / 1000)
                    continue
                batch = await consumer.getmany(
                    *fetchable, timeout_ms=self.poll_timeout_ms, max_records=self.max_records
                )
                if self._assign_error is not None:
                    raise LoopFenced(f"partition take-over failed: {self._assign_error}")
                generation = self.generation  # no await since getmany returned
                for tp, recs in batch.items():
                    if recs:
                        self._enqueue(tp, recs, generation)
            # stopping: every worker ends its unit in flight and commits its partition's
            # deferred offset (each wait bounded), queued records are left for the next run
            await self._stop_workers()
        finally:
            await self._cancel_workers()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), self.commit_timeout_s)
            self._consumer = None
            for tp in list(self.producers):
                await self._close_producer(tp)

    # ----------------------------------------------------------------- the pipeline

    def _fetchable(self, assigned: set[TopicPartition]) -> tuple[TopicPartition, ...] | None:
        """The partitions to fetch: ``()`` all, ``None`` none (every assigned partition's
        queue holds ``max_records`` of the current generation)."""
        full = {
            tp
            for tp, q in self._queues.items()
            if q.generation == self.generation and len(q.records) >= self.max_records
        }
        if not full:
            return ()
        rest = tuple(tp for tp in assigned if tp not in full)
        return rest or None

    def _enqueue(
        self, tp: TopicPartition, recs: list[ConsumerRecord[bytes, bytes]], generation: int
    ) -> None:
        q = self._queues.get(tp)
        if q is None:
            q = self._queues[tp] = _PartitionQueue(generation)
            q.task = asyncio.create_task(
                self._work(tp, q), name=f"router-loop-{self.name}-p{tp.partition}"
            )
            q.task.add_done_callback(self._worker_done)
        if q.generation != generation:  # fetched before a rebalance: read again
            q.records.clear()
            q.generation = generation
        q.records.extend(recs)
        q.wakeup.set()

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._worker_error is None:
            self._worker_error = exc
        self._room.set()  # wake the fetch loop

    def _check_workers(self) -> None:
        """Raise the error a partition worker died of (the loop restarts)."""
        if self._worker_error is not None:
            raise self._worker_error

    async def _work(self, tp: TopicPartition, q: _PartitionQueue) -> None:
        """The worker of one input partition: its units one after the other, and its
        deferred offsets when due; on stop, its deferred offset (see module docstring)."""
        while not self._stopping:
            deferred = self._deferred.get(tp)
            wait_s: float | None = None
            if deferred is not None:
                wait_s = deferred[1] + self.defer_offsets_s - time.monotonic()
                if wait_s <= 0:
                    await self._flush_deferred_one(tp, float("inf"))
                    continue
            generation = self.generation
            if q.generation != generation:
                q.records.clear()
            if q.records:
                recs = q.records[: self.max_records]
                del q.records[: self.max_records]
                self._room.set()
                await self._handle_unit(tp, recs, generation)
                continue
            q.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(q.wakeup.wait(), wait_s)
        await self._flush_deferred_one(tp, float("inf"))

    async def _stop_workers(self) -> None:
        for q in self._queues.values():
            q.wakeup.set()
        tasks = [q.task for q in self._queues.values() if q.task is not None]
        if tasks:
            await asyncio.gather(*tasks)
        self._check_workers()

    async def _cancel_workers(self) -> None:
        queues, self._queues = self._queues, {}
        tasks = [q.task for q in queues.values() if q.task is not None and not q.task.done()]
        # a worker talks to Redis: a cancel can be lost on Python 3.11 (loket_runtime.tasks)
        await asyncio.gather(
            *(stop_task(t, timeout_s=self.commit_timeout_s, log=self.log) for t in tasks)
        )
        self._worker_error = None

    async def _handle_unit(
        self,
        tp: TopicPartition,
        recs: list[ConsumerRecord[bytes, bytes]],
        generation: int,
    ) -> None:
        records: list[ConsumerRecordLike] = list(recs)
        offsets = {tp: recs[-1].offset + 1}
        attempt = 0
        while True:
            if self._stopping or generation != self.generation:
                return  # not committed: read again from the committed offsets
            producer = self.producers.get(tp)
            if producer is None:  # pragma: no cover - take_over failed: the loop restarts
                raise LoopFenced(f"no producer for {tp}")
            try:
                result = await self.processor.process(records)
                await self.store.write(result.writes)
                if result.recheck:
                    now = await self.store.withdrawals(result.recheck)
                    if any(now.get(cid, {}) != seen for cid, seen in result.recheck.items()):
                        raise RetryableError("consent withdrawn while routing: redo the batch")
                if self.defer_offsets_s > 0 and not result.outgoing and not result.markers:
                    # nothing to publish: no transaction now (see module docstring)
                    since = self._deferred.get(tp, (0, time.monotonic(), generation))[1]
                    self._deferred[tp] = (offsets[tp], since, generation)
                    elapsed: float | None = None
                    break
                started = time.perf_counter()
                await self._commit(producer, result, offsets, generation)
                elapsed = time.perf_counter() - started
                self._deferred.pop(tp, None)  # committed along (a later offset)
                break
            except _Revoked:
                self.log.info("batch_aborted_on_revoke", records=len(records))
                return
            except ProducerFenced as exc:
                raise LoopFenced(str(exc)) from exc
            except (RetryableError, KafkaError, OSError) as exc:
                attempt += 1
                self.metrics.retries.labels(loop=self.name).inc()
                if _producer_broken(producer):
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

    async def _flush_deferred_one(self, tp: TopicPartition, older_than: float) -> None:
        """Commit the deferred offset of ``tp`` if it waited since before ``older_than``
        (monotonic), in an offsets-only transaction of the partition's producer (called
        by the partition's worker only); an offset of an earlier generation (revoked
        since) is dropped. A transient error is retried after a back-off."""
        entry = self._deferred.get(tp)
        if entry is None:
            return
        offset, since, generation = entry
        producer = self.producers.get(tp)
        if generation != self.generation or producer is None:
            self._deferred.pop(tp, None)
            return
        if since > older_than:
            return
        try:
            await self._commit(producer, BatchResult(), {tp: offset}, generation)
        except _Revoked:
            pass
        except (RetryableError, KafkaError, OSError) as exc:
            if _producer_broken(producer):
                raise LoopFenced(f"producer in fatal state: {exc}") from exc
            self.log.warning("deferred_offsets_not_committed", error_class=type(exc).__name__)
            if not self._stopping:
                await asyncio.sleep(self._backoff(1))
            return
        if self._deferred.get(tp, (None,))[0] == offset:
            self._deferred.pop(tp, None)

    async def _flush_deferred(self, older_than: float) -> None:
        """``_flush_deferred_one`` for every partition, one after the other (only where no
        worker runs, e.g. in tests)."""
        for tp in list(self._deferred):
            await self._flush_deferred_one(tp, older_than)

    async def _commit(
        self,
        producer: AIOKafkaProducer,
        result: BatchResult,
        offsets: dict[TopicPartition, int],
        generation: int,
    ) -> None:
        """One transaction: the outputs and the input offsets, all or nothing, within
        ``commit_timeout_s``.

        Raises ``_Revoked`` (aborted), ``LoopFenced`` (the producer is unusable: dead sender
        task, fatal state, timeout, failed abort) or the transient error after an abort.

        At most ``transactions_in_flight`` transactions of the loop write at once: the
        turn covers the outputs, their acks and the commit (or abort), not the begin and
        the input offsets before them (see ``_transaction``). The whole transaction, the
        wait for the turn included, is bounded by ``commit_timeout_s``."""
        if generation != self.generation:
            raise _Revoked
        if _producer_broken(producer):
            raise LoopFenced("the producer's sender task is dead or the producer is fatal")
        # counted in flight from here (no await in between): a revoke now waits for us
        self._inflight += 1
        self.idle.clear()
        try:
            async with asyncio.timeout(self.commit_timeout_s):
                await self._transaction(producer, result, offsets, generation)
        except TimeoutError as exc:
            raise LoopFenced(
                f"transaction not done within {self.commit_timeout_s}s "
                f"(sender task dead: {_sender_dead(producer)})"
            ) from exc
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self.idle.set()

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        result: BatchResult,
        offsets: dict[TopicPartition, int],
        generation: int,
    ) -> None:
        """begin, offsets, then in the loop's turn: send, acks, commit; abort after an error
        (not aiokafka's ``transaction()`` context manager: its abort is an unbounded await
        of its own, and it skips the abort silently in states where it cannot abort).

        The input offsets come first (``AddOffsetsToTxn`` and ``TxnOffsetCommit``, two
        round trips), before the turn: they hold back no reader (offsets become visible
        with the commit only), so other partitions' transactions write meanwhile; the turn
        covers only what keeps read_committed readers waiting (the outputs, from their
        ``AddPartitionsToTxn`` to the commit). Not concurrently with the outputs: the
        broker's KIP-890 verification of a produce then often meets the coordinator busy
        with ``AddOffsetsToTxn`` and refuses it as NOT_ENOUGH_REPLICAS, which aiokafka
        retries after 100 ms (docs/benchmarks.md, 2026-12-04). Every output is acked
        before the commit: aiokafka fails only a refused batch's future, not the
        transaction, so a commit without that wait could commit the input offsets
        without their outputs."""
        await producer.begin_transaction()
        in_turn = False
        try:
            await producer.send_offsets_to_transaction(offsets, self.group_id)
            await self._txn_slots.acquire()
            in_turn = True
            futures = await self._send_all(producer, result)
            if futures:
                await asyncio.gather(*futures)
            if generation != self.generation:
                raise _Revoked
            await producer.commit_transaction()
        except Exception as exc:
            # CancelledError (the timeout) is not caught: no abort on a producer that
            # did not answer in time; the loop restarts and the next producer aborts
            state = producer._txn_manager.state
            if _sender_dead(producer) or state not in (
                TransactionState.IN_TRANSACTION,
                TransactionState.ABORTABLE_ERROR,
            ):
                raise LoopFenced(
                    f"transaction failed in state {state.name}: {type(exc).__name__}: {exc}"
                ) from exc
            try:
                await producer.abort_transaction()
            except Exception as abort_exc:
                raise LoopFenced(f"abort failed: {type(abort_exc).__name__}: {abort_exc}") from exc
            raise
        finally:
            if in_turn:
                self._txn_slots.release()

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


def set_concurrent_transactions_backoff(ms: float) -> None:
    """How long aiokafka's producers wait before retrying the first ``AddPartitionsToTxn``
    of a transaction that the broker refused with ``CONCURRENT_TRANSACTIONS`` (process-wide).

    After ``commit_transaction`` returns, the broker still writes the commit markers for a
    few ms; a transaction begun on the same producer meanwhile is refused and retried after
    aiokafka's fixed 20 ms (``sender.BACKOFF_OVERRIDE``, KAFKA-5477). With a pipeline per
    partition a partition's next transaction often starts that soon, so its question waited
    ~20 ms for nothing: back-to-back transactions on the local broker took 16 ms on average
    with 20 ms, 6-7 ms with 2 ms (docs/benchmarks.md, 2026-12-04)."""
    if not hasattr(_aiokafka_sender, "BACKOFF_OVERRIDE"):  # pragma: no cover - aiokafka changed
        raise RuntimeError("aiokafka.producer.sender.BACKOFF_OVERRIDE is gone: re-check the loop")
    _aiokafka_sender.BACKOFF_OVERRIDE = ms / 1000


def _sender_task(producer: AIOKafkaProducer) -> asyncio.Task[None] | None:
    """The producer's background sender task (aiokafka 0.14: ``Sender.sender_task``)."""
    sender = getattr(producer, "_sender", None)
    return getattr(sender, "sender_task", None)


def _sender_dead(producer: AIOKafkaProducer) -> bool:
    """The sender task ended (error or cancel): no request of the producer completes."""
    task = _sender_task(producer)
    return task is not None and task.done()


def _producer_broken(producer: AIOKafkaProducer) -> bool:
    txn = getattr(producer, "_txn_manager", None)
    return _sender_dead(producer) or (txn is not None and txn.is_fatal_error())


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
