"""A broken idempotent producer is replaced (real Kafka and Redis).

After a broker restart aiokafka's idempotent producer can be left with a gap in its
sequence numbers (a batch failed after it got its number); every later batch on that
partition then fails with OutOfOrderSequenceNumber. Here the gap is made directly, on
every partition, so the broker itself answers OutOfOrderSequenceNumber; intake must answer
503 (never 202), replace the producer, and accept again, losing and doubling nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition
from intake_support import KEY, question, records_before_markers, running_app, until

from loket_intake.settings import IntakeSettings
from loket_schemas import topics

pytestmark = pytest.mark.integration


def raw_producer(app: Any) -> AIOKafkaProducer:
    producer: AIOKafkaProducer = app.state.broker.config.producer._producer.producer
    return producer


async def test_out_of_order_sequence_replaces_the_producer_and_nothing_is_lost(
    loket_settings: dict[str, Any], kafka_bootstrap: str
) -> None:
    settings = IntakeSettings(**loket_settings)
    topic = settings.topic(topics.QUESTIONS)
    async with running_app(settings) as (app, client):
        supervisor = app.state.producer_supervisor
        assert (await client.get("/readyz")).json()["checks"]["kafka_producer"] == "ok"
        old = raw_producer(app)
        partitions = sorted(await old.partitions_for(topic))
        for p in partitions:  # the broker knows this producer on every partition
            await old.send_and_wait(topic, b"{}", key=b"warm", partition=p)
        for p in partitions:  # ... and now the producer skips sequence numbers
            old._txn_manager.increment_sequence_number(TopicPartition(topic, p), 3)

        headers = {**KEY, "Idempotency-Key": "poisoned-1"}
        broken = await client.post("/api/v1/questions", json=question(), headers=headers)
        assert broken.status_code == 503, broken.text
        assert broken.json()["error"]["code"] == "kafka_unavailable"
        assert broken.headers["Retry-After"]

        # the replacement runs in the background
        await until(lambda: supervisor.ready and supervisor.replacements == 1, within=30)
        assert raw_producer(app) is not old
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["kafka_producer"] == "ok"

        retry = await client.post("/api/v1/questions", json=question(), headers=headers)
        assert retry.status_code == 202, retry.text
        others = [
            await client.post("/api/v1/questions", json=question(text=f"vraag {i}"), headers=KEY)
            for i in range(6)
        ]
        assert [r.status_code for r in others] == [202] * 6
        await until(lambda: bool(old._closed), within=30)  # stopped in the background
    records = await records_before_markers(kafka_bootstrap, topic)
    keys = [r.key.decode() for r in records if r.key != b"warm"]
    accepted = [retry.json()["case_id"]] + [r.json()["case_id"] for r in others]
    # the rejected batch was never written: every accepted case is on the topic once
    assert sorted(keys) == sorted(accepted)
    assert supervisor.replacements == 1
