"""Fault tests on real infrastructure: Kafka down -> 503 and nothing half-done, nothing
lost on retry; Redis down -> 503 (fail closed) and nothing published."""

from __future__ import annotations

import json
from typing import Any

import pytest
from intake_support import INITIATIVE, KEY, question, records_before_markers, running_app

from loket_intake.settings import IntakeSettings
from loket_runtime.testing import LocalKafka, free_port
from loket_schemas import topics

pytestmark = pytest.mark.integration


async def test_kafka_down_gives_503_and_a_retry_loses_nothing(
    local_kafka: LocalKafka, redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    settings = IntakeSettings(
        kafka_bootstrap=local_kafka.bootstrap,
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        kafka_request_timeout_ms=2000,
        publish_timeout_s=4,
        retry_after_s=7,
    )
    idem_key = f"{redis_prefix}idem:{INITIATIVE}:down-1"
    intent_key = f"{redis_prefix}intent:{INITIATIVE}:down-1"
    headers = {**KEY, "Idempotency-Key": "down-1"}
    async with running_app(settings) as (_app, client):
        warm = await client.post("/api/v1/questions", json=question(text="warm"), headers=KEY)
        assert warm.status_code == 202, warm.text

        local_kafka.kill()
        down = await client.post("/api/v1/questions", json=question(), headers=headers)
        assert down.status_code == 503, down.text
        assert down.headers["Retry-After"] == "7"
        assert down.json()["error"]["code"] == "kafka_unavailable"
        # nothing claims success: the lease is released at once, the intent keeps the case
        assert await redis_client.get(idem_key) is None
        intent = json.loads(await redis_client.get(intent_key))
        failed_case = intent["case_id"]

        plain = await client.post("/api/v1/questions", json=question(text="zonder sleutel"),
                                  headers=KEY)  # fmt: skip
        assert plain.status_code == 503
        # both timed-out records are still queued in the producer: their references stay
        assert len(await redis_client.keys(f"{redis_prefix}ref:*")) == 3

        local_kafka.start()  # same data dir and ports: the broker comes back
        retry = await client.post("/api/v1/questions", json=question(), headers=headers)
        assert retry.status_code == 202, retry.text
        assert retry.json()["case_id"] == failed_case
        again = await client.post("/api/v1/questions", json=question(), headers=headers)
        assert again.json() == retry.json()
    assert json.loads(await redis_client.get(idem_key))["state"] == "done"
    assert await redis_client.get(intent_key) is None
    records = await records_before_markers(local_kafka.bootstrap, topics.QUESTIONS, wait_s=60)
    keys = [r.key.decode() for r in records]
    # the retry awaited the queued record instead of producing a second copy: every case
    # is on the topic exactly once (warm, the retried one, and the late one without key)
    assert keys.count(failed_case) == 1
    assert keys.count(warm.json()["case_id"]) == 1
    assert len(keys) == len(set(keys)) == 3


async def test_redis_down_fails_closed_with_503(
    loket_settings: dict[str, Any], kafka_bootstrap: str
) -> None:
    settings = IntakeSettings(
        **{**loket_settings, "redis_url": f"redis://127.0.0.1:{free_port()}/0"},
        readiness_timeout_s=0.5,
    )
    async with running_app(settings) as (_app, client):
        for headers in (KEY, {**KEY, "Idempotency-Key": "r-1"}):
            resp = await client.post("/api/v1/questions", json=question(), headers=headers)
            assert resp.status_code == 503, resp.text
            assert resp.headers["Retry-After"] == "5"
            assert resp.json()["error"]["code"] == "redis_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
    assert await records_before_markers(kafka_bootstrap, settings.topic(topics.QUESTIONS)) == []
