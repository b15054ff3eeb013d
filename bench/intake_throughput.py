"""Benchmark: intake's accepted questions per second and latency on real Kafka and Redis.

    uv run python bench/intake_throughput.py [--rate 200] [--fixed-seconds 20]
        [--max-seconds 15] [--concurrency 64] [--workers 1] [--log-level INFO]

Starts intake with ``python -m loket_intake`` in a subprocess (uvloop + httptools, JSON
logs to a file) on a free port, with a fresh topic prefix and Redis key prefix, against
the Kafka and Redis in LOKET_KAFKA_BOOTSTRAP / LOKET_REDIS_URL (default 127.0.0.1).
Drives it with httpx async clients:

1. fixed rate (open loop): ``--rate`` requests/s for ``--fixed-seconds``; latency is
   measured from each request's *scheduled* start (no coordinated omission);
2. max rate (closed loop): ``--concurrency`` clients back to back for ``--max-seconds``.

Every request is a realistic question (BSN, consent, contact) with its own
Idempotency-Key; a 202 means Kafka acknowledged the event (acks=all). Prints one JSON
summary. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

INITIATIVE = "bibliotheek-rotterdam-centrale"
HEADERS = {"X-API-Key": f"dev-{INITIATIVE}", "content-type": "application/json"}
TEXTS = [
    "Ik heb een studieschuld bij DUO en mijn toeslag is stopgezet. Wat moet ik doen?",
    "Mijn uitkering van het UWV is verlaagd en ik kan de huur niet meer betalen.",
    "Ik heb een boete van het CJIB gekregen en een aanmaning van de gemeente.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body(i: int) -> bytes:
    return json.dumps(
        {
            "channel": "balie",
            "initiative": INITIATIVE,
            "text": TEXTS[i % len(TEXTS)],
            "requester": {
                "kind": "person",
                "bsn": "111222333",
                "contact": {"name": "Fatima de Vries", "phone": "0612345678"},
            },
            "consent": {"categories": ["identity", "contact", "debts"], "explicit": False},
            "urgent": i % 10 == 0,
        }
    ).encode()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(latencies: list[float], ok: int, failed: int, seconds: float) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "accepted": ok,
        "failed": failed,
        "seconds": round(seconds, 2),
        "accepted_per_s": round(ok / seconds, 1),
        "p50_ms": round(pct(ms, 50), 2),
        "p90_ms": round(pct(ms, 90), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
    }


async def one(client: httpx.AsyncClient, i: int) -> bool:
    resp = await client.post(
        "/api/v1/questions",
        content=body(i),
        headers={**HEADERS, "Idempotency-Key": f"bench-{uuid.uuid4().hex}"},
    )
    return resp.status_code == 202


async def fixed_rate(base: str, rate: float, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        total = int(rate * seconds)
        latencies: list[float] = []
        ok = failed = 0
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2

        async def fire(i: int) -> None:
            nonlocal ok, failed
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # open-loop schedule
            good = await one(client, i)
            latencies.append(loop.time() - scheduled)
            if good:
                ok += 1
            else:
                failed += 1

        await asyncio.gather(*(fire(i) for i in range(total)))
        return summary(latencies, ok, failed, loop.time() - start)


async def max_rate(base: str, concurrency: int, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + seconds
        latencies: list[float] = []
        ok = failed = 0

        async def worker(w: int) -> None:
            nonlocal ok, failed
            i = w
            while loop.time() < deadline:
                t0 = loop.time()
                good = await one(client, i)
                latencies.append(loop.time() - t0)
                ok += good
                failed += not good
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return summary(latencies, ok, failed, loop.time() - start)


async def wait_ready(base: str, proc: subprocess.Popen[bytes], wait_s: float = 60) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"intake exited with {proc.returncode}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("intake did not become ready")


async def drive(
    args: argparse.Namespace, base: str, proc: subprocess.Popen[bytes]
) -> dict[str, Any]:
    await wait_ready(base, proc)
    await max_rate(base, 8, 2)  # warm up (connections, metadata, script cache)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "workers": args.workers,
        "log_level": args.log_level,
    }
    if not args.skip_fixed:
        result["fixed_rate"] = {
            "target_per_s": args.rate,
            **await fixed_rate(base, args.rate, args.fixed_seconds),
        }
    if not args.skip_max:
        result["max_rate"] = {
            "concurrency": args.concurrency,
            **await max_rate(base, args.concurrency, args.max_seconds),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--fixed-seconds", type=float, default=20)
    parser.add_argument("--max-seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--skip-fixed", action="store_true")
    parser.add_argument("--skip-max", action="store_true")
    args = parser.parse_args()

    run_id = uuid.uuid4().hex[:8]
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"intake-bench-{run_id}.log"
    env = {
        **os.environ,
        "LOKET_PORT": str(port),
        "LOKET_TOPIC_PREFIX": f"bench{run_id}.",
        "LOKET_REDIS_KEY_PREFIX": f"bench:{run_id}:",
        "LOKET_WORKERS": str(args.workers),
        "LOKET_LOG_LEVEL": args.log_level,
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loket_intake"], env=env, stdout=log, stderr=log
        )
        try:
            result = asyncio.run(drive(args, f"http://127.0.0.1:{port}", proc))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
