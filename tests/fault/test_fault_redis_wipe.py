"""Invariant 5: Redis may be wiped; handoff rebuilds from Kafka and loses no open handoff
or SLA timer.

SLA hours run 1152x faster (LOKET_HANDOFF_TIME_SCALE: 24 business hours = 75 s), so the
acceptance deadlines of handoffs left open fall after the wipe: every one of them must
still breach (and escalate) on time, which only happens if its timer was rebuilt.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from e2e_invariants import check_all, open_handoffs, settle, snapshot, wait_events
from e2e_stack import Stack, stack_env
from e2e_traffic import AgencyResponders, TrafficDriver

from loket_schemas.events import CaseRouted, HandoffSlaBreached, RouteCause
from loket_schemas.topics import HANDOFFS
from loket_schemas.vocabulary import AgencyCode

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

TIME_SCALE = "1152"


async def get_handoff(http: httpx.AsyncClient, handoff_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        r = await http.get(f"/api/v1/handoffs/{handoff_id}", headers={"X-API-Key": "dev-operator"})
        if r.status_code == 200:
            return dict(r.json())
        if r.status_code != 503 or time.monotonic() > deadline:
            raise AssertionError(f"GET handoff {handoff_id}: {r.status_code} {r.text[:200]}")
        await asyncio.sleep(0.2)  # projection still rebuilding


async def test_wipe_redis_and_restart_handoff_keeps_open_handoffs_and_timers(
    tmp_path: Path,
) -> None:
    env = stack_env(handoff={"LOKET_HANDOFF_TIME_SCALE": TIME_SCALE})
    async with Stack(tmp_path / "stack", extra_env=env) as stack:
        responders = AgencyResponders(stack.bootstrap, lambda: stack.url("handoff"))
        await responders.start()
        driver = TrafficDriver(stack.url("intake"), seed=5)
        try:
            await driver.run(400, rate=100)
            assert not driver.failed
            cases = set(driver.accepted.values())
            await wait_events(
                stack.bootstrap,
                stack.topic(HANDOFFS),
                lambda r: (
                    isinstance(r.data, CaseRouted)
                    and r.data.cause == RouteCause.INITIAL
                    and r.data.case_id in cases
                ),
                count=len(cases),
                within=120,
            )
            await responders.idle(60)
        finally:
            await responders.stop()
        # handoff dies; with it dead the topics are the whole truth
        stack.kill("handoff")
        await settle(stack.bootstrap, stack.topic_prefix, quiet_s=2)
        before = await snapshot(stack.bootstrap, stack.topic_prefix)
        open_before = open_handoffs(before)
        assert len(open_before) > 50, len(open_before)
        wiped = await stack.wipe_redis(["handoff"])
        assert wiped > 0
        await stack.start("handoff")

        async with httpx.AsyncClient(base_url=stack.url("handoff"), timeout=10) as http:
            for hid, h in open_before.items():
                view = await get_handoff(http, hid)
                assert view["case_id"] == h.case_id and view["agency"] == h.agency.value
                due = datetime.fromisoformat(str(view["accept_due_at"]))
                assert due == h.accept_due_at, (hid, due, h.accept_due_at)
                if h.state == "accepted":
                    assert view["state"] in ("accepted", "resolved", "escalated"), view
                    rdue = view["resolve_due_at"]
                    assert h.resolve_due_at is None or (
                        rdue is not None and datetime.fromisoformat(str(rdue)) == h.resolve_due_at
                    )
                else:
                    # only the SLA timer can have moved it on since the restart
                    assert view["state"] in ("offered", "escalated"), view

        # every acceptance timer of a handoff still offered fires after the wipe
        offered = {k: v for k, v in open_before.items() if v.state == "offered"}
        last_due = max(v.accept_due_at for v in offered.values() if v.accept_due_at)
        wait_s = (last_due - datetime.now(UTC)).total_seconds() + 5
        if wait_s > 0:
            await asyncio.sleep(wait_s)  # SLA time must pass; the timers are the subject
        await settle(stack.bootstrap, stack.topic_prefix, quiet_s=3)
        after = await snapshot(stack.bootstrap, stack.topic_prefix)
        breached = {
            e.handoff_id
            for e in after.events(HANDOFFS, HandoffSlaBreached)
            if e.sla.value == "accept"
        }
        lost = sorted(set(offered) - breached)
        assert lost == [], f"{len(lost)} open handoffs lost their SLA timer: {lost[:10]}"
        assert check_all(after, driver.accepted) == []
        escalated_mwl = [h for h in offered.values() if h.agency == AgencyCode.MAATWERKLOKET]
        print(
            f"\n[redis wipe] {len(open_before)} open handoffs before the wipe "
            f"({len(offered)} offered, {len(escalated_mwl)} at maatwerkloket), "
            f"{wiped} keys wiped, all timers fired after the rebuild"
        )
        await driver.aclose()
