"""Unit tests of intake's producer supervision: which errors replace the producer, and the
FastStream internals the replacement relies on (so a FastStream upgrade fails here)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from faststream.kafka.publisher.producer import AioKafkaFastProducerImpl
from faststream.kafka.publisher.state import EmptyProducerState, RealProducer

from loket_intake.publishers import (
    FastStreamPublisher,
    ProducerSupervisor,
    ProducerUnavailable,
    PublishTimeout,
    needs_new_producer,
)
from loket_intake.settings import IntakeSettings
from loket_runtime.kafka import create_broker
from loket_schemas.kafka import KafkaRecord


@pytest.mark.parametrize(
    "exc",
    [
        OutOfOrderSequenceNumber(),
        UnknownProducerId(),
        ProducerFenced(),
        InvalidProducerEpoch(),
        ProducerClosed(),
        # batches that expired without a leader: their sequence numbers are burnt
        LeaderNotAvailableError(),
        NotLeaderForPartitionError(),
    ],
)
def test_fatal_producer_errors_replace_the_producer(exc: BaseException) -> None:
    assert needs_new_producer(exc)


@pytest.mark.parametrize(
    "exc", [KafkaTimeoutError(), TimeoutError(), PublishTimeout(), ValueError(), RuntimeError()]
)
def test_timeouts_and_non_kafka_errors_do_not(exc: BaseException) -> None:
    assert not needs_new_producer(exc)


def test_faststream_internals_the_supervisor_swaps() -> None:
    broker = create_broker(bootstrap="127.0.0.1:1", request_timeout_ms=1000, linger_ms=2)
    assert isinstance(broker.config.producer, AioKafkaFastProducerImpl)
    assert isinstance(broker.config.producer._producer, EmptyProducerState)
    kwargs = broker._connection_kwargs
    assert kwargs["enable_idempotence"] is True and kwargs["acks"] == "all"
    assert kwargs["request_timeout_ms"] == 1000
    assert RealProducer(object()).producer is not None  # type: ignore[arg-type]


def test_lease_must_outlive_the_publish_timeout() -> None:
    with pytest.raises(ValueError, match="idempotency_lease_s"):
        IntakeSettings(publish_timeout_s=10, idempotency_lease_s=10)
    assert IntakeSettings().idempotency_lease_s > IntakeSettings().publish_timeout_s


class FakeBroker:
    """Only what the supervisor reads before deciding to replace."""

    class config:  # mimics broker.config
        producer: Any = None


async def test_supervisor_ignores_errors_of_older_producers_and_test_brokers() -> None:
    supervisor = ProducerSupervisor(FakeBroker())  # type: ignore[arg-type]
    supervisor.report(OutOfOrderSequenceNumber(), generation=0)
    assert supervisor.ready and supervisor.generation == 0  # not a real producer: no-op
    FakeBroker.config.producer = AioKafkaFastProducerImpl(parser=None, decoder=None)
    try:
        supervisor.report(KafkaTimeoutError(), generation=0)
        assert supervisor.ready and supervisor.generation == 0
        supervisor.report(OutOfOrderSequenceNumber(), generation=-1)  # an older producer
        assert supervisor.ready and supervisor.generation == 0
    finally:
        FakeBroker.config.producer = None
        await supervisor.close()


async def test_publisher_refuses_while_the_producer_is_replaced() -> None:
    class Publisher:
        calls = 0

        async def publish(self, *_args: Any, **_kwargs: Any) -> None:
            self.calls += 1

    supervisor = ProducerSupervisor(FakeBroker())  # type: ignore[arg-type]
    never = asyncio.get_running_loop().create_future()
    supervisor._replacing = asyncio.ensure_future(never)
    inner = Publisher()
    publisher = FastStreamPublisher(inner, 1.0, supervisor)
    record = KafkaRecord(key=b"k", value=b"{}", headers=(("ce_id", b"e1"),))
    try:
        assert not await supervisor.readiness()
        with pytest.raises(ProducerUnavailable):
            await publisher.publish(record)
        assert inner.calls == 0
    finally:
        supervisor._replacing.cancel()
        await asyncio.gather(supervisor._replacing, return_exceptions=True)
    assert supervisor.ready
    await publisher.publish(record)
    assert inner.calls == 1
