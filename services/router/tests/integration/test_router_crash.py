"""Exactly once across a kill -9: the router as a separate OS process on REAL Kafka + Redis.

1,000 questions go in; the router process is killed with SIGKILL after some but not all
cases are routed (detected on its committed output), then restarted. A read_committed
snapshot must hold every (case, agency) delivery exactly once and every case exactly one
CaseRouted, whatever transaction the kill interrupted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from router_kafka_helpers import publish, snapshot, wait_for

from loket_runtime.testing import free_port
from loket_schemas import topics
from loket_schemas.events import CaseDelivered, CaseRouted, DataShareLogged, QuestionReceived

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 1000
TEXTS = [
    "Ik heb een belastingschuld en mijn toeslag is stopgezet.",
    "Mijn WW-uitkering is gestopt en ik kan de huur niet betalen.",
    "Ik heb een studieschuld bij DUO en een boete van het CJIB.",
    "Mijn verblijfsvergunning verloopt en ik heb vragen over zorgtoeslag.",
]


class RouterProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loket_router"], env=self.env, stdout=out, stderr=out
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def router_env(loket_settings: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "LOKET_KAFKA_BOOTSTRAP": loket_settings["kafka_bootstrap"],
        "LOKET_REDIS_URL": loket_settings["redis_url"],
        "LOKET_TOPIC_PREFIX": loket_settings["topic_prefix"],
        "LOKET_REDIS_KEY_PREFIX": loket_settings["redis_key_prefix"],
        "LOKET_PORT": str(free_port()),
        "LOKET_LOG_LEVEL": "WARNING",
        "LOKET_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "LOKET_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
    }
    yield env


def question(i: int) -> QuestionReceived:
    return QuestionReceived(
        case_id=str(uuid.uuid4()),
        reference=f"LK-{i:04d}-CRSH",
        channel="web",
        initiative_id="bibliotheek-utrecht-neude",
        text=TEXTS[i % len(TEXTS)],
        received_at=datetime.now(UTC),
    )


async def count_routed_until(bootstrap: str, topic: str, at_least: int, within_s: float) -> int:
    """Follow committed CaseRouted records live; return the count once ``at_least`` seen."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen = 0
    try:
        async with asyncio.timeout(within_s):
            while seen < at_least:
                batches = await consumer.getmany(timeout_ms=100)
                for records in batches.values():
                    seen += sum(
                        1
                        for r in records
                        if (dict(r.headers).get("ce_type") or b"") == b"nl.loket.case.routed.v1"
                    )
        return seen
    finally:
        await consumer.stop()


async def test_kill9_mid_flow_then_restart_routes_every_case_exactly_once(
    router_env: dict[str, str], make_topics: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await make_topics(*topics.ALL_TOPICS)
    prefix = router_env["LOKET_TOPIC_PREFIX"]
    questions = [question(i) for i in range(N)]
    await publish(kafka_bootstrap, prefix + topics.QUESTIONS, questions)

    log = tmp_path / "router.log"
    # small transactions in the first run, so the kill lands mid-flow
    first = RouterProcess({**router_env, "LOKET_BATCH_MAX_RECORDS": "5"}, log)
    first.start()
    try:
        seen = await count_routed_until(kafka_bootstrap, prefix + topics.HANDOFFS, 50, 60)
        first.kill9()
    finally:
        first.stop()
    before = [
        r
        for r in await snapshot(kafka_bootstrap, [prefix + topics.HANDOFFS])
        if r.type == CaseRouted.EVENT_TYPE
    ]
    assert seen >= 50 and len(before) < N, f"kill was not mid-flow: {len(before)} routed"
    print(f"routed before kill: {len(before)}")

    second = RouterProcess({**router_env, "LOKET_BATCH_MAX_RECORDS": "200"}, log)
    second.start()
    try:
        outputs = [prefix + t for t in (topics.HANDOFFS, topics.AUDIT, *topics.AGENCY_TOPICS)]
        recs = await wait_for(
            kafka_bootstrap,
            outputs,
            lambda rs: len({r.key for r in rs if r.type == CaseRouted.EVENT_TYPE}) >= N,
            within_s=90,
        )
    finally:
        second.stop()

    routed = Counter(r.key for r in recs if r.type == CaseRouted.EVENT_TYPE)
    assert set(routed) == {q.case_id for q in questions}
    assert set(routed.values()) == {1}, "a case was routed more than once"
    deliveries = Counter(
        (r.key, CaseDelivered.model_validate(r.data).agency)
        for r in recs
        if r.type == CaseDelivered.EVENT_TYPE
    )
    assert set(deliveries.values()) == {1}, "a (case, agency) was delivered more than once"
    audits = Counter(
        (r.key, DataShareLogged.model_validate(r.data).receiver)
        for r in recs
        if r.type == DataShareLogged.EVENT_TYPE
    )
    assert audits == deliveries
    expected = {
        (r.key, a.agency)
        for r in recs
        if r.type == CaseRouted.EVENT_TYPE
        for a in CaseRouted.model_validate(r.data).assignments
    }
    assert set(deliveries) == expected
    assert "Traceback" not in log.read_text(errors="replace")
