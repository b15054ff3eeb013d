"""Benchmark: routings (CaseRouted -> HandoffOffered) drained per second by ONE handoff process.

Real Kafka and Redis (LOKET_KAFKA_BOOTSTRAP / LOKET_REDIS_URL, default 127.0.0.1), fresh
prefixed topics (3 partitions, as in the e2e stack) and Redis prefix. First produces N
CaseRouted records like the router's (a lead plus 0-2 supporting agencies, ~2 offers per
routing), then starts the handoff service in this process and measures until every
offer is in the projection: wall time, routings/s and the CPU of this process per
routing (the service only: the records were produced before it started; the echo of
every offer is consumed too if it arrives before the end). Consumer batch figures come
from the service's metrics.

    uv run python bench/handoff_routings.py [--count 6000] [--runs 1] [--profile PREFIX]
        [--loop uvloop|asyncio]

``--profile`` records a py-spy profile (raw collapsed stacks) of the drain phase.

Compare code versions by running the same script with another ``loket_handoff`` first
on the path (``PYTHONPATH=/tmp/wt/services/handoff/src``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

import loket_handoff
from loket_handoff.app import create_app
from loket_handoff.settings import HandoffSettings
from loket_runtime.kafka import ensure_topics
from loket_runtime.logging import configure_logging
from loket_runtime.process import tune_gc
from loket_runtime.service import ServiceRuntime
from loket_schemas import topics
from loket_schemas.events import AgencyAssignment, AgencyRole, CaseRouted
from loket_schemas.kafka import encode, service_source
from loket_schemas.vocabulary import AgencyCode

AGENCIES = [a for a in AgencyCode if a is not AgencyCode.MAATWERKLOKET]


def routing(rng: random.Random, n: int) -> CaseRouted:
    chosen = rng.sample(AGENCIES, rng.choice((1, 2, 2, 3)))
    return CaseRouted(
        case_id=str(uuid.uuid4()),
        reference=f"LK-{n // 10000:04d}-{n % 10000:04d}",
        initiative_id="bibliotheek-rotterdam-centrale",
        lead=chosen[0],
        assignments=[
            AgencyAssignment(
                agency=a, role=AgencyRole.LEAD if i == 0 else AgencyRole.SUPPORTING, confidence=1
            )
            for i, a in enumerate(chosen)
        ],
        routed_at=datetime.now(UTC),
    )


def metric(registry: Any, name: str) -> float:
    value = registry.get_sample_value(name)
    return float(value or 0.0)


async def one_run(count: int, seed: int, profile: str = "") -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    settings = HandoffSettings(
        kafka_bootstrap=os.environ.get("LOKET_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        redis_url=os.environ.get("LOKET_REDIS_URL", "redis://127.0.0.1:6379/0"),
        topic_prefix=f"bench{run}.",
        redis_key_prefix=f"bench:{run}:",
        handoff_timers_enabled=False,
        log_level="WARNING",
    )
    names = [topics.HANDOFFS, topics.HANDOFF_RESPONSES, topics.CONSENT, topics.DLQ]
    await ensure_topics(settings.kafka_bootstrap, [settings.topic(t) for t in names], 3)
    rng = random.Random(seed)
    routings = [routing(rng, n) for n in range(count)]
    offers = sum(len(r.assignments) for r in routings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for r in routings:
            rec = encode(r, source=service_source("router"))
            futures.append(
                await producer.send(
                    settings.topic(topics.HANDOFFS), rec.value, key=rec.key,
                    headers=list(rec.headers),
                )
            )  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    runtime = ServiceRuntime(settings)
    registry = runtime.registry
    app = create_app(settings, runtime=runtime)
    await app.state.handoff_store.mark_ready()  # fresh prefix: nothing to rebuild (as in e2e)
    tune_gc(settings.gc_threshold0)  # as `python -m loket_handoff` does after create_app
    spy = start_profile(profile)
    t0 = time.perf_counter()
    c0 = time.process_time()
    async with app.router.lifespan_context(app):
        store = app.state.handoff_store
        while True:
            stats = await store.stats()
            if sum(n for name, n in stats.items() if name.startswith("offered:")) >= offers:
                break
            await asyncio.sleep(0.02)  # bench polling interval
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        stop_profile(spy)
        deadline = time.monotonic() + 5  # the last batch's commit (metrics observed after it)
        while time.monotonic() < deadline:
            if metric(registry, "loket_handoff_consumer_batch_records_sum") >= count:
                break
            await asyncio.sleep(0.02)
        batches = metric(registry, "loket_handoff_consumer_batch_records_count")
        records = metric(registry, "loket_handoff_consumer_batch_records_sum")
        batch_s = metric(registry, "loket_handoff_consumer_batch_seconds_sum")
    redis = Redis.from_url(settings.redis_url)
    keys = [k async for k in redis.scan_iter(match=f"bench:{run}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i : i + 1000])
    await redis.aclose()
    return {
        "routings": count,
        "offers": offers,
        "wall_s": round(wall, 2),
        "routings_per_s": round(count / wall, 1),
        "cpu_ms_per_routing": round(cpu * 1000 / count, 3),
        "cores": round(cpu / wall, 2),
        "batches": batches,
        "records_per_batch": round(records / max(batches, 1), 1),
        "batch_ms": round(batch_s * 1000 / max(batches, 1), 1),
        "routings_per_batch_s": round(count / batch_s, 1) if batch_s else 0.0,
    }


def start_profile(out: str) -> subprocess.Popen[bytes] | None:
    """py-spy (raw collapsed stacks) on this process until :func:`stop_profile`."""
    if not out:
        return None
    exe = shutil.which("py-spy")
    cmd = [exe] if exe else ["uv", "tool", "run", "py-spy"]
    return subprocess.Popen(
        [*cmd, "record", "--pid", str(os.getpid()), "--rate", "200", "--nonblocking",
         "--format", "raw", "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


async def main(count: int, runs: int, profile: str) -> None:
    configure_logging(HandoffSettings(log_level="WARNING"))
    print(f"loket_handoff from {os.path.dirname(loket_handoff.__file__)}")
    for n in range(runs):
        out = f"{profile}.{n}.txt" if profile else ""
        print(await one_run(count, seed=n, profile=out), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--profile", default="", help="py-spy output prefix (raw stacks)")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop",
        help="event loop (the service runs on uvloop: uvicorn's loop='auto')",
    )  # fmt: skip
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args.count, args.runs, args.profile))
    else:
        asyncio.run(main(args.count, args.runs, args.profile))
