"""Smoke tests of the foundation against real Kafka and Redis (no mocks)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from faststream.kafka import KafkaMessage
from redis.asyncio import Redis

from loket_runtime.kafka import create_broker, ensure_topics, stop_broker
from loket_runtime.testing import LocalKafka, consume_until, header

pytestmark = pytest.mark.integration


async def test_faststream_publish_is_acked_and_consumed(
    kafka_bootstrap: str, make_topics: Any, unique_id: str
) -> None:
    [topic] = await make_topics("smoke.v1", partitions=3)
    broker = create_broker(bootstrap=kafka_bootstrap, client_id="smoke")
    received: asyncio.Future[tuple[dict[str, Any], dict[str, Any], bytes | None]] = (
        asyncio.get_running_loop().create_future()
    )

    @broker.subscriber(topic, group_id=f"smoke-{unique_id}", auto_offset_reset="earliest")
    async def on_message(body: dict[str, Any], msg: KafkaMessage) -> None:
        if not received.done():
            received.set_result((body, dict(msg.headers), msg.raw_message.key))

    async with broker:
        await broker.start()
        metadata = await broker.publish(
            {"hello": "loket"},
            topic,
            key=b"case-1",
            headers={"ce_id": f"id-{unique_id}", "content-type": "application/json"},
        )
        # publish returned the broker's acknowledgement: a real offset on a real partition
        assert metadata.topic == topic
        assert metadata.offset >= 0
        body, headers, key = await asyncio.wait_for(received, timeout=30)

    assert body == {"hello": "loket"}
    assert headers["ce_id"] == f"id-{unique_id}"
    assert key == b"case-1"
    # the record is on the topic with its headers (independent raw consumer)
    [record] = await consume_until(kafka_bootstrap, topic, count=1, timeout=20)
    assert header(record, "ce_id") == f"id-{unique_id}"


async def test_broker_factory_uses_acks_all_and_idempotence(kafka_bootstrap: str) -> None:
    broker = create_broker(bootstrap=kafka_bootstrap, client_id="smoke-cfg")
    async with broker:
        await broker.connect()
        producer = broker.config.producer._producer.producer  # the aiokafka producer
        assert producer._txn_manager is not None  # set only with enable_idempotence=True
        assert producer._sender._acks == -1  # acks="all"


async def test_ensure_topics_is_idempotent(kafka_bootstrap: str, topic_prefix: str) -> None:
    name = f"{topic_prefix}idempotent.v1"
    assert await ensure_topics(kafka_bootstrap, [name], partitions=3) == [name]
    assert await ensure_topics(kafka_bootstrap, [name], partitions=3) == []


@pytest.mark.slow
async def test_publish_fails_loudly_when_broker_is_down(unique_id: str) -> None:
    """publish awaits the broker's ack: with the broker gone it raises, in bounded time."""
    with LocalKafka() as kafka:
        topic = f"down-{unique_id}"
        await ensure_topics(kafka.bootstrap, [topic], partitions=1)
        broker = create_broker(
            bootstrap=kafka.bootstrap,
            client_id="smoke-down",
            request_timeout_ms=3000,
            delivery_timeout_s=4.0,
        )
        await broker.start()
        try:
            md = await broker.publish(b"before", topic, key=b"k")
            assert md.offset == 0
            kafka.stop()
            started = time.monotonic()
            with pytest.raises(KafkaTimeoutError, match="not acknowledged"):
                await broker.publish(b"after", topic, key=b"k")
            assert time.monotonic() - started < 10
            # and once the broker is back, publishing works again (same data dir)
            kafka.start()
            md = await broker.publish(b"again", topic, key=b"k")
            assert md.offset >= 1
        finally:
            assert await stop_broker(broker, timeout=15)


async def test_redis_set_get_with_aof(redis_url: str, redis_prefix: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
        key = f"{redis_prefix}smoke"
        await client.set(key, "value", ex=60)
        assert await client.get(key) == "value"
        await client.delete(key)
    finally:
        await client.aclose()
