"""Benchmark: intake's accepted questions per second and latency on real Kafka and Redis.

    uv run python bench/intake_throughput.py [--rate 200] [--fixed-seconds 20]
        [--max-seconds 15] [--concurrency 64] [--workers 1] [--log-level INFO]

Starts intake with ``python -m loket_intake`` in a subprocess (uvloop + httptools, JSON
logs to a file) on a free port, with a fresh topic prefix and Redis key prefix, against
the Kafka and Redis in LOKET_KAFKA_BOOTSTRAP / LOKET_REDIS_URL (default 127.0.0.1).
Drives it with a minimal asyncio HTTP/1.1 keep-alive client (cheap on CPU):

1. fixed rate (open loop): ``--rate`` requests/s for ``--fixed-seconds``; latency is
   measured from each request's *scheduled* start (no coordinated omission);
2. max rate (closed loop): ``--concurrency`` clients back to back for ``--max-seconds``.

Also reports intake's own CPU time per accepted question (robust against other load
on the machine). Every request is a realistic question (BSN, consent, contact) with its own
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


class Connection:
    """A minimal HTTP/1.1 keep-alive client (the load generator must cost little CPU:
    it shares the 2 cores with intake, Kafka and Redis; httpx costs ~1 ms per request)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_question(self, i: int) -> bool:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = body(i)
        head = (
            f"POST /api/v1/questions HTTP/1.1\r\nHost: {self.host}\r\n"
            f"X-API-Key: {HEADERS['X-API-Key']}\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: bench-{uuid.uuid4().hex}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
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
        if length:
            await self.reader.readexactly(length)
        return status_line.split(b" ", 2)[1:2] == [b"202"]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Pool:
    def __init__(self, base: str, size: int) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        self.all = [Connection(host, int(port)) for _ in range(size)]
        for c in self.all:
            self.free.put_nowait(c)

    async def post_question(self, i: int) -> bool:
        conn = await self.free.get()
        try:
            return await conn.post_question(i)
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            conn.close()
            conn.writer = conn.reader = None
            return False
        finally:
            self.free.put_nowait(conn)

    def close(self) -> None:
        for c in self.all:
            c.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live worker processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks

    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own(pid) + sum(own(int(c)) for c in children)


async def fixed_rate(base: str, rate: float, seconds: float) -> dict[str, Any]:
    client = Pool(base, 128)
    try:
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
            good = await client.post_question(i)
            latencies.append(loop.time() - scheduled)
            if good:
                ok += 1
            else:
                failed += 1

        await asyncio.gather(*(fire(i) for i in range(total)))
        return summary(latencies, ok, failed, loop.time() - start)
    finally:
        client.close()


async def max_rate(base: str, concurrency: int, seconds: float) -> dict[str, Any]:
    client = Pool(base, concurrency)
    try:
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
                good = await client.post_question(i)
                latencies.append(loop.time() - t0)
                ok += good
                failed += not good
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return summary(latencies, ok, failed, loop.time() - start)
    finally:
        client.close()


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
        cpu0 = cpu_seconds(proc.pid)
        fixed = await fixed_rate(base, args.rate, args.fixed_seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
        result["fixed_rate"] = {
            "target_per_s": args.rate,
            **fixed,
            "intake_cpu_ms_per_request": round(1000 * cpu / max(1, fixed["accepted"]), 3),
        }
    if not args.skip_max:
        cpu0 = cpu_seconds(proc.pid)
        top = await max_rate(base, args.concurrency, args.max_seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
        result["max_rate"] = {
            "concurrency": args.concurrency,
            **top,
            "intake_cpu_ms_per_request": round(1000 * cpu / max(1, top["accepted"]), 3),
        }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
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
