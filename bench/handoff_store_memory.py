"""Benchmark: 1,000,000 open handoffs in Redis with the real store layout.

Starts its own redis-server on a free port (no persistence, nothing shared), writes N
open handoffs (one case each: case hash, handoff hash, two timeline entries, timers,
per-agency and per-initiative indexes, reference index, counters) with pipelines using
the store's own encoders and index writer, then prints:

* ``used_memory`` (INFO memory) in total and per handoff (target: <= 1.5 GB at 1M);
* the cost of one timer claim (Lua: ZRANGEBYSCORE + ZREM into the lease set) of 500 due
  timers at that size, and of one full sweep of 500 (claim, lock, load, decide, apply,
  reschedule) with a no-op publisher.

    uv run python bench/handoff_store_memory.py [--count 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from loket_handoff.businesshours import BusinessCalendar
from loket_handoff.clock import FakeClock
from loket_handoff.domain import Case, Handoff, HandoffState, handoff_id_for, initiative_owner
from loket_handoff.handlers import HandoffService
from loket_handoff.metrics import HandoffMetrics
from loket_handoff.store import HandoffStore, encode_case, timeline_entry
from loket_schemas.catalog import load_agencies, load_initiatives
from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    CaseRouted,
    HandoffOffered,
    Message,
)
from loket_schemas.tracing import TraceContext
from loket_schemas.vocabulary import AgencyCode, Urgency

PREFIX = "loket:handoff:"
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NullPublisher:
    async def publish(self, message: Message, *, event_id: str, trace: TraceContext | None) -> None:
        return None


async def fill(redis: Redis, store: HandoffStore, count: int, due_fraction: float) -> None:
    calendar = BusinessCalendar()
    agencies = [a for a in AgencyCode if a is not AgencyCode.MAATWERKLOKET]
    initiatives = [i.id for i in load_initiatives().initiatives]
    catalog = load_agencies()
    batch = 2000
    started = time.perf_counter()
    for start in range(0, count, batch):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + batch, count)):
            case_id = str(uuid.UUID(int=n))
            agency = agencies[n % len(agencies)]
            initiative = initiatives[n % len(initiatives)]
            reference = f"LK-{n // 10000:04d}-{n % 10000:04d}"
            hid = handoff_id_for(case_id, agency, 0)
            offered_at = T0 + timedelta(seconds=n % 86400)
            due = calendar.add_hours(
                offered_at, catalog.get(agency).sla[Urgency.NORMAL].accept_hours
            )
            handoff = Handoff(
                handoff_id=hid,
                case_id=case_id,
                agency=agency,
                role=AgencyRole.LEAD,
                state=HandoffState.OFFERED,
                urgency=Urgency.NORMAL,
                initiative_id=initiative,
                reference=reference,
                offered_at=offered_at,
                accept_due_at=due,
                accept_warn_at=calendar.point_at(offered_at, due, 0.75),
            )
            case = Case(
                case_id=case_id,
                reference=reference,
                initiative_id=initiative,
                owner=initiative_owner(initiative),
                lead=agency,
                route_count=1,
            )
            routed = CaseRouted(
                case_id=case_id,
                reference=reference,
                initiative_id=initiative,
                lead=agency,
                assignments=[AgencyAssignment(agency=agency, role=AgencyRole.LEAD, confidence=0.9)],
                routed_at=offered_at,
            )
            offered = HandoffOffered(
                case_id=case_id,
                handoff_id=hid,
                agency=agency,
                occurred_at=offered_at,
                role=AgencyRole.LEAD,
                initiative_id=initiative,
                reference=reference,
                from_office=case.owner,
                accept_due_at=due,
            )
            pipe.hset(store.kid("c", case_id), mapping=encode_case(case, [hid]))
            pipe.hset(store.k("refs"), reference, case_id)
            store._write_handoff(pipe, handoff, None)
            pipe.append(
                store.kid("tl", case_id),
                timeline_entry(routed, str(uuid.uuid4()), offered_at, 0).to_json({hid: 0})
                + "\n"
                + timeline_entry(offered, str(uuid.uuid4()), offered_at).to_json({hid: 0})
                + "\n",
            )
            if n < count * due_fraction:  # make some timers due "now" for the sweep
                pipe.zadd(store.timers_key, {hid: 1.0 + n})
        pipe.hincrby(store.k("stats"), f"offered:{agencies[0].value}", batch)
        await pipe.execute()
        if start and start % 100_000 == 0:
            rate = start / (time.perf_counter() - started)
            print(f"  {start:>9,} written ({rate:,.0f}/s)", flush=True)


async def main(count: int) -> None:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="loket-bench-redis-")
    proc = subprocess.Popen(  # noqa: ASYNC220 - a bench, started once
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir,
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        for _ in range(100):
            try:
                await redis.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        base = int((await redis.info("memory"))["used_memory"])
        store = HandoffStore(redis, PREFIX, BusinessCalendar())
        t = time.perf_counter()
        await fill(redis, store, count, due_fraction=0.01)
        fill_s = time.perf_counter() - t
        info = await redis.info("memory")
        used = int(info["used_memory"]) - base
        print(f"handoffs:              {count:,} open (one case each) in {fill_s:.0f}s")
        print(f"keys:                  {await redis.dbsize():,}")
        print(f"used_memory:           {used / 2**20:,.0f} MiB ({used / count:,.0f} B/handoff)")
        print(f"used_memory_rss:       {int(info['used_memory_rss']) / 2**20:,.0f} MiB")
        # claim cost: 500 due timers out of a 1M timer set
        now = datetime.now(UTC)
        samples = []
        for _ in range(10):
            t = time.perf_counter()
            claimed = await store.claim_due(now, 500, 30)
            samples.append((time.perf_counter() - t) * 1000)
            assert len(claimed) == 500, len(claimed)
        timers = await redis.zcard(store.timers_key)
        print(
            f"timer claim (500 due): median {statistics.median(samples):.1f} ms "
            f"(min {min(samples):.1f}, max {max(samples):.1f}) at {timers:,} timers"
        )
        # full sweep: claim + lock + load + decide + apply + reschedule per timer
        clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
        service = HandoffService(
            store=store,
            publisher=NullPublisher(),
            clock=clock,
            catalog=load_agencies(),
            calendar=BusinessCalendar(),
            metrics=HandoffMetrics(CollectorRegistry()),
        )
        await redis.delete(store.k("inflight"))
        t = time.perf_counter()
        fired = await service.fire_due_timers(limit=500)
        sweep_ms = (time.perf_counter() - t) * 1000
        print(
            f"full sweep (500 fired):  {sweep_ms:.0f} ms ({fired / sweep_ms * 1000:,.0f} timers/s)"
        )
    finally:
        await redis.aclose()
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().count))
