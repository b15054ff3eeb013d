"""Helpers for handoff integration tests on real Kafka and Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from loket_handoff.app import create_app
from loket_handoff.clock import Clock
from loket_handoff.settings import HandoffSettings
from loket_handoff.store import HandoffStore
from loket_runtime.testing import consume_until
from loket_schemas import topics
from loket_schemas.events import AgencyAssignment, AgencyRole, CaseRouted, Message
from loket_schemas.kafka import decode, encode, service_source
from loket_schemas.vocabulary import AgencyCode, Urgency

T = TypeVar("T")


def settings_for(loket_settings: dict[str, Any], **extra: Any) -> HandoffSettings:
    base = {
        "handoff_dev_keys": True,
        "handoff_timer_interval_s": 0.05,
        "readiness_timeout_s": 2.0,
    }
    base.update(extra)
    return HandoffSettings(**loket_settings, **base)


@contextlib.asynccontextmanager
async def running(
    settings: HandoffSettings,
    clock: Clock | None = None,
    *,
    start_within: float = 60.0,
    stop_within: float = 60.0,
) -> AsyncIterator[FastAPI]:
    """The app with its lifespan entered; starting and stopping are bounded (a stop that
    hangs fails the test with that message instead of running into pytest-timeout)."""
    app = create_app(settings, clock=clock)
    lifespan = contextlib.AsyncExitStack()
    try:
        async with asyncio.timeout(start_within):
            await lifespan.enter_async_context(app.router.lifespan_context(app))
    except TimeoutError as exc:
        raise AssertionError(f"handoff app did not start within {start_within:g}s") from exc
    try:
        yield app
    finally:
        try:
            async with asyncio.timeout(stop_within):
                await lifespan.aclose()
        except TimeoutError as exc:
            raise AssertionError(
                f"handoff app did not stop within {stop_within:g}s (a task that ignores "
                "its cancellation?)"
            ) from exc


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://handoff")


def store_of(app: FastAPI) -> HandoffStore:
    store: HandoffStore = app.state.handoff_store
    return store


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,  # noqa: ASYNC109
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value (deadline, no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Producer:
    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.prefix = prefix

    async def __aenter__(self) -> Producer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, topic: str, message: Message, source: str = "router") -> str:
        record = encode(message, source=service_source(source))
        await self.producer.send_and_wait(
            topics.prefixed(topic, self.prefix),
            record.value,
            key=record.key,
            headers=list(record.headers),
        )
        return dict(record.headers)["ce_id"].decode()


def case_routed(
    case_id: str,
    lead: AgencyCode = AgencyCode.UWV,
    supporting: tuple[AgencyCode, ...] = (),
    reference: str = "LK-TEST-0001",
    urgency: Urgency = Urgency.NORMAL,
) -> CaseRouted:
    assignments = [AgencyAssignment(agency=lead, role=AgencyRole.LEAD, confidence=0.9)]
    assignments += [
        AgencyAssignment(agency=a, role=AgencyRole.SUPPORTING, confidence=0.6) for a in supporting
    ]
    return CaseRouted(
        case_id=case_id,
        reference=reference,
        initiative_id="bibliotheek-rotterdam-centrale",
        lead=lead,
        assignments=assignments,
        urgency=urgency,
        routed_at=datetime.now(UTC),
    )


async def handoff_events(
    bootstrap: str,
    prefix: str,
    predicate: Callable[[Any], bool],
    count: int,
    timeout: float = 20,  # noqa: ASYNC109
) -> list[Any]:
    """Decoded envelopes on loket.handoffs.v1 matching ``predicate`` (on the envelope)."""

    def match(record: Any) -> bool:
        try:
            return predicate(decode(record.value, record.headers))
        except Exception:
            return False

    records = await consume_until(
        bootstrap,
        topics.prefixed(topics.HANDOFFS, prefix),
        match,
        count=count,
        timeout=timeout,
    )
    return [decode(r.value, r.headers) for r in records]
