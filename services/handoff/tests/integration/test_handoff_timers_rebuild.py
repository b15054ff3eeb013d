"""SLA timers with a fake clock, two instances firing each timer once, rebuild after a wipe.

All on real Kafka and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from handoff_itkit import Producer, case_routed, eventually, running, settings_for, store_of
from redis.asyncio import Redis

from loket_handoff.clock import FakeClock
from loket_handoff.domain import Handoff, HandoffState, handoff_id_for
from loket_handoff.rebuild import read_topic_to_end
from loket_handoff.store import HandoffStore
from loket_schemas import topics
from loket_schemas.events import AcceptHandoff, ContactPerson
from loket_schemas.kafka import DecodeError, decode
from loket_schemas.vocabulary import AgencyCode

pytestmark = pytest.mark.integration


async def lifecycle_counts(
    bootstrap: str, prefix: str, within: float = 60.0
) -> Counter[tuple[str, str]]:
    """(event type, handoff id) -> number of records on loket.handoffs.v1.

    Records, not distinct event ids: an event published twice (same deterministic id)
    counts twice, so ``== 1`` means exactly once on the wire."""
    try:
        async with asyncio.timeout(within):
            records = await read_topic_to_end(bootstrap, topics.prefixed(topics.HANDOFFS, prefix))
    except TimeoutError as exc:
        raise AssertionError(f"reading loket.handoffs.v1 took more than {within:g}s") from exc
    counts: Counter[tuple[str, str]] = Counter()
    for record in records:
        try:
            env = decode(record.value, record.headers)
        except DecodeError:
            continue
        counts[(type(env.data).__name__, getattr(env.data, "handoff_id", "-"))] += 1
    return counts


async def wipe(redis_url: str, prefix: str) -> int:
    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


async def snapshot(store: HandoffStore, case_ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case_id in case_ids:
        found = await store.case_view(case_id)
        assert found is not None
        case, handoffs = found
        out[case_id] = (case, sorted(handoffs, key=lambda h: h.handoff_id))
    timers = await store.redis.zrange(store.timers_key, 0, -1, withscores=True)
    out["timers"] = sorted(timers)
    return out


def counter_value(app: FastAPI, name: str) -> float:
    value: float = getattr(app.state.handoff_metrics, name)._value.get()
    return value


async def test_two_instances_fire_each_timer_exactly_once(
    loket_settings: dict[str, Any],
) -> None:
    """Two instances share the projection and both sweep: every SLA timer fires on one of
    them, once (one warning, one breach, one escalation per handoff on Kafka)."""
    clock = FakeClock()
    settings = settings_for(loket_settings)
    case_ids = [str(uuid.uuid4()) for _ in range(12)]
    hids = [handoff_id_for(c, AgencyCode.UWV, 0) for c in case_ids]
    async with contextlib.AsyncExitStack() as stack:
        app_a = await stack.enter_async_context(running(settings, clock))
        app_b = await stack.enter_async_context(running(settings, clock))
        producer = await stack.enter_async_context(
            Producer(settings.kafka_bootstrap, settings.topic_prefix)
        )
        store = store_of(app_a)
        for case_id in case_ids:
            await producer.send(topics.HANDOFFS, case_routed(case_id))

        async def handoffs() -> list[Handoff]:
            found = [await store.get_handoff(h) for h in hids]
            return [h for h in found if h is not None]

        async def all_offered() -> bool:
            return len(await handoffs()) == len(hids)

        async def no_claim_in_flight() -> bool:
            return await store.redis.zcard(store.k("inflight")) == 0

        await eventually(all_offered, what=f"{len(hids)} handoffs offered (consumers of A and B)")
        first = await store.get_handoff(hids[0])
        assert first is not None

        clock.set(first.accept_warn_at + timedelta(minutes=1))

        async def all_warned() -> bool:
            return all(h.warned for h in await handoffs())

        await eventually(all_warned, what="an SLA warning on every handoff")
        # every warning claim handled before the clock jumps hours ahead (a lease in fake
        # time would otherwise expire at once and hand the timer out a second time)
        await eventually(no_claim_in_flight, what="the warning claims released")
        assert len(await store.at_risk()) == len(hids)

        clock.set(first.accept_due_at + timedelta(minutes=1))

        async def all_escalated() -> bool:
            return all(h.state is HandoffState.ESCALATED for h in await handoffs())

        await eventually(all_escalated, what="a breach and an escalation of every handoff")
        await eventually(no_claim_in_flight, what="the breach claims released")
        # both instances keep sweeping: a timer handed out twice would fire now
        swept = {app: counter_value(app, "timer_sweeps") for app in (app_a, app_b)}

        async def three_more_sweeps_each() -> bool:
            return all(counter_value(app, "timer_sweeps") >= n + 3 for app, n in swept.items())

        await eventually(three_more_sweeps_each, what="three more sweeps of each instance")
        fired = counter_value(app_a, "timers_fired") + counter_value(app_b, "timers_fired")
        assert fired == 2 * len(hids), f"{fired} timer firings for {len(hids)} handoffs"
        assert await store.redis.zcard(store.timers_key) == 0
        counts = await lifecycle_counts(settings.kafka_bootstrap, settings.topic_prefix)
        for kind in ("HandoffSlaWarning", "HandoffSlaBreached", "HandoffEscalated"):
            wrong = {h: counts[(kind, h)] for h in hids if counts[(kind, h)] != 1}
            assert not wrong, f"{kind} records per handoff (want exactly 1): {wrong}"
        stats = await store.stats()
        assert stats["escalated:sla"] == len(hids)


async def test_rebuild_after_redis_wipe_mid_run_and_on_restart(
    loket_settings: dict[str, Any], redis_url: str
) -> None:
    clock = FakeClock()
    settings = settings_for(loket_settings)
    prefix = settings.redis_key_prefix
    case_ids = [str(uuid.uuid4()) for _ in range(6)]
    hids = [handoff_id_for(c, AgencyCode.UWV, 0) for c in case_ids]
    async with Producer(settings.kafka_bootstrap, settings.topic_prefix) as producer:
        async with running(settings, clock) as app:
            store = store_of(app)
            for case_id in case_ids:
                await producer.send(
                    topics.HANDOFFS, case_routed(case_id, supporting=(AgencyCode.GEMEENTE,))
                )

            async def all_offered() -> bool:
                return all([await store.get_handoff(h) is not None for h in hids])

            await eventually(all_offered, what="offers")
            # accept the first case (lead): owner moves; it must survive the wipe
            await producer.send(
                topics.HANDOFF_RESPONSES,
                AcceptHandoff(
                    case_id=case_ids[0],
                    handoff_id=hids[0],
                    agency=AgencyCode.UWV,
                    contact=ContactPerson(name="Anna"),
                ),
                source="agency:uwv",
            )

            async def accepted() -> bool:
                h = await store.get_handoff(hids[0])
                return h is not None and h.state is HandoffState.ACCEPTED

            await eventually(accepted, what="accept")
            before = await snapshot(store, case_ids)
            timeline_before = await store.timeline(case_ids[0])
            assert await wipe(redis_url, prefix) > 0
            assert not await store.is_ready()

            # the sweep notices the missing marker and rebuilds from Kafka
            await eventually(store.is_ready, what="rebuild after wipe")
            assert await snapshot(store, case_ids) == before
            assert await store.timeline(case_ids[0]) == timeline_before
            assert (await store.get_case(case_ids[0])).owner == "agency:uwv"  # type: ignore[union-attr]

        # restart after another wipe: rebuilt on start, then timers fire exactly once
        await wipe(redis_url, prefix)
        async with running(settings, clock) as app:
            store = store_of(app)
            assert await snapshot(store, case_ids) == before
            offered = await store.get_handoff(hids[1])
            assert offered is not None
            clock.set(offered.accept_due_at + timedelta(minutes=1))

            async def all_breached() -> bool:
                hs = [await store.get_handoff(h) for h in hids[1:]]
                return all(h is not None and h.state is HandoffState.ESCALATED for h in hs)

            await eventually(all_breached, what="breaches after restart")
            counts = await lifecycle_counts(settings.kafka_bootstrap, settings.topic_prefix)
            for hid in hids[1:]:
                assert counts[("HandoffSlaBreached", hid)] == 1
                assert counts[("HandoffEscalated", hid)] == 1
                assert counts[("HandoffOffered", hid)] == 1
            assert counts[("HandoffAccepted", hids[0])] == 1
