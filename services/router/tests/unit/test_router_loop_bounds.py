"""TransactionalLoop: every wait on a producer is bounded (docs/reliability.md B5);
units with nothing to publish defer their offsets instead of committing a transaction;
the per-partition pipeline (partitions commit independently, each in order, at most one
unit in flight per partition; records queued before a rebalance are dropped; a dying
worker restarts the loop).

A fake transactional producer stands in for aiokafka's: its "sender task" is a real
asyncio task the tests end or leave hanging, its requests are futures the tests leave
pending. The real-Kafka proof is ``integration/test_router_sender_death.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.producer.transaction_manager import TransactionState

from loket_router.errors import LoopFenced, RetryableError
from loket_router.handlers import BatchResult
from loket_router.loop import TransactionalLoop
from loket_router.metrics import RouterMetrics
from loket_runtime.health import new_registry

TP = TopicPartition("t.loket.questions.v1", 0)
TIMEOUT_S = 0.3


class FakeTxn:
    def __init__(self) -> None:
        self.state = TransactionState.READY

    def is_fatal_error(self) -> bool:
        return self.state == TransactionState.FATAL_ERROR


class FakeSender:
    def __init__(self) -> None:
        self.sender_task: asyncio.Task[None] = asyncio.create_task(asyncio.Event().wait())


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeProducer:
    """begin/offsets/commit/abort like aiokafka's; ``hang`` names the call that never ends,
    ``fail`` the one that raises."""

    def __init__(self, hang: str = "", fail: str = "") -> None:
        self._txn_manager = FakeTxn()
        self._sender = FakeSender()
        self.client = FakeClient()
        self.hang = hang
        self.fail = fail
        self.calls: list[str] = []

    async def _step(self, name: str) -> None:
        self.calls.append(name)
        if self.hang == name:
            await asyncio.Event().wait()
        if self.fail == name:
            self._txn_manager.state = TransactionState.ABORTABLE_ERROR
            raise KafkaError(f"{name} failed")

    async def begin_transaction(self) -> None:
        self._txn_manager.state = TransactionState.IN_TRANSACTION
        await self._step("begin")

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        await self._step("offsets")

    async def commit_transaction(self) -> None:
        await self._step("commit")
        self._txn_manager.state = TransactionState.READY

    async def abort_transaction(self) -> None:
        await self._step("abort")
        self._txn_manager.state = TransactionState.READY

    async def stop(self) -> None:
        await self._step("stop")
        self._sender.sender_task.cancel()


def make_loop() -> TransactionalLoop:
    return TransactionalLoop(
        _Processor(),
        bootstrap="127.0.0.1:1",
        topic=TP.topic,
        group_id="g",
        transactional_id_prefix="tx",
        store=None,  # type: ignore[arg-type]
        metrics=RouterMetrics(new_registry()),
        log=structlog.get_logger("test"),
        commit_timeout_s=TIMEOUT_S,
    )


class _Processor:
    name = "questions"
    group_id = "g"
    input_topic = TP.topic

    async def process(self, records: Any) -> BatchResult:  # pragma: no cover - unused
        return BatchResult()


async def commit(loop: TransactionalLoop, producer: FakeProducer) -> None:
    await loop._commit(producer, BatchResult(), {TP: 10}, loop.generation)  # type: ignore[arg-type]


async def test_a_transaction_commits_begin_offsets_commit() -> None:
    loop, producer = make_loop(), FakeProducer()
    await commit(loop, producer)
    assert producer.calls == ["begin", "offsets", "commit"]
    assert loop.idle.is_set()


@pytest.mark.parametrize("hang", ["begin", "offsets", "commit"])
async def test_a_transaction_that_never_ends_is_given_up_within_the_timeout(hang: str) -> None:
    loop, producer = make_loop(), FakeProducer(hang=hang)
    started = asyncio.get_running_loop().time()
    with pytest.raises(LoopFenced, match="not done within"):
        await commit(loop, producer)
    assert asyncio.get_running_loop().time() - started < TIMEOUT_S + 0.5
    assert "abort" not in producer.calls  # no unbounded abort on an unanswering producer
    assert loop.idle.is_set()  # a revoke waiting for the commit is released


async def test_a_dead_sender_task_fences_the_loop_before_any_request() -> None:
    loop, producer = make_loop(), FakeProducer()
    producer._sender.sender_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await producer._sender.sender_task
    with pytest.raises(LoopFenced, match="sender task"):
        await commit(loop, producer)
    assert producer.calls == []


async def test_a_fatal_producer_fences_the_loop() -> None:
    loop, producer = make_loop(), FakeProducer()
    producer._txn_manager.state = TransactionState.FATAL_ERROR
    with pytest.raises(LoopFenced):
        await commit(loop, producer)


async def test_a_transient_error_aborts_and_is_raised_for_a_retry() -> None:
    loop, producer = make_loop(), FakeProducer(fail="offsets")
    with pytest.raises(KafkaError, match="offsets failed"):
        await commit(loop, producer)
    assert producer.calls == ["begin", "offsets", "abort"]
    assert producer._txn_manager.state == TransactionState.READY


async def test_an_abort_that_never_ends_is_given_up_within_the_timeout() -> None:
    loop, producer = make_loop(), FakeProducer(fail="offsets", hang="abort")
    with pytest.raises(LoopFenced, match="not done within"):
        await commit(loop, producer)
    assert producer.calls == ["begin", "offsets", "abort"]


async def test_an_error_from_a_producer_that_cannot_abort_fences_the_loop() -> None:
    loop, producer = make_loop(), FakeProducer()

    async def offsets(offsets: Any, group_id: str) -> None:
        producer._txn_manager.state = TransactionState.FATAL_ERROR
        raise RetryableError("sender died")

    producer.send_offsets_to_transaction = offsets  # type: ignore[method-assign]
    with pytest.raises(LoopFenced, match="FATAL_ERROR"):
        await commit(loop, producer)
    assert "abort" not in producer.calls


async def test_stopping_a_stuck_producer_is_bounded() -> None:
    loop, producer = make_loop(), FakeProducer(hang="stop")
    loop.producers[TP] = producer  # type: ignore[assignment]
    started = asyncio.get_running_loop().time()
    await loop._close_producer(TP)
    assert asyncio.get_running_loop().time() - started < TIMEOUT_S + 0.5
    await asyncio.sleep(0)
    assert producer._sender.sender_task.cancelled()
    assert producer.client.closed
    assert TP not in loop.producers


async def test_a_stray_cancel_from_a_producer_does_not_end_the_loop() -> None:
    """``stop`` raising CancelledError (a library task cancelled under us) is a failed
    stop, not a cancel of the loop."""
    loop, producer = make_loop(), FakeProducer()

    async def stop() -> None:
        raise asyncio.CancelledError

    producer.stop = stop  # type: ignore[method-assign]
    loop.producers[TP] = producer  # type: ignore[assignment]
    await loop._close_producer(TP)
    assert producer.client.closed


class _Rec:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = TP.topic, TP.partition, offset
        self.key, self.value, self.headers = b"k", b"{}", []


class _Store:
    async def write(self, writes: Any) -> None:
        return None

    async def mark_done(self, markers: Any) -> None:
        return None


async def test_a_unit_without_outputs_defers_its_offset_to_the_next_transaction() -> None:
    loop, producer = make_loop(), FakeProducer()
    loop.store = _Store()  # type: ignore[assignment]
    loop.producers[TP] = producer  # type: ignore[assignment]
    offsets: list[Any] = []

    async def send_offsets(o: Any, group_id: str) -> None:
        offsets.append(dict(o))

    producer.send_offsets_to_transaction = send_offsets  # type: ignore[method-assign]
    await loop._handle_unit(TP, [_Rec(0), _Rec(1)], loop.generation)  # type: ignore[list-item]
    assert producer.calls == [] and loop._deferred[TP][0] == 2  # no transaction
    await loop._flush_deferred(time.monotonic() - 60)  # not due yet
    assert producer.calls == []
    # a unit with an output commits its later offset, which covers the deferred one
    from loket_router.handlers import Outgoing
    from loket_schemas.kafka import KafkaRecord

    async def one_output(records: Any) -> BatchResult:
        return BatchResult(outgoing=[Outgoing("out", KafkaRecord(b"k", b"v", ()))])

    async def no_send(producer: Any, result: Any) -> list[Any]:
        return []

    loop.processor.process = one_output  # type: ignore[method-assign]
    loop._send_all = no_send  # type: ignore[method-assign]
    await loop._handle_unit(TP, [_Rec(2)], loop.generation)  # type: ignore[list-item]
    assert offsets == [{TP: 3}] and TP not in loop._deferred


async def test_deferred_offsets_are_committed_when_due_and_dropped_after_a_revoke() -> None:
    loop, producer = make_loop(), FakeProducer()
    loop.store = _Store()  # type: ignore[assignment]
    loop.producers[TP] = producer  # type: ignore[assignment]
    await loop._handle_unit(TP, [_Rec(5)], loop.generation)  # type: ignore[list-item]
    await loop._flush_deferred(float("inf"))
    assert producer.calls == ["begin", "offsets", "commit"] and not loop._deferred
    await loop._handle_unit(TP, [_Rec(6)], loop.generation)  # type: ignore[list-item]
    loop.generation += 1  # revoked: the next owner reads record 6 again
    await loop._flush_deferred(float("inf"))
    assert producer.calls == ["begin", "offsets", "commit"] and not loop._deferred


# ----------------------------------------------------------------- the pipeline

TP1 = TopicPartition(TP.topic, 1)


class _PRec:
    def __init__(self, tp: TopicPartition, offset: int) -> None:
        self.topic, self.partition, self.offset = tp.topic, tp.partition, offset
        self.key, self.value, self.headers = b"k", b"{}", []


class _GatedProducer(FakeProducer):
    """Records the offsets of every transaction; a commit waits for ``gate``; every step
    sets ``progress``."""

    def __init__(self, progress: asyncio.Event) -> None:
        super().__init__()
        self.progress = progress
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_commit = asyncio.Event()
        self.offsets: list[int] = []

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.offsets.extend(offsets.values())
        await self._step("offsets")
        self.progress.set()

    async def commit_transaction(self) -> None:
        self.in_commit.set()
        await self.gate.wait()
        await super().commit_transaction()
        self.progress.set()


def pipeline_loop(*tps: TopicPartition) -> tuple[TransactionalLoop, list[tuple[int, list[int]]]]:
    """A loop whose processor publishes one output per unit and logs (partition, offsets)
    of every unit it is called with, and a gated producer per partition; the loop's
    ``progress`` event is set on every call (``until`` waits on it)."""
    from loket_router.handlers import Outgoing
    from loket_schemas.kafka import KafkaRecord

    loop = make_loop()
    loop.store = _Store()  # type: ignore[assignment]
    progress = asyncio.Event()
    loop.progress = progress  # type: ignore[attr-defined]
    units: list[tuple[int, list[int]]] = []

    async def process(records: Any) -> BatchResult:
        units.append((records[0].partition, [r.offset for r in records]))
        progress.set()
        return BatchResult(outgoing=[Outgoing("out", KafkaRecord(b"k", b"v", ()))])

    async def no_send(producer: Any, result: Any) -> list[Any]:
        return []

    loop.processor.process = process  # type: ignore[method-assign]
    loop._send_all = no_send  # type: ignore[method-assign]
    for tp in tps:
        loop.producers[tp] = _GatedProducer(progress)  # type: ignore[assignment]
    return loop, units


def recs(tp: TopicPartition, *offsets: int) -> list[Any]:
    return [_PRec(tp, o) for o in offsets]


async def until(loop: TransactionalLoop, condition: Any, within_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds, re-checked whenever the loop made progress."""
    progress: asyncio.Event = loop.progress  # type: ignore[attr-defined]
    async with asyncio.timeout(within_s):
        while not condition():
            progress.clear()
            await progress.wait()


async def test_partitions_commit_independently_each_in_order_one_unit_in_flight() -> None:
    loop, units = pipeline_loop(TP, TP1)
    loop._txn_slots = asyncio.Semaphore(2)  # transactions_in_flight=2
    p0: _GatedProducer = loop.producers[TP]  # type: ignore[assignment]
    p1: _GatedProducer = loop.producers[TP1]  # type: ignore[assignment]
    p0.gate.clear()  # partition 0's first transaction stays in flight
    try:
        loop._enqueue(TP, recs(TP, 0, 1), loop.generation)
        await asyncio.wait_for(p0.in_commit.wait(), 5)
        loop._enqueue(TP, recs(TP, 2), loop.generation)  # queued behind the one in flight
        loop._enqueue(TP, recs(TP, 3), loop.generation)
        loop._enqueue(TP1, recs(TP1, 0), loop.generation)
        await until(loop, lambda: p1.offsets == [1] and "commit" in p1.calls)
        assert units == [(0, [0, 1]), (1, [0])]  # partition 0's next unit waits
        assert not loop.idle.is_set()  # partition 0's commit is still in flight
        p0.gate.set()
        await until(loop, lambda: p0.offsets == [2, 4] and p0.calls.count("commit") == 2)
        # what queued meanwhile forms one unit, in offset order
        assert units == [(0, [0, 1]), (1, [0]), (0, [2, 3])]
        assert loop.idle.is_set()
    finally:
        loop._stopping = True
        await loop._stop_workers()


async def test_transactions_of_a_loop_take_turns_by_default() -> None:
    """transactions_in_flight=1: partition 1's unit is processed and its transaction
    begun with its input offsets while partition 0's transaction is open, but its outputs
    and commit wait until that one is done."""
    loop, units = pipeline_loop(TP, TP1)
    p0: _GatedProducer = loop.producers[TP]  # type: ignore[assignment]
    p1: _GatedProducer = loop.producers[TP1]  # type: ignore[assignment]
    p0.gate.clear()
    try:
        loop._enqueue(TP, recs(TP, 0), loop.generation)
        await asyncio.wait_for(p0.in_commit.wait(), 5)
        loop._enqueue(TP1, recs(TP1, 0), loop.generation)
        await until(loop, lambda: len(units) == 2)
        await until(loop, lambda: p1.calls == ["begin", "offsets"])
        for _ in range(20):  # no I/O in between: a turn not waited for would commit now
            await asyncio.sleep(0)
        assert p1.calls == ["begin", "offsets"]  # its outputs and commit wait their turn
        p0.gate.set()
        await until(loop, lambda: p1.calls == ["begin", "offsets", "commit"])
        assert p0.calls == ["begin", "offsets", "commit"] and p1.offsets == [1]
    finally:
        p0.gate.set()
        loop._stopping = True
        await loop._stop_workers()


async def test_records_queued_before_a_rebalance_are_dropped() -> None:
    loop, units = pipeline_loop(TP)
    p0: _GatedProducer = loop.producers[TP]  # type: ignore[assignment]
    p0.gate.clear()
    try:
        loop._enqueue(TP, recs(TP, 0), loop.generation)
        await asyncio.wait_for(p0.in_commit.wait(), 5)
        loop._enqueue(TP, recs(TP, 1, 2), loop.generation)
        loop.generation += 1  # a revoke: the commit in flight completes, the queue is stale
        p0.gate.set()
        await until(loop, lambda: p0.calls.count("commit") == 1)
        loop._enqueue(TP, recs(TP, 1), loop.generation)  # read again after the rebalance
        await until(loop, lambda: p0.calls.count("commit") == 2)
        assert units == [(0, [0]), (0, [1])] and p0.offsets == [1, 2]
    finally:
        loop._stopping = True
        await loop._stop_workers()


async def test_a_full_queue_is_not_fetched() -> None:
    loop, _ = pipeline_loop(TP, TP1)
    loop.max_records = 2
    p0: _GatedProducer = loop.producers[TP]  # type: ignore[assignment]
    p0.gate.clear()
    try:
        assert loop._fetchable({TP, TP1}) == ()
        loop._enqueue(TP, recs(TP, 0), loop.generation)
        await asyncio.wait_for(p0.in_commit.wait(), 5)
        loop._enqueue(TP, recs(TP, 1, 2), loop.generation)
        assert loop._fetchable({TP, TP1}) == (TP1,)
        assert loop._fetchable({TP}) is None  # nothing to fetch: wait for room
        loop.generation += 1  # a stale queue does not count
        assert loop._fetchable({TP, TP1}) == ()
    finally:
        p0.gate.set()
        loop._stopping = True
        await loop._stop_workers()


async def test_a_dying_worker_restarts_the_loop() -> None:
    loop, _ = pipeline_loop(TP, TP1)

    async def fenced(records: Any) -> BatchResult:
        raise LoopFenced("producer fenced")

    loop.processor.process = fenced  # type: ignore[method-assign]
    loop._enqueue(TP, recs(TP, 0), loop.generation)
    task = loop._queues[TP].task
    assert task is not None
    with pytest.raises(LoopFenced):
        await task
    assert loop._room.is_set()  # the fetch loop wakes up
    with pytest.raises(LoopFenced, match="producer fenced"):
        loop._check_workers()
    await loop._cancel_workers()
    assert loop._worker_error is None and not loop._queues


async def test_a_worker_that_loses_a_cancel_is_still_stopped() -> None:
    """Python 3.11 can lose a cancel inside redis-py's ``wait_for`` (loket_runtime.tasks):
    the worker carries on; stopping the workers cancels again until it ended."""
    loop, _ = pipeline_loop(TP)
    entered, cancels = asyncio.Event(), []

    async def swallows_one_cancel(records: Any) -> BatchResult:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancels.append(1)  # lost: carries on as if never cancelled
        await asyncio.Event().wait()
        return BatchResult()  # pragma: no cover - never reached

    loop.processor.process = swallows_one_cancel  # type: ignore[method-assign]
    loop._enqueue(TP, recs(TP, 0), loop.generation)
    await asyncio.wait_for(entered.wait(), 5)
    task = loop._queues[TP].task
    assert task is not None
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(loop._cancel_workers(), 5)
    assert task.cancelled() and cancels == [1]
    # re-cancelled after loket_runtime.tasks.RECANCEL_S, not left waiting
    assert asyncio.get_running_loop().time() - started < 2


async def test_a_worker_commits_its_deferred_offset_when_due_and_on_stop() -> None:
    loop, units = pipeline_loop(TP)
    loop.defer_offsets_s = 0.05
    p0: _GatedProducer = loop.producers[TP]  # type: ignore[assignment]

    async def nothing(records: Any) -> BatchResult:
        units.append((records[0].partition, [r.offset for r in records]))
        loop.progress.set()  # type: ignore[attr-defined]
        return BatchResult()

    loop.processor.process = nothing  # type: ignore[method-assign]
    loop._enqueue(TP, recs(TP, 0), loop.generation)
    await until(loop, lambda: p0.offsets == [1])  # due after 50 ms: an offsets-only transaction
    loop.defer_offsets_s = 60.0
    loop._enqueue(TP, recs(TP, 1), loop.generation)
    await until(loop, lambda: len(units) == 2)
    assert TP in loop._deferred and p0.offsets == [1]
    loop._stopping = True
    await loop._stop_workers()  # stopping commits it
    assert p0.offsets == [1, 2] and not loop._deferred


def test_the_concurrent_transactions_backoff_is_set_on_aiokafka() -> None:
    from aiokafka.producer import sender

    from loket_router.loop import set_concurrent_transactions_backoff

    before = sender.BACKOFF_OVERRIDE
    try:
        set_concurrent_transactions_backoff(2)
        assert sender.BACKOFF_OVERRIDE == 0.002
    finally:
        sender.BACKOFF_OVERRIDE = before
