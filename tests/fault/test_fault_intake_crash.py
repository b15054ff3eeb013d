"""Intake killed between the Kafka ack and settling the Idempotency-Key (real Redis).

Found by tests/fault/test_fault_kills.py::test_kill9_service_mid_flow[intake]: one
question out of 2,000 became two cases. Reproduced here deterministically: the first
request publishes QuestionReceived and then the process "dies" (no code runs after the
ack); the pending marker's TTL runs out; the client retries with the same key and body.
The retry must republish the SAME case (same case id, same event id) so the router's
dedup makes it exactly one case.

Fixed: the claim stores the case (id, reference, receive time) as the key's *intent*
before anything is published; a retry after the lease ran out resumes it. The test even
lets the whole lease record vanish (not just time out): the intent is a separate key.
"""

from __future__ import annotations

from typing import Any

import pytest

from loket_intake import domain, handlers
from loket_intake.store import RedisIntakeStore
from loket_schemas.kafka import KafkaRecord, decode
from loket_schemas.tracing import new_trace

pytestmark = [pytest.mark.integration]


class ProcessDied(BaseException):
    """Stands for kill -9: nothing after the publish runs."""


class Publisher:
    def __init__(self, die_after_publish: bool) -> None:
        self.die = die_after_publish
        self.records: list[KafkaRecord] = []

    async def publish(self, record: KafkaRecord) -> None:
        self.records.append(record)
        if self.die:
            raise ProcessDied


async def test_retry_after_crash_between_ack_and_settle_republishes_same_case(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisIntakeStore(redis_client, redis_prefix)
    body = {
        "channel": "balie",
        "initiative": "bibliotheek-rotterdam-centrale",
        "text": "Ik heb een studieschuld bij DUO en kan niet aflossen.",
    }
    question = domain.parse_question(body)
    assert not isinstance(question, list)
    idem = handlers.Idempotency(
        "bibliotheek-rotterdam-centrale", "client-key-1", domain.body_hash(body)
    )

    def deps(publisher: Publisher) -> handlers.Deps:
        return handlers.Deps(
            store=store,
            questions=publisher,
            consent=publisher,
            pseudonym_key="k",
            status_public_url="http://handoff",
        )

    dying = Publisher(die_after_publish=True)
    with pytest.raises(ProcessDied):
        await handlers.submit_question(question, deps(dying), trace=new_trace(), idempotency=idem)
    # the pending marker's lease runs out (LOKET_IDEMPOTENCY_LEASE_S, 15 s by default)
    await redis_client.pexpire(store.idem_key(idem.scope, idem.key), 1)
    await redis_client.delete("never-used")  # a round trip so the expiry has passed
    while await redis_client.exists(store.idem_key(idem.scope, idem.key)):
        await redis_client.ping()
    healthy = Publisher(die_after_publish=False)
    result = await handlers.submit_question(
        question, deps(healthy), trace=new_trace(), idempotency=idem
    )
    [first] = dying.records
    [again] = healthy.records
    assert result.accepted.case_id == decode(first.value, first.headers).data.case_id
    assert (
        decode(again.value, again.headers).attributes.id
        == decode(first.value, first.headers).attributes.id
    )
    # the identical event: same bytes, same CloudEvents headers (only the trace differs)
    assert again.key == first.key and again.value == first.value
    assert [h for h in again.headers if h[0] != "traceparent"] == [
        h for h in first.headers if h[0] != "traceparent"
    ]
    assert result.accepted.reference == decode(first.value, first.headers).data.reference
    # settled: a further retry replays the 202 and publishes nothing
    replay = await handlers.submit_question(
        question, deps(healthy), trace=new_trace(), idempotency=idem
    )
    assert replay.replayed and replay.accepted == result.accepted
    assert len(healthy.records) == 1
