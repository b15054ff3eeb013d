"""A router instance dies mid-transaction and is NOT restarted; another instance of the
same consumer group takes its partitions over (the rebalance case of
tests/fault/test_fault_kills.py::test_two_routers_two_handoffs_kill_one_each).

The dead instance's transaction holds the last stable offset (LSO) of every partition it
wrote to: read_committed readers (handoff, agency systems) see nothing after it until the
transaction ends. The instance that takes the input partition over must fence that
producer and abort its transaction at once, not leave it to the broker's transaction
timeout (60 s here; the zombie sets 120 s so the difference cannot be missed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from router_kafka_helpers import open_transaction_lag, publish, wait_for

from loket_runtime.testing import free_port
from loket_schemas import topics
from loket_schemas.events import CaseDelivered, CaseRouted, QuestionReceived

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELPER = Path(__file__).with_name("router_frozen_commit.py")
TEXTS = [
    "Ik heb een belastingschuld en mijn toeslag is stopgezet.",
    "Mijn WW-uitkering is gestopt en ik kan de huur niet betalen.",
    "Ik heb een studieschuld bij DUO en een boete van het CJIB.",
]
#: From the kill: the survivor joins after the dead member's session timeout (6 s), then
#: routes everything. Far below the zombie's transaction timeout (120 s).
RECOVERY_S = 45.0


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        out = log.open("ab")
        self.log = log
        self.proc = subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=out)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def base_env(loket_settings: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "LOKET_KAFKA_BOOTSTRAP": loket_settings["kafka_bootstrap"],
        "LOKET_REDIS_URL": loket_settings["redis_url"],
        "LOKET_TOPIC_PREFIX": loket_settings["topic_prefix"],
        "LOKET_REDIS_KEY_PREFIX": loket_settings["redis_key_prefix"],
        "LOKET_LOG_LEVEL": "WARNING",
        "LOKET_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "LOKET_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
    }


def question(i: int) -> QuestionReceived:
    return QuestionReceived(
        case_id=str(uuid.uuid4()),
        reference=f"LK-{i:04d}-TKOV",
        channel="web",
        initiative_id="bibliotheek-utrecht-neude",
        text=TEXTS[i % len(TEXTS)],
        received_at=datetime.now(UTC),
    )


async def wait_log(path: Path, needle: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while needle not in await asyncio.to_thread(path.read_text, errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in {path.name} after {within_s}s")
        await asyncio.sleep(0.1)  # a child process's output: nothing to await on


async def test_open_transaction_of_a_dead_instance_is_aborted_on_takeover(
    base_env: dict[str, str], make_topics: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await make_topics(*topics.ALL_TOPICS)
    prefix = base_env["LOKET_TOPIC_PREFIX"]
    outputs = [prefix + t for t in (topics.HANDOFFS, topics.AUDIT, *topics.AGENCY_TOPICS)]
    first = [question(i) for i in range(60)]
    later = [question(i) for i in range(60, 120)]

    zombie_log = tmp_path / "zombie.log"
    zombie = Proc(
        [str(HELPER)],
        {
            **base_env,
            "LOKET_PORT": str(free_port()),
            "LOKET_ROUTER_INSTANCE_ID": "1",
            "LOKET_TRANSACTION_TIMEOUT_MS": "120000",
        },
        zombie_log,
    )
    try:
        await publish(kafka_bootstrap, prefix + topics.QUESTIONS, first)
        await wait_log(zombie_log, "FROZEN_IN_TRANSACTION", 60)
        zombie.kill9()
    finally:
        zombie.stop()
    lag = await open_transaction_lag(kafka_bootstrap, outputs)
    assert lag, "the dead router left no open transaction with data (nothing reproduced)"

    survivor = Proc(
        ["-m", "loket_router"],
        {**base_env, "LOKET_PORT": str(free_port()), "LOKET_ROUTER_INSTANCE_ID": "0"},
        tmp_path / "survivor.log",
    )
    killed_at = time.monotonic()
    try:
        await publish(kafka_bootstrap, prefix + topics.QUESTIONS, later)
        want = {q.case_id for q in first + later}
        recs = await wait_for(
            kafka_bootstrap,
            outputs,
            lambda rs: want <= {r.key for r in rs if r.type == CaseRouted.EVENT_TYPE},
            within_s=RECOVERY_S,
        )
        recovered_s = time.monotonic() - killed_at
        assert await open_transaction_lag(kafka_bootstrap, outputs) == {}
    finally:
        survivor.stop()
    print(
        f"\nopen transaction after the kill: {sum(lag.values())} records on {len(lag)} "
        f"partitions; everything routed and visible {recovered_s:.1f}s after the kill"
    )

    routed = Counter(r.key for r in recs if r.type == CaseRouted.EVENT_TYPE)
    assert set(routed) == want and set(routed.values()) == {1}
    deliveries = Counter(
        (r.key, CaseDelivered.model_validate(r.data).agency)
        for r in recs
        if r.type == CaseDelivered.EVENT_TYPE
    )
    expected = {
        (r.key, a.agency)
        for r in recs
        if r.type == CaseRouted.EVENT_TYPE
        for a in CaseRouted.model_validate(r.data).assignments
    }
    assert set(deliveries) == expected and set(deliveries.values()) == {1}
