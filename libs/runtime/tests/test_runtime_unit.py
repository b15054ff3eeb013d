"""Unit tests of loket_runtime that need no Kafka or Redis."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
import structlog
from fastapi import FastAPI

from loket_runtime.health import health_router, new_registry
from loket_runtime.logging import bind_trace, clear_context, configure_logging, get_logger
from loket_runtime.settings import DEV_PSEUDONYM_KEY, BaseServiceSettings


def test_settings_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKET_KAFKA_BOOTSTRAP", "k:1")
    monkeypatch.setenv("LOKET_TOPIC_PREFIX", "t1.")
    monkeypatch.setenv("LOKET_PSEUDONYM_KEY", "s3cret")
    s = BaseServiceSettings()
    assert s.kafka_bootstrap == "k:1"
    assert s.topic("loket.questions.v1") == "t1.loket.questions.v1"
    assert s.redis_key("case", "42") == "loket:case:42"
    assert not s.uses_dev_pseudonym_key
    assert "s3cret" not in repr(s)


def test_dev_pseudonym_key_is_marked() -> None:
    s = BaseServiceSettings(_env_file=None)
    assert "dev-only" in DEV_PSEUDONYM_KEY
    assert s.uses_dev_pseudonym_key


async def _ok() -> bool:
    return True


async def _down() -> bool:
    raise ConnectionError("refused")


async def _slow() -> bool:
    await asyncio.sleep(5)
    return True


async def _get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.get(path)


async def test_readyz_ok_and_failing() -> None:
    ok = FastAPI()
    ok.include_router(health_router({"kafka": _ok, "redis": _ok}, registry=new_registry()))
    assert (await _get(ok, "/readyz")).status_code == 200

    bad = FastAPI()
    bad.include_router(
        health_router({"kafka": _slow, "redis": _down}, registry=new_registry(), timeout=0.1)
    )
    resp = await _get(bad, "/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert set(body["failed"]) == {"kafka", "redis"}
    assert body["checks"]["kafka"].startswith("timeout")
    assert "ConnectionError" in body["checks"]["redis"]
    assert (await _get(bad, "/healthz")).status_code == 200
    assert "python_info" in (await _get(bad, "/metrics")).text


def test_json_logging(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(BaseServiceSettings(service_name="unit"))
        bind_trace("4bf92f3577b34da6a3ce929d0e0e4736")
        get_logger("t").info("hello", case_id="c1")
        clear_context()
        line = capsys.readouterr().out.strip().splitlines()[-1]
        rec = json.loads(line)
        assert rec["event"] == "hello"
        assert rec["service"] == "unit"
        assert rec["level"] == "info"
        assert rec["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert rec["timestamp"].endswith("Z")
    finally:
        root.handlers, root.level = saved
        structlog.reset_defaults()


def test_logging_below_level_is_dropped_before_processing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(BaseServiceSettings(service_name="unit", log_level="WARNING"))
        log = get_logger("t")
        log.info("not shown", case_id="c1")
        log.warning("shown", case_id="c2")
        lines = capsys.readouterr().out.strip().splitlines()
        events = [json.loads(line)["event"] for line in lines]
        assert events == ["shown"]
    finally:
        root.handlers, root.level = saved
        structlog.reset_defaults()
