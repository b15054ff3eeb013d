"""B5: a transactional producer whose sender task died must not hang the loop (REAL Kafka).

aiokafka runs every request of a producer (produce, AddOffsetsToTxn, TxnOffsetCommit,
EndTxn) in one background "sender" task. When that task dies (a broker restart once made
``_find_coordinator`` raise ``KafkaConnectionError`` inside ``_do_txn_offset_commit``:
"Unexpected error in sender routine"), nothing ever completes a pending request of that
producer again. The router's questions loop is hit mid-transaction, after its outputs were
written and while the input offsets are being added to the transaction, in two ways:

* ``error``: the sender routine dies with an exception (the logged B5 failure);
* ``cancel``: the sender task is cancelled and ends without an error (aiokafka then fails
  nothing, so every pending future of the producer stays pending for good);
* ``stuck``: the offset commit request never ends (the sender task stays alive, stuck);
  stopping that producer then cannot finish either.

The loop must give the transaction up within the commit timeout, restart with new
producers (the new producer with the same transactional id aborts the open transaction)
and route every question exactly once, in bounded time.

A produce request the broker refuses for good must not let the transaction commit either:
aiokafka fails only that batch's future, not the transaction, so the loop adds the input
offsets and commits only once every output was acked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError
from router_kafka_helpers import Rec, fixed_classifier, publish, snapshot, wait_for

from loket_router.app import create_app
from loket_router.loop import TransactionalLoop
from loket_router.settings import RouterSettings
from loket_schemas import topics
from loket_schemas.events import CaseDelivered, CaseRouted, QuestionReceived
from loket_schemas.vocabulary import AgencyCode

pytestmark = pytest.mark.integration

A = AgencyCode
COMMIT_TIMEOUT_S = 3.0


@pytest.fixture
async def router(
    loket_settings: dict[str, Any], make_topics: Any
) -> AsyncIterator[tuple[RouterSettings, TransactionalLoop]]:
    await make_topics(*topics.ALL_TOPICS)
    settings = RouterSettings(
        **loket_settings,
        poll_timeout_ms=100,
        batch_max_records=20,
        transaction_commit_timeout_s=COMMIT_TIMEOUT_S,
        retry_backoff_s=0.1,
        retry_backoff_max_s=0.5,
    )
    app = create_app(settings)
    service = app.state.router
    service.ctx.classify = fixed_classifier(A.BELASTINGDIENST, A.UWV)
    async with app.router.lifespan_context(app):
        for loop in service.loops:
            await loop.wait_running()
        (questions,) = [loop for loop in service.loops if loop.name == "questions"]
        yield settings, questions


def question(i: int) -> QuestionReceived:
    return QuestionReceived(
        case_id=str(uuid.uuid4()),
        reference=f"LK-{i:04d}-SNDR",
        channel="web",
        initiative_id="bibliotheek-utrecht-neude",
        text="Ik heb een belastingschuld en ben mijn baan kwijt.",
        received_at=datetime.now(UTC),
    )


def routed(recs: list[Rec]) -> Counter[str | None]:
    return Counter(r.key for r in recs if r.type == CaseRouted.EVENT_TYPE)


@pytest.mark.parametrize("death", ["error", "cancel", "stuck"])
async def test_dead_sender_task_restarts_the_loop_and_routes_exactly_once(
    router: tuple[RouterSettings, TransactionalLoop], death: str
) -> None:
    settings, loop = router
    bootstrap = settings.kafka_bootstrap
    outputs = [settings.topic(t) for t in (topics.HANDOFFS, *topics.AGENCY_TOPICS)]
    first = [question(i) for i in range(30)]
    await publish(bootstrap, settings.topic(topics.QUESTIONS), first)
    await wait_for(bootstrap, outputs, lambda rs: len(routed(rs)) == len(first))

    # arm: the next TxnOffsetCommit of any of the loop's producers kills its sender task
    assert loop.producers
    old_producers = set(loop.producers.values())
    killed: list[Any] = []
    for producer in old_producers:
        sender = producer._sender
        original = sender._do_txn_offset_commit

        async def die(
            offsets: Any, group_id: str, sender: Any = sender, orig: Any = original
        ) -> Any:
            if killed:
                return await orig(offsets, group_id)
            killed.append(sender)
            if death == "error":  # as logged in B5: the coordinator lookup failed
                raise KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
            if death == "cancel":  # returns without committing the offsets, then the
                # sender task is cancelled while it waits for work: it ends quietly
                asyncio.get_running_loop().call_soon(sender._sender_task.cancel)
                return None
            await asyncio.Event().wait()  # stuck: never answers

        sender._do_txn_offset_commit = die

    restarts_before = loop.metrics.restarts.labels(loop=loop.name)._value.get()
    second = [question(i) for i in range(30, 130)]
    started = time.monotonic()
    await publish(bootstrap, settings.topic(topics.QUESTIONS), second)
    recs = await wait_for(
        bootstrap, outputs, lambda rs: len(routed(rs)) == len(first) + len(second), within_s=60
    )
    elapsed = time.monotonic() - started

    assert len(killed) == 1, "the fault did not fire"
    assert killed[0].sender_task.done()  # stuck: cancelled when its producer was closed
    assert loop.metrics.restarts.labels(loop=loop.name)._value.get() > restarts_before
    assert not old_producers & set(loop.producers.values()), "the loop kept a dead producer"
    counts = routed(recs)
    assert set(counts) == {q.case_id for q in first + second}
    assert set(counts.values()) == {1}, "a case was routed more than once"
    deliveries = Counter(
        (r.key, CaseDelivered.model_validate(r.data).agency)
        for r in recs
        if r.type == CaseDelivered.EVENT_TYPE
    )
    assert len(deliveries) == 2 * len(counts)
    assert set(deliveries.values()) == {1}, "a (case, agency) was delivered more than once"
    # commit timeout + restart backoff + rejoin + retry, far from "for good"
    assert elapsed < 45, f"recovery took {elapsed:.1f}s"
    print(f"death={death}: all routed {elapsed:.1f}s after the second batch")


async def test_an_output_the_broker_refuses_commits_nothing_until_it_is_accepted(
    router: tuple[RouterSettings, TransactionalLoop], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A produce request the broker refuses for good (here MESSAGE_TOO_LARGE: the agency
    topic takes at most 200 bytes) fails only that batch's future in aiokafka, not the
    transaction. The loop must abort, not commit: nothing of the question is visible, its
    offset is not committed, and it is routed exactly once when the topic takes it."""
    settings, loop = router
    bootstrap = settings.kafka_bootstrap
    refusing = settings.topic(topics.agency_topic(A.BELASTINGDIENST))
    outputs = [settings.topic(t) for t in (topics.HANDOFFS, *topics.AGENCY_TOPICS)]
    warm = question(0)  # the loop's producers and partitions are up before the fault
    await publish(bootstrap, settings.topic(topics.QUESTIONS), [warm])
    await wait_for(bootstrap, outputs, lambda rs: len(routed(rs)) == 1)

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:

        async def max_message_bytes(value: str) -> None:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, refusing, {"max.message.bytes": value})]
            )

        await max_message_bytes("200")
        refused = question(1)
        attempts: list[int] = []
        retried = asyncio.Event()  # the refused question's unit was handled a third time
        original = loop.processor.process

        async def counting(records: Any) -> Any:
            if any(r.key == refused.case_id.encode() for r in records):
                attempts.append(1)
                if len(attempts) >= 3:
                    retried.set()
            return await original(records)

        monkeypatch.setattr(loop.processor, "process", counting)
        await publish(bootstrap, settings.topic(topics.QUESTIONS), [refused])
        try:
            await asyncio.wait_for(retried.wait(), 30)
        except TimeoutError:
            recs = await snapshot(bootstrap, outputs)
            pytest.fail(f"the refused unit was not retried; routed now: {dict(routed(recs))}")
        recs = await snapshot(bootstrap, outputs)
        assert refused.case_id not in {r.key for r in recs}, "an output of a refused unit"
        assert routed(recs) == Counter({warm.case_id: 1})

        await max_message_bytes("1048588")  # the broker's default
        recs = await wait_for(bootstrap, outputs, lambda rs: len(routed(rs)) == 2, within_s=60)
    finally:
        await admin.close()
    assert routed(recs) == Counter({warm.case_id: 1, refused.case_id: 1})
    deliveries = Counter(
        (r.key, CaseDelivered.model_validate(r.data).agency)
        for r in recs
        if r.type == CaseDelivered.EVENT_TYPE
    )
    assert deliveries == Counter(
        {(c, a): 1 for c in (warm.case_id, refused.case_id) for a in (A.BELASTINGDIENST, A.UWV)}
    )
