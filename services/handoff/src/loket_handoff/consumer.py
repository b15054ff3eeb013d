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
   partition of the batch). The commit runs while the next batch is fetched and
   handled (its round trip is off the loop's path); the next batch's commit, a revoke
   and the loop's end first wait for it, so commits stay in order and an error of it
   still restarts the loop (which then reads from the committed offsets: the next
   batch's records are handled again, idempotently). A commit that fails because the
   group rebalanced (``CommitFailedError``, ``IllegalStateError``) is logged and
   counted, not retried: the new owner of the partition reads those records again and
   applies them idempotently (at-least-once).

Rebalances: the listener bumps a generation counter on revoke and waits for the batch in
flight (a lock) and its commit, so a finished batch commits before the partitions go; a
batch still retrying when its partitions are revoked stops retrying and commits nothing.
The wait is bounded (``revoke_wait_s``, below the group's rebalance timeout): a batch
that takes longer does not hold up the whole group; its commit then fails as
"rebalanced" and the new owner reads its records again.

Nothing in the loop waits without a bound: the offset commit has a deadline
(``commit_timeout_s``; past it the loop restarts from the committed offsets), the loop
records when it last polled, and :meth:`HandoffConsumer.problem` (the ``consumer``
readiness check) reports a loop that failed twice in a row, has not polled for
``stall_after_s``, or whose task ended. The supervisor task restarts the loop after any
exception; should the supervisor itself end unexpectedly, it is started again.
``stop()`` is bounded too (see :mod:`loket_runtime.tasks`).
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
from loket_runtime.tasks import stop_task


class CommitTimeout(Exception):
    """The offset commit did not finish in time: the loop restarts."""


class Processor(Protocol):
    async def process(self, records: Sequence[Any]) -> tuple[list[Any], BaseException | None]: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: HandoffConsumer) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.loop.generation += 1
        # let the batch in flight finish (and commit) before the partitions are given up,
        # but not for longer than the group waits for us (a stuck batch must not stall
        # the whole group's rebalance; its commit then fails and the records are re-read)
        try:
            async with asyncio.timeout(self.loop.revoke_wait_s):
                async with self.loop.batch_lock:
                    await self.loop.commit_done(raise_errors=False)
        except TimeoutError:
            self.loop.log.warning(
                "revoke_without_batch", waited_s=self.loop.revoke_wait_s, partitions=len(revoked)
            )

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
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        retry_attempts: int = 8,
        retry_backoff_s: float = 0.1,
        retry_backoff_max_s: float = 5.0,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        commit_timeout_s: float = 30.0,
        stall_after_s: float = 300.0,
    ) -> None:
        self.processor = processor
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group_id = group_id
        self.metrics = metrics
        self.log = log
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.commit_timeout_s = commit_timeout_s
        self.stall_after_s = stall_after_s
        #: The listener waits this long for the batch in flight (rebalance timeout = the
        #: session timeout in aiokafka; leave the rest of it for the JoinGroup).
        self.revoke_wait_s = session_timeout_ms / 1000 * 0.6
        self.generation = 0
        self.assigned: set[TopicPartition] = set()
        self.batch_lock = asyncio.Lock()
        self.running = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._last_poll = 0.0
        self._restarts = 0
        #: The offset commit of the last handled batch, running while the next one is
        #: fetched and handled (see :meth:`commit_done`).
        self._commit_task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._stopping = False
        self._last_poll = time.monotonic()
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="handoff-consumer")
        self._task.add_done_callback(self._supervisor_ended)

    def _supervisor_ended(self, task: asyncio.Task[None]) -> None:
        """The supervisor only ends on stop(); if it ends otherwise, start it again."""
        if self._stopping or task is not self._task:
            return
        error = None if task.cancelled() else task.exception()
        self.metrics.consumer_restarts.inc()
        self.log.error(
            "consumer_supervisor_ended",
            cancelled=task.cancelled(),
            error=f"{type(error).__name__}: {error}"[:300] if error else None,
        )
        self._spawn()

    def problem(self) -> str | None:
        """Why the consumer is not healthy (None: it is); the readiness check reports it."""
        task = self._task
        if task is None or task.done():
            return "consumer task is not running"
        if not self.running and self._restarts >= 2:
            return f"consumer loop failing ({self._restarts} failed runs in a row)"
        idle = time.monotonic() - self._last_poll
        if idle > self.stall_after_s:
            return f"consumer loop has not polled Kafka for {idle:.0f}s"
        return None

    async def wait_running(self, within_s: float = 30.0) -> None:
        await asyncio.wait_for(self._started.wait(), within_s)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop after the batch in flight (committed or not); cancel after ``grace_s``."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=grace_s)
        if not done:
            await stop_task(task, timeout_s=grace_s, log=self.log)

    def _backoff(self, attempt: int) -> float:
        return float(min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** (attempt - 1)))

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._restarts += 1
                self.metrics.consumer_restarts.inc()
                self.log.warning(
                    "consumer_restart",
                    error_class=type(exc).__name__,
                    error=str(exc)[:300],
                    restarts=self._restarts,
                )
                await asyncio.sleep(self._backoff(min(self._restarts, 6)))
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
            fetch_min_bytes=self.fetch_min_bytes,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            metadata_max_age_ms=5000,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )
        consumer.subscribe(self.topics, listener=_Listener(self))
        try:
            await consumer.start()
            self.running = True
            self._restarts = 0
            self._started.set()
            self.log.info("consumer_started", topics=self.topics, group_id=self.group_id)
            while not self._stopping:
                self._last_poll = time.monotonic()
                batch = await consumer.getmany(
                    timeout_ms=self.poll_timeout_ms, max_records=self.max_records
                )
                if batch:
                    await self._handle_batch(consumer, batch)
            await self.commit_done()  # the last batch's commit, before the consumer stops
        finally:
            with contextlib.suppress(Exception):
                await self.commit_done(raise_errors=False)
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
            await self.commit_done()  # the previous batch's commit first: commits in order
            self._commit_task = asyncio.create_task(
                self._commit(consumer, offsets), name="handoff-offset-commit"
            )
            self.metrics.batches.observe(len(records))
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def commit_done(self, *, raise_errors: bool = True) -> None:
        """Wait for the offset commit of the last handled batch (if any is running).

        Its error (:class:`CommitTimeout`, a Kafka error) is raised here, restarting the
        loop, unless ``raise_errors`` is False (revoke, stop: it was logged and counted).
        The commit is bounded by ``commit_timeout_s`` itself.
        """
        task, self._commit_task = self._commit_task, None
        if task is None:
            return
        try:
            # shielded: if the caller is cancelled, the commit still ends within its bound
            await asyncio.shield(task)
        except Exception as exc:
            if raise_errors:
                raise
            self.log.warning("commit_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
                      ) -> None:  # fmt: skip
        try:
            # bounded: aiokafka retries retriable commit errors (coordinator moving or
            # loading) without end; past the deadline the loop restarts instead
            async with asyncio.timeout(self.commit_timeout_s):
                await consumer.commit(offsets)
        except TimeoutError as exc:
            self.metrics.commit_failures.inc()
            raise CommitTimeout(
                f"offset commit not done within {self.commit_timeout_s:g}s"
            ) from exc
        except (CommitFailedError, IllegalStateError) as exc:
            # rebalanced: the new owner of these partitions handles the records again
            # (idempotent apply); nothing to retry here
            self.metrics.commit_failures.inc()
            self.log.warning("commit_failed_rebalanced", error=str(exc)[:300])
        except KafkaError as exc:
            # e.g. coordinator unavailable for longer than aiokafka retries: restart
            self.metrics.commit_failures.inc()
            raise exc
