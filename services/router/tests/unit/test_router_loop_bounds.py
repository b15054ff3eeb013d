"""TransactionalLoop: every wait on a producer is bounded (docs/reliability.md B5);
units with nothing to publish defer their offsets instead of committing a transaction.

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
