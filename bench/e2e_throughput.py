"""Benchmark: questions/s and latency from intake HTTP to the agency topics, whole stack.

    uv run python bench/e2e_throughput.py [--rates 50,200,500] [--duration 60]
        [--max-seconds 30] [--concurrency 128] [--skip-floor]

Starts a complete stack (tests/e2e/e2e_stack.py: its own Kafka 4.1 broker and Redis,
intake, router and handoff as separate processes) and measures, in one run:

1. **raw Kafka floor**: aiokafka (acks=all, idempotent) produces the same encoded
   QuestionReceived records at each fixed rate; a read_committed consumer sees them;
   latency = produce call -> record visible to the consumer;
2. **end to end** at each fixed rate (open loop) for ``--duration`` seconds: realistic
   questions POSTed to intake (own Idempotency-Key each) by a cheap keep-alive HTTP/1.1
   client; latency = the request's *scheduled* send time (no coordinated omission) ->
   the case's first CaseDelivered visible on an agency topic to a read_committed
   consumer (after router's transaction commit);
3. **max sustained**: ``--concurrency`` closed-loop clients for ``--max-seconds``:
   questions delivered per second through all three services.

Prints a JSON summary and a Markdown table row per rate. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from e2e_stack import Stack, stack_env
from e2e_traffic import DeliveryTap, make_question, percentile

from loket_runtime.kafka import ensure_topics
from loket_schemas.events import QuestionReceived
from loket_schemas.kafka import encode


class Connection:
    """Minimal HTTP/1.1 keep-alive client: the load generator shares the 2 cores with the
    stack, and httpx costs ~1 ms CPU per request (same approach as bench/intake_throughput)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, payload: bytes, api_key: str, idem: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST /api/v1/questions HTTP/1.1\r\nHost: {self.host}\r\n"
            f"X-API-Key: {api_key}\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: {idem}\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        data = await self.reader.readexactly(length) if length else b""
        return int(status_line.split(b" ", 2)[1]), data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Pool:
    def __init__(self, base: str, size: int) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        self.all = [Connection(host, int(port)) for _ in range(size)]
        for c in self.all:
            self.free.put_nowait(c)

    async def post(self, payload: bytes, api_key: str, idem: str) -> tuple[int, bytes]:
        conn = await self.free.get()
        try:
            return await conn.post(payload, api_key, idem)
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            conn.close()
            return 0, b""
        finally:
            self.free.put_nowait(conn)

    def close(self) -> None:
        for c in self.all:
            c.close()


def questions(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        initiative, body = make_question(rng, f"b{seed}-{i}")
        out.append((f"dev-{initiative}", json.dumps(body).encode()))
    return out


def stats(latencies_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies_s]
    return {
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1) if ms else float("nan"),
    }


async def e2e_fixed(stack: Stack, tap: DeliveryTap, rate: float, seconds: float) -> dict[str, Any]:
    n = int(rate * seconds)
    payloads = questions(n, seed=int(rate))
    pool = Pool(stack.url("intake"), size=max(32, int(rate // 2)))
    scheduled: dict[str, float] = {}
    statuses: dict[int, int] = {}
    start = time.monotonic() + 0.2

    async def fire(i: int) -> None:
        at = start + i / rate
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # open-loop schedule
        key, payload = payloads[i]
        status, data = await pool.post(payload, key, f"bench-{rate}-{i}-{time.time_ns()}")
        statuses[status] = statuses.get(status, 0) + 1
        if status == 202:
            scheduled[json.loads(data)["case_id"]] = at

    await asyncio.gather(*(fire(i) for i in range(n)))
    sent_done = time.monotonic()
    missing = await tap.wait_for(set(scheduled), within=120)
    pool.close()
    lat = [tap.first_seen[c] - t for c, t in scheduled.items() if c in tap.first_seen]
    last = max((tap.first_seen[c] for c in scheduled if c in tap.first_seen), default=start)
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": n,
        "accepted": len(scheduled),
        "statuses": statuses,
        "send_seconds": round(sent_done - start, 1),
        "delivered": len(lat),
        "not_delivered": len(missing),
        "delivered_per_s": round(len(lat) / max(last - start, 1e-9), 1),
        **stats(lat),
    }


async def e2e_max(
    stack: Stack, tap: DeliveryTap, concurrency: int, seconds: float
) -> dict[str, Any]:
    payloads = questions(20000, seed=99)
    pool = Pool(stack.url("intake"), size=concurrency)
    sent_at: dict[str, float] = {}
    counter = iter(range(len(payloads)))
    start = time.monotonic()
    stop = start + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            i = next(counter)
            key, payload = payloads[i]
            t = time.monotonic()
            status, data = await pool.post(payload, key, f"bench-max-{i}-{time.time_ns()}")
            if status == 202:
                sent_at[json.loads(data)["case_id"]] = t

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    accepted_s = time.monotonic() - start
    await tap.wait_for(set(sent_at), within=180)
    pool.close()
    seen = [tap.first_seen[c] for c in sent_at if c in tap.first_seen]
    last = max(seen, default=start)
    lat = [tap.first_seen[c] - t for c, t in sent_at.items() if c in tap.first_seen]
    return {
        "concurrency": concurrency,
        "accepted": len(sent_at),
        "accepted_per_s": round(len(sent_at) / accepted_s, 1),
        "delivered": len(seen),
        "delivered_per_s": round(len(seen) / max(last - start, 1e-9), 1),
        **stats(lat),
    }


async def kafka_floor(bootstrap: str, rate: float, seconds: float) -> dict[str, Any]:
    """Raw aiokafka produce -> read_committed consume of the same encoded records."""
    topic = f"bench.floor.{int(rate)}.{time.time_ns()}"
    await ensure_topics(bootstrap, [topic], partitions=3)
    n = int(rate * seconds)
    rng = random.Random(1)
    records = []
    for i in range(min(n, 2000)):
        _, body = make_question(rng, f"f{i}")
        q = QuestionReceived(
            case_id=f"floor-{i}",
            reference="LK-0000-0000",
            channel=body["channel"],
            initiative_id=body["initiative"],
            text=body["text"],
            received_at=datetime.now(UTC),
        )
        records.append(encode(q, source="urn:nld:loket:service:bench"))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
    )
    await producer.start()
    await consumer.start()
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}

    async def consume() -> None:
        while len(seen) < n:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for rs in batches.values():
                for r in rs:
                    seen[int(dict(r.headers)["seq"])] = now

    task = asyncio.create_task(consume())
    start = time.monotonic() + 0.2

    async def fire(i: int) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = records[i % len(records)]
        sent[i] = start + i / rate
        await producer.send_and_wait(
            topic, rec.value, key=rec.key, headers=[*rec.headers, ("seq", str(i).encode())]
        )

    await asyncio.gather(*(fire(i) for i in range(n)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(task, timeout=60)
    await producer.stop()
    await consumer.stop()
    lat = [seen[i] - sent[i] for i in seen if i in sent]
    last = max(seen.values(), default=start)
    return {
        "rate": rate,
        "sent": n,
        "seen": len(seen),
        "per_s": round(len(seen) / max(last - start, 1e-9), 1),
        **stats(lat),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="50,200,500")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-max", action="store_true")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    env = stack_env(**{"*": {"LOKET_LOG_LEVEL": "WARNING"}})
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, 2 cores, 24 GB (shared)",
        "duration_s": args.duration,
        "floor": [],
        "e2e": [],
    }
    async with Stack(extra_env=env) as stack:
        print(f"stack up: {stack.url('intake')}", file=sys.stderr)
        tap = DeliveryTap(stack.bootstrap, stack.topic_prefix)
        await tap.start()
        try:
            for rate in rates:
                if not args.skip_floor:
                    floor = await kafka_floor(stack.bootstrap, rate, args.duration)
                    result["floor"].append(floor)
                    print(f"floor {rate}/s: {floor}", file=sys.stderr)
                e2e = await e2e_fixed(stack, tap, rate, args.duration)
                result["e2e"].append(e2e)
                print(f"e2e {rate}/s: {e2e}", file=sys.stderr)
            if not args.skip_max:
                result["max"] = await e2e_max(stack, tap, args.concurrency, args.max_seconds)
                print(f"max: {result['max']}", file=sys.stderr)
        finally:
            await tap.stop()
    print(json.dumps(result, indent=2))
    print("\n| rate | e2e p50 | e2e p99 | delivered/s | Kafka floor p50 | floor p99 | p99 ratio |")
    print("|---|---|---|---|---|---|---|")
    floors = {f["rate"]: f for f in result["floor"]}
    for e in result["e2e"]:
        f = floors.get(e["rate"], {})
        ratio = e["p99_ms"] / f["p99_ms"] if f.get("p99_ms") else float("nan")
        print(
            f"| {e['rate']:.0f}/s | {e['p50_ms']} ms | {e['p99_ms']} ms | "
            f"{e['delivered_per_s']} | {f.get('p50_ms', '-')} ms | {f.get('p99_ms', '-')} ms "
            f"| {ratio:.1f}x |"
        )


if __name__ == "__main__":
    asyncio.run(main())
