"""The handoff service's consumer loop: raw aiokafka, batches, one offset commit per batch.

One consumer (group ``loket-handoff``) reads loket.handoffs.v1, loket.handoff-responses.v1
and loket.consent.v1 with ``read_committed`` and without auto-commit:

1. ``getmany(max_records=N)``; the records of one partition come in offset order. Every
   record is keyed by case id, so all records of a case are in one partition per topic.
2. :meth:`BatchProcessor.process`: groups by key, runs the groups concurrently and the
   records of each group in order (one case lock and one projection load per group).
   Every publish inside awaits the broker ack before the handler returns.
3. Groups that failed (Kafka/Redis trouble, lock contention) are retried with
   exponential backoff; handling is idempotent, so a retry never doubles anything.
   After ``retry_attempts`` the loop restarts from the committed offsets (fresh
   consumer), like FastStream's redelivery did before.
4. When every group is done: ONE commit with explicit offsets (last offset + 1 per
   partition of the batch). A commit that fails because the group rebalanced
   (``CommitFailedError``, ``IllegalStateError``) is logged and counted, not retried:
   the new owner of the partition reads those records again and applies them
   idempotently (at-least-once).

Rebalances: the listener bumps a generation counter on revoke and waits for the batch in
flight (a lock), so a finished batch commits before the partitions go; a batch still
retrying when its partitions are revoked stops retrying and commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from loket_handoff.metrics import HandoffMetrics


class Processor(Protocol):
    async def process(self, records: Sequence[Any]) -> tuple[list[Any], BaseException | None]: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: HandoffConsumer) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.loop.generation += 1
        # let the batch in flight finish (and commit) before the partitions are given up
        async with self.loop.batch_lock:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.loop.assigned = set(assigned)


class HandoffConsumer:
    """Background task consuming the handoff service's input topics in batches."""

    def __init__(
        self,
        processor: Processor,
        *,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        metrics: HandoffMetrics,
        log: Any,
        max_records: int = 500,
        poll_timeout_ms: int = 200,
        retry_attempts: int = 8,
        retry_backoff_s: float = 0.1,
        retry_backoff_max_s: float = 5.0,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
    ) -> None:
        self.processor = processor
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group_id = group_id
        self.metrics = metrics
        self.log = log
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.generation = 0
        self.assigned: set[TopicPartition] = set()
        self.batch_lock = asyncio.Lock()
        self.running = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name="handoff-consumer")

    async def wait_running(self, within_s: float = 30.0) -> None:
        await asyncio.wait_for(self._started.wait(), within_s)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop after the batch in flight (committed or not); cancel after ``grace_s``."""
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
                self.metrics.consumer_restarts.inc()
                self.log.warning(
                    "consumer_restart",
                    error_class=type(exc).__name__,
                    error=str(exc)[:300],
                    restarts=restarts,
                )
                await asyncio.sleep(self._backoff(min(restarts, 6)))
            finally:
                self.running = False

    # ----------------------------------------------------------------- the loop

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="loket-handoff",
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            metadata_max_age_ms=5000,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )
        consumer.subscribe(self.topics, listener=_Listener(self))
        try:
            await consumer.start()
            self.running = True
            self._started.set()
            self.log.info("consumer_started", topics=self.topics, group_id=self.group_id)
            while not self._stopping:
                batch = await consumer.getmany(
                    timeout_ms=self.poll_timeout_ms, max_records=self.max_records
                )
                if batch:
                    await self._handle_batch(consumer, batch)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10.0)

    async def _handle_batch(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]
    ) -> None:
        async with self.batch_lock:
            generation = self.generation
            records = [r for recs in batch.values() for r in recs]
            offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
            started = time.perf_counter()
            pending: Sequence[Any] = records
            attempt = 0
            while True:
                try:
                    failed, error = await self.processor.process(pending)
                except Exception as exc:  # e.g. NotReady: the projection is being rebuilt
                    failed, error = list(pending), exc
                if not failed:
                    break
                attempt += 1
                self.metrics.batch_retries.inc()
                if attempt >= self.retry_attempts:
                    assert error is not None
                    raise error  # restart from the committed offsets
                delay = self._backoff(attempt)
                self.log.warning(
                    "batch_retry",
                    attempt=attempt,
                    records=len(failed),
                    delay_s=delay,
                    error_class=type(error).__name__,
                    error=str(error)[:300],
                )
                await asyncio.sleep(delay)  # backoff before handling the failed groups again
                if generation != self.generation:
                    self.log.info("batch_abandoned_on_revoke", records=len(records))
                    return  # the partitions' next owner reads them again
                pending = failed
            await self._commit(consumer, offsets)
            self.metrics.batches.observe(len(records))
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
                      ) -> None:  # fmt: skip
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # rebalanced: the new owner of these partitions handles the records again
            # (idempotent apply); nothing to retry here
            self.metrics.commit_failures.inc()
            self.log.warning("commit_failed_rebalanced", error=str(exc)[:300])
        except KafkaError as exc:
            # e.g. coordinator unavailable for longer than aiokafka retries: restart
            self.metrics.commit_failures.inc()
            raise exc
