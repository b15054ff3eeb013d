"""Invariant 5: Redis may be wiped; handoff rebuilds from Kafka and loses no open handoff
or SLA timer.

SLA hours run 1152x faster (LOKET_HANDOFF_TIME_SCALE: 24 business hours = 75 s), so the
acceptance deadlines of handoffs left open fall after the wipe: every one of them must
still breach (and escalate) on time, which only happens if its timer was rebuilt. Each
SLA timer fires exactly once: per handoff left offered exactly one warning, one breach
and (except at maatwerkloket) one escalation record on Kafka, the breach not before its
due time and at most ``LATE_S`` after it (or after handoff is back, when it fell due
while handoff was down).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from e2e_invariants import (
    Snapshot,
    check_all,
    end_offsets,
    open_handoffs,
    read_topic,
    settle,
    snapshot,
    wait_events,
)
from e2e_stack import Stack, stack_env
from e2e_traffic import AgencyResponders, TrafficDriver

from loket_schemas.events import (
    CaseRouted,
    EscalationReason,
    HandoffEscalated,
    HandoffSlaBreached,
    HandoffSlaWarning,
    RouteCause,
    SlaKind,
)
from loket_schemas.topics import CONSENT, HANDOFF_RESPONSES, HANDOFFS
from loket_schemas.vocabulary import AgencyCode

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

TIME_SCALE = "1152"
#: A timer may fire this much after its due time (or after handoff is back, when it fell
#: due while handoff was down): the sweep runs every second.
LATE_S = 10.0


async def get_handoff(http: httpx.AsyncClient, handoff_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        r = await http.get(f"/api/v1/handoffs/{handoff_id}", headers={"X-API-Key": "dev-operator"})
        if r.status_code == 200:
            return dict(r.json())
        if r.status_code != 503 or time.monotonic() > deadline:
            raise AssertionError(f"GET handoff {handoff_id}: {r.status_code} {r.text[:200]}")
        await asyncio.sleep(0.2)  # projection still rebuilding


async def handoff_caught_up(stack: Stack, within: float = 60.0) -> int:
    """Wait until the handoff consumer group has committed everything on its inputs;
    returns how many agency commands were still unread when the wait began.

    Responders answer partly over Kafka: a command still unread when handoff is killed
    is applied after the restart and closes a handoff the test counted as open, which then
    never breaches (one way earlier runs reported "lost" timers; another run failed on
    exactly such a handoff, found declined after the restart)."""
    group = stack.topic_prefix + "loket-handoff"
    names = [stack.topic(HANDOFF_RESPONSES), stack.topic(HANDOFFS), stack.topic(CONSENT)]
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + within
        lag: dict[str, int] = {}
        unread: int | None = None
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(group)
            end = await end_offsets(stack.bootstrap, names, "read_committed")
            lag = {
                f"{tp.topic}/{tp.partition}": n - (committed[tp].offset if tp in committed else 0)
                for tp, n in end.items()
            }
            if unread is None:
                responses = stack.topic(HANDOFF_RESPONSES) + "/"
                unread = sum(n for k, n in lag.items() if k.startswith(responses))
            if not any(v > 0 for v in lag.values()):
                return unread
            await asyncio.sleep(0.2)  # handoff is still consuming (a system we observe)
        raise AssertionError(f"handoff consumer group still lagging after {within:g}s: {lag}")
    finally:
        await admin.close()


def sla_records(snap: Snapshot, offered: set[str]) -> dict[str, dict[str, list[Any]]]:
    """handoff id -> record kind -> the events, for the acceptance SLA of ``offered``.

    Every record counts (no dedup by event id): ``len == 1`` means exactly once on the
    wire."""
    out: dict[str, dict[str, list[Any]]] = {h: defaultdict(list) for h in offered}
    for rec in snap.records(HANDOFFS):
        ev = rec.data
        hid = getattr(ev, "handoff_id", None)
        if hid not in out:
            continue
        if isinstance(ev, HandoffSlaWarning | HandoffSlaBreached) and ev.sla is SlaKind.ACCEPT:
            out[hid][type(ev).__name__].append(ev)
        elif isinstance(ev, HandoffEscalated) and ev.reason is EscalationReason.SLA:
            out[hid]["HandoffEscalated"].append(ev)
    return out


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
        unread = await handoff_caught_up(stack)  # no agency command left unread
        # handoff dies; with it dead the topics are the whole truth
        stack.kill("handoff")
        await settle(stack.bootstrap, stack.topic_prefix, quiet_s=2)
        before = await snapshot(stack.bootstrap, stack.topic_prefix)
        open_before = open_handoffs(before)
        assert len(open_before) > 50, len(open_before)
        wiped = await stack.wipe_redis(["handoff"])
        assert wiped > 0
        await stack.start("handoff")
        ready_at = datetime.now(UTC)

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
                    # no command was pending: only its SLA timer can move it on
                    assert view["state"] in ("offered", "escalated"), view

        # every acceptance timer of a handoff still offered fires after the wipe, once
        offered = {k: v for k, v in open_before.items() if v.state == "offered"}
        last_due = max(v.accept_due_at for v in offered.values() if v.accept_due_at)
        deadline = max(last_due, ready_at) + timedelta(seconds=LATE_S + 30)
        while True:  # poll the topic until every breach is there (or the deadline)
            handoffs_now = await read_topic(stack.bootstrap, stack.topic(HANDOFFS))
            breached_now = {
                r.data.handoff_id
                for r in handoffs_now
                if isinstance(r.data, HandoffSlaBreached) and r.data.sla is SlaKind.ACCEPT
            }
            if set(offered) <= breached_now or datetime.now(UTC) > deadline:
                break
            await asyncio.sleep(2)  # SLA time must pass; the timers are the subject
        await settle(stack.bootstrap, stack.topic_prefix, quiet_s=3)
        after = await snapshot(stack.bootstrap, stack.topic_prefix)
        sla = sla_records(after, set(offered))
        problems: list[str] = []
        late: list[float] = []
        for hid, h in offered.items():
            kinds = sla[hid]
            want_escalations = 0 if h.agency == AgencyCode.MAATWERKLOKET else 1
            for kind, want in (
                ("HandoffSlaWarning", 1),
                ("HandoffSlaBreached", 1),
                ("HandoffEscalated", want_escalations),
            ):
                if len(kinds[kind]) != want:
                    problems.append(f"{hid} ({h.agency.value}): {len(kinds[kind])} {kind}")
            for breach in kinds["HandoffSlaBreached"]:
                assert h.accept_due_at is not None
                if breach.occurred_at < h.accept_due_at:
                    problems.append(
                        f"{hid}: breached at {breach.occurred_at}, due {h.accept_due_at}"
                    )
                # due while handoff was down: it cannot fire before it is back
                late.append((breach.occurred_at - max(h.accept_due_at, ready_at)).total_seconds())
        assert not problems, (
            f"{len(problems)} SLA timer problems (want exactly one warning, one breach and, "
            f"except at maatwerkloket, one escalation per handoff): {problems[:20]}\n"
            + stack.log_tail("handoff")
        )
        assert max(late) <= LATE_S, (
            f"breaches up to {max(late):.1f}s after due (or after the restart), "
            f"allowed {LATE_S}s\n" + stack.log_tail("handoff")
        )
        assert check_all(after, driver.accepted) == []
        escalated_mwl = [h for h in offered.values() if h.agency == AgencyCode.MAATWERKLOKET]
        print(
            f"\n[redis wipe] {len(open_before)} open handoffs before the wipe "
            f"({len(offered)} offered, {len(escalated_mwl)} at maatwerkloket), "
            f"{wiped} keys wiped ({unread} agency commands were unread when the responders "
            "stopped); every offered handoff warned, breached and escalated exactly once, "
            f"breaches at most {max(late):.1f}s late (median {sorted(late)[len(late) // 2]:.1f}s)"
        )
        await driver.aclose()
