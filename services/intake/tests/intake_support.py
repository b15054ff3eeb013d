"""Helpers for intake's integration and browser tests (real Kafka and Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from fastapi import FastAPI

from loket_intake.app import create_app
from loket_intake.settings import IntakeSettings

INITIATIVE = "bibliotheek-rotterdam-centrale"
OTHER = "bibliotheek-amsterdam-oosterdok"
KEY = {"X-API-Key": f"dev-{INITIATIVE}"}


def question(**extra: Any) -> dict[str, Any]:
    return {"channel": "balie", "initiative": INITIATIVE, "text": "Ik heb een vraag", **extra}


@contextlib.asynccontextmanager
async def running_app(settings: IntakeSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running (real broker and Redis), and a client for it."""
    app = create_app(settings)
    async with app.state.runtime.lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://intake", timeout=30
        ) as client:
            yield app, client


async def records_before_markers(
    bootstrap: str, topic: str, wait_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Publish a marker on every partition of ``topic``; return all records before them.

    Every partition is read up to its marker, so "nothing else was published" is proven
    without sleeping.
    """
    marker = f"marker-{uuid.uuid4()}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        for p in partitions:
            await producer.send_and_wait(topic, b"{}", key=marker, partition=p)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: list[ConsumerRecord[bytes, bytes]] = []
    done: set[int] = set()
    try:
        async with asyncio.timeout(wait_s):
            while len(done) < len(partitions):
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for r in records:
                        if r.key == marker:
                            done.add(tp.partition)
                        elif tp.partition not in done:
                            seen.append(r)
    finally:
        await consumer.stop()
    return seen


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode()
    return None


async def until(check: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    """Poll ``check`` until it is true (TimeoutError after ``within`` seconds)."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)  # the state changes elsewhere (Redis TTL, a task)
