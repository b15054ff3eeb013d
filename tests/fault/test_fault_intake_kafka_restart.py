"""Intake after a Kafka broker restart (own broker; intake process only).

Found by test_fault_kills.py::test_kafka_broker_restart_mid_flow: after the broker came
back, intake answered 503 to every question for minutes: its idempotent aiokafka producer
kept failing with OutOfOrderSequenceNumber and was never replaced.

Fixed: batches that expire while their partition has no leader (right after the restart)
burn sequence numbers; intake now replaces its producer after such fatal errors
(services/intake/src/loket_intake/publishers.py, ProducerSupervisor).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from e2e_stack import Stack, stack_env
from e2e_traffic import TrafficDriver
from fault_helpers import wait_accepted

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]


async def test_intake_accepts_again_after_broker_restart_under_load(tmp_path: Path) -> None:
    async with Stack(tmp_path / "stack", services=("intake",), extra_env=stack_env()) as stack:
        driver = TrafficDriver(stack.url("intake"), retry_deadline_s=45)
        try:
            flow = asyncio.create_task(driver.run(300, rate=100))
            await wait_accepted(driver, 100)
            await stack.stop_kafka()
            await asyncio.sleep(3)  # broker away under load
            await stack.start_kafka()
            await asyncio.wait_for(flow, 75)
            assert driver.failed == [], [s.final_error for s in driver.failed][:3]
        finally:
            await driver.aclose()
