"""The Idempotency-Key life cycle on real Redis (the Lua scripts are the logic under test),
with a recording publisher in place of Kafka: claim, lease, intent, resume, replay."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from intake_support import until

from loket_intake import domain, handlers
from loket_intake.errors import IdempotencyConflict, IdempotencyInProgress, PublishFailed
from loket_intake.store import IDEMPOTENCY_TTL_S, RedisIntakeStore
from loket_schemas.kafka import KafkaRecord, decode
from loket_schemas.tracing import new_trace

pytestmark = pytest.mark.integration

INITIATIVE = "bibliotheek-rotterdam-centrale"
BODY: dict[str, Any] = {
    "channel": "balie",
    "initiative": INITIATIVE,
    "text": "Mijn toeslag is stopgezet en ik heb een schuld bij de Belastingdienst.",
    "consent": {"categories": ["identity", "question_text"]},
}


class Crash(BaseException):
    """Stands for kill -9 right after the Kafka ack: nothing after the publish runs."""


class Publisher:
    """Records what was 'acknowledged'; optionally fails, crashes or blocks."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.records: list[KafkaRecord] = []
        self.release = asyncio.Event()

    async def publish(self, record: KafkaRecord) -> None:
        if self.mode == "fail":
            raise PublishFailed("Kafka said no")
        if self.mode == "block":
            await self.release.wait()
        self.records.append(record)
        if self.mode == "crash":
            raise Crash


def deps(store: RedisIntakeStore, publisher: Publisher, wait_s: float = 2.0) -> handlers.Deps:
    return handlers.Deps(
        store=store,
        questions=publisher,
        consent=publisher,
        pseudonym_key="k",
        status_public_url="http://handoff",
        idempotency_wait_s=wait_s,
    )


def question(body: dict[str, Any] = BODY) -> domain.QuestionIn:
    parsed = domain.parse_question(body)
    assert not isinstance(parsed, list)
    return parsed


def idem(key: str, body: dict[str, Any] = BODY) -> handlers.Idempotency:
    return handlers.Idempotency(INITIATIVE, key, domain.body_hash(body))


async def submit(d: handlers.Deps, key: str, body: dict[str, Any] = BODY) -> handlers.Submitted:
    return await handlers.submit_question(
        question(body), d, trace=new_trace(), idempotency=idem(key, body)
    )


async def wait_gone(redis: Any, key: str) -> None:
    """Until the lease's PX TTL ran out in Redis."""

    async def gone() -> bool:
        return not await redis.exists(key)

    await until(gone, within=5)


async def wait_claimed(redis: Any, key: str) -> None:
    async def claimed() -> bool:
        return await redis.get(key) is not None

    await until(claimed, within=5)


def event_id(record: KafkaRecord) -> str:
    return decode(record.value, record.headers).attributes.id


async def test_crash_after_ack_is_resumed_with_the_same_event_after_the_lease(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisIntakeStore(redis_client, redis_prefix, lease_ms=300)
    dying = Publisher("crash")
    with pytest.raises(Crash):
        await submit(deps(store, dying), "k1")
    lease = json.loads(await redis_client.get(store.idem_key(INITIATIVE, "k1")))
    [first] = dying.records
    sent = decode(first.value, first.headers).data
    # the pending record carries the case it is publishing
    assert lease["state"] == "pending"
    assert (lease["case_id"], lease["reference"]) == (sent.case_id, sent.reference)
    await wait_gone(redis_client, store.idem_key(INITIATIVE, "k1"))

    healthy = Publisher()
    result = await submit(deps(store, healthy), "k1")
    [again] = healthy.records
    assert (result.accepted.case_id, result.accepted.reference) == (sent.case_id, sent.reference)
    assert event_id(again) == event_id(first) and again.value == first.value
    done = json.loads(await redis_client.get(store.idem_key(INITIATIVE, "k1")))
    assert done["state"] == "done" and done["response"] == result.accepted.body()
    assert await redis_client.ttl(store.idem_key(INITIATIVE, "k1")) > IDEMPOTENCY_TTL_S - 60
    assert await store.get_intent(INITIATIVE, "k1") is None
    # the case record and reference reservation were written once, at the first claim
    case = await store.get_case(sent.case_id)
    assert case is not None and case.reference == sent.reference
    assert case.consent_id == domain.consent_id_for(sent.case_id)


async def test_retry_while_in_flight_waits_then_409_and_replays_once_settled(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisIntakeStore(redis_client, redis_prefix)
    slow = Publisher("block")
    first = asyncio.create_task(submit(deps(store, slow), "k2"))
    await wait_claimed(redis_client, store.idem_key(INITIATIVE, "k2"))
    other = Publisher()
    with pytest.raises(IdempotencyInProgress) as busy:
        await submit(deps(store, other, wait_s=0.2), "k2")
    assert "retry in" in busy.value.message
    # a retry that is still waiting when the first one settles gets its 202
    waiting = asyncio.create_task(submit(deps(store, other, wait_s=5), "k2"))
    await asyncio.sleep(0.1)  # let it start polling
    slow.release.set()
    original, replayed = await asyncio.gather(first, waiting)
    assert replayed.replayed and replayed.accepted == original.accepted
    assert other.records == [] and len(slow.records) == 1


async def test_failed_publish_releases_the_lease_and_the_retry_resumes_at_once(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisIntakeStore(redis_client, redis_prefix, lease_ms=60_000)
    with pytest.raises(PublishFailed):
        await submit(deps(store, Publisher("fail")), "k3")
    assert await redis_client.get(store.idem_key(INITIATIVE, "k3")) is None
    intent = await store.get_intent(INITIATIVE, "k3")
    assert intent is not None
    ok = Publisher()
    result = await submit(deps(store, ok), "k3")  # no waiting for a 60 s lease
    assert result.accepted.case_id == intent.case_id
    assert result.accepted.reference == intent.reference
    [record] = ok.records
    assert event_id(record) == handlers.question_event_id(intent.case_id)


async def test_other_body_after_a_crash_is_a_conflict(redis_client: Any, redis_prefix: str) -> None:
    store = RedisIntakeStore(redis_client, redis_prefix, lease_ms=200)
    with pytest.raises(Crash):
        await submit(deps(store, Publisher("crash")), "k4")
    other_body = {**BODY, "text": "Een heel andere vraag over mijn WW-uitkering."}
    with pytest.raises(IdempotencyConflict):  # while the lease holds
        await submit(deps(store, Publisher()), "k4", other_body)
    await wait_gone(redis_client, store.idem_key(INITIATIVE, "k4"))
    with pytest.raises(IdempotencyConflict):  # and after: the intent remembers the body
        await submit(deps(store, Publisher()), "k4", other_body)


async def test_slow_owner_losing_its_lease_still_answers_the_same_case(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisIntakeStore(redis_client, redis_prefix, lease_ms=200)
    slow = Publisher("block")
    first = asyncio.create_task(submit(deps(store, slow), "k5"))
    await wait_claimed(redis_client, store.idem_key(INITIATIVE, "k5"))
    await wait_gone(redis_client, store.idem_key(INITIATIVE, "k5"))
    fast = Publisher()
    resumed = await submit(deps(store, fast), "k5")
    slow.release.set()
    original = await first
    # both published the identical event (the router routes a case id once) and both
    # answered the same body; the record is the resumer's
    assert original.accepted == resumed.accepted
    assert event_id(slow.records[0]) == event_id(fast.records[0])
    done = await store.get_idempotency(INITIATIVE, "k5")
    assert done is not None and done.state == "done"


async def test_reference_collision_draws_another_and_the_intent_has_the_reserved_one(
    redis_client: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisIntakeStore(redis_client, redis_prefix)
    await redis_client.set(f"{redis_prefix}ref:LK-AAAA-AAAA", "someone-else")
    drawn = iter(["LK-AAAA-AAAA", "LK-BBBB-BBBB"])
    monkeypatch.setattr(domain, "new_reference", lambda: next(drawn))
    with pytest.raises(Crash):
        await submit(deps(store, Publisher("crash")), "k6")
    intent = await store.get_intent(INITIATIVE, "k6")
    assert intent is not None and intent.reference == "LK-BBBB-BBBB"
    assert await redis_client.get(f"{redis_prefix}ref:LK-AAAA-AAAA") == b"someone-else"
    assert await redis_client.get(f"{redis_prefix}ref:LK-BBBB-BBBB") == intent.case_id.encode()


async def test_failed_record_of_the_previous_version_is_resumed(
    redis_client: Any, redis_prefix: str
) -> None:
    """Rolling upgrade: intake before intents wrote ``failed`` records holding the case."""
    store = RedisIntakeStore(redis_client, redis_prefix)
    legacy = {
        "state": "failed",
        "hash": domain.body_hash(BODY),
        "token": "",
        "response": None,
        "case_id": "11111111-2222-4333-8444-555555555555",
        "reference": "LK-CCCC-DDDD",
        "received_at": "2026-11-29T08:00:00.123456+00:00",
    }
    await redis_client.set(store.idem_key(INITIATIVE, "k7"), json.dumps(legacy), ex=3600)
    ok = Publisher()
    result = await submit(deps(store, ok), "k7")
    assert (result.accepted.case_id, result.accepted.reference) == (
        legacy["case_id"],
        legacy["reference"],
    )
    [record] = ok.records
    assert (
        decode(record.value, record.headers).data.received_at.isoformat() == (legacy["received_at"])
    )
