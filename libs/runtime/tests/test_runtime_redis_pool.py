"""The services' Redis client waits for a free connection instead of failing (real Redis)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from loket_runtime.service import redis_client
from loket_runtime.settings import BaseServiceSettings

pytestmark = pytest.mark.integration


async def test_more_concurrent_commands_than_connections_all_succeed(redis_url: str) -> None:
    settings = BaseServiceSettings(
        redis_url=redis_url, redis_max_connections=2, redis_pool_timeout_s=10.0
    )
    redis = redis_client(settings)
    key = f"t:{uuid.uuid4().hex}:empty"
    try:
        # each BLPOP holds its connection for 0.1 s; 20 of them on 2 connections: ~1 s
        results = await asyncio.gather(*(redis.blpop([key], timeout=0.1) for _ in range(20)))
        assert results == [None] * 20
        pool = redis.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]
        assert opened <= 2
    finally:
        await redis.aclose()


async def test_no_free_connection_within_the_timeout_is_a_redis_error(redis_url: str) -> None:
    settings = BaseServiceSettings(
        redis_url=redis_url, redis_max_connections=1, redis_pool_timeout_s=0.2
    )
    redis = redis_client(settings)
    pool = redis.connection_pool
    try:
        held = await pool.get_connection()  # type: ignore[no-untyped-call]  # the only one
        with pytest.raises(RedisConnectionError):
            await redis.ping()
        await pool.release(held)
        assert await redis.ping() is True  # free again: served
    finally:
        await redis.aclose()
