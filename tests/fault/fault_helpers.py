"""Run traffic through a stack, inject a fault mid-flow, then check every invariant."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from e2e_invariants import (
    Snapshot,
    check_all,
    expected_owners,
    settle,
    snapshot,
    wait_events,
)
from e2e_stack import Stack
from e2e_traffic import AgencyResponders, TrafficDriver

from loket_schemas.events import CaseRouted, RouteCause
from loket_schemas.topics import HANDOFFS

Fault = Callable[[Stack, TrafficDriver], Awaitable[None]]


@dataclass
class FlowResult:
    snap: Snapshot
    driver: TrafficDriver
    responders: AgencyResponders
    violations: list[str]
    seconds: float
    fault_at_accepted: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        routed = sum(1 for r in self.snap.routed if r.cause == RouteCause.INITIAL)
        return (
            f"{len(self.driver.accepted)} accepted, {routed} routed, "
            f"{len(self.snap.deliveries)} delivered, "
            f"fault at {self.fault_at_accepted} accepted, statuses "
            f"{dict(self.driver.status_counts)}, responder actions "
            f"{dict(self.responders.actions)}, {self.seconds:.1f}s {self.notes}"
        )


async def wait_accepted(driver: TrafficDriver, n: int, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while len(driver.accepted) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(driver.accepted)}/{n} questions accepted")
        await asyncio.sleep(0.05)  # the driver's tasks fill `accepted`


async def run_flow(
    stack: Stack,
    *,
    n: int = 2000,
    rate: float | None = 200.0,
    fault: Fault | None = None,
    fault_after: float = 0.3,
    faults: list[tuple[float, Fault]] | None = None,
    responders: bool = True,
    seed: int = 1,
    settle_quiet_s: float = 3.0,
) -> FlowResult:
    """``n`` questions at ``rate``/s with agency responders; ``fault`` runs once a fraction
    ``fault_after`` of them is accepted (or each of ``faults`` at its fraction).

    Afterwards waits until every accepted question is routed and the topics are quiet,
    then snapshots and checks the invariants."""
    started = time.monotonic()
    agencies = AgencyResponders(stack.bootstrap, lambda: stack.url("handoff"))
    if responders:
        await agencies.start()
    driver = TrafficDriver(lambda: stack.url("intake"), seed=seed, retry_deadline_s=240)
    fault_at = 0
    marks: dict[str, float] = {}
    lag: dict[str, int] = {}
    try:
        traffic = asyncio.create_task(driver.run(n, rate=rate))
        plan = sorted(faults or []) + ([(fault_after, fault)] if fault is not None else [])
        for i, (fraction, inject) in enumerate(plan):
            await wait_accepted(driver, int(n * fraction))
            fault_at = fault_at or len(driver.accepted)
            marks[f"fault{i}_start"] = time.monotonic() - started
            await inject(stack, driver)
            marks[f"fault{i}_end"] = time.monotonic() - started
        await traffic
        marks["traffic_done"] = time.monotonic() - started
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
            within=180,
        )
        marks["all_routed"] = time.monotonic() - started
        await agencies.idle(120)
        await settle(stack.bootstrap, stack.topic_prefix, quiet_s=settle_quiet_s, within=240)
        await agencies.idle(60)
        lag = await settle(stack.bootstrap, stack.topic_prefix, quiet_s=settle_quiet_s, within=240)
        marks["settled"] = time.monotonic() - started
    finally:
        if responders:
            await agencies.stop()
        await driver.aclose()
    snap = await snapshot(stack.bootstrap, stack.topic_prefix)
    violations = check_all(snap, driver.accepted)
    violations += [f"never accepted: {s.token} {s.final_error}" for s in driver.failed]
    marks["checked"] = time.monotonic() - started
    return FlowResult(
        snap,
        driver,
        agencies,
        violations,
        time.monotonic() - started,
        fault_at_accepted=fault_at,
        notes={"marks": {k: round(v, 1) for k, v in marks.items()}, "consumer_lag": lag},
    )


async def owner_violations(
    stack: Stack, snap: Snapshot, sample: int = 300, index: int = 0
) -> list[str]:
    """Invariant 3 through the handoff API: the owner it reports is the one a replay of the
    topics gives (one office; moved only by an accepted lead handoff)."""
    owners = expected_owners(snap)
    cases = sorted(owners)
    random.Random(3).shuffle(cases)
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=stack.url("handoff", index), timeout=10) as http:
        for case_id in cases[:sample]:
            r = await http.get(f"/api/v1/cases/{case_id}", headers={"X-API-Key": "dev-desk"})
            if r.status_code != 200:
                problems.append(f"case {case_id}: GET -> {r.status_code}")
                continue
            owner = r.json()["owner"]
            if owner != owners[case_id]:
                problems.append(f"case {case_id}: API owner {owner}, replay {owners[case_id]}")
    return problems


def kill_and_restart(service: str, index: int = 0, down_s: float = 1.0) -> Fault:
    async def fault(stack: Stack, _driver: TrafficDriver) -> None:
        stack.kill(service, index)
        await asyncio.sleep(down_s)  # the service stays dead this long under load
        await stack.start(service, index)

    return fault
