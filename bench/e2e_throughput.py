"""Benchmark: questions/s and latency from intake HTTP to the agency topics, whole stack.

    uv run python bench/e2e_throughput.py [--rates 50,200,500] [--duration 60]
        [--max-seconds 30] [--concurrency 128] [--skip-floor] [--skip-max]
        [--warmup 10] [--routers 1] [--handoffs 1] [--intake-workers 1]
        [--partitions 3] [--kafka-heap -Xmx512m] [--kafka-jvm=-XX:...]
        [--kafka-config KEY=VALUE ...]
        [--env SVC:KEY=VALUE ...]
        [--profile SVC[,SVC]] [--out-dir DIR]

Starts a complete stack (tests/e2e/e2e_stack.py: its own Kafka 4.1 broker and Redis,
intake, router and handoff as separate processes; ``--routers``/``--handoffs`` add
instances to the same consumer groups, ``--intake-workers`` sets uvicorn workers) and
measures, in one run:

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

Per phase it also reports, robust to other load on the machine:

* **CPU seconds per question per process group** (intake, router, handoff, Kafka
  broker JVM, Redis, the load generator, the observer) from ``/proc/<pid>/stat`` deltas
  (all descendants included), the machine's busy CPU from ``/proc/stat`` and what the
  rest of the machine (other users) took in the same window, and the load average;
* **latency per stage**, from wall clocks and Kafka record timestamps (CreateTime =
  the producer's append time): schedule -> request sent (load generator lag), sent ->
  202 (intake: Redis + Kafka ack), QuestionReceived append -> visible (read_uncommitted),
  QuestionReceived append -> CaseDelivered append (router: fetch wait, batch queue,
  processing, Redis), CaseDelivered append -> visible read_committed (router
  transaction commit + markers + LSO), CaseDelivered visible -> first HandoffOffered
  visible (handoff).

The observer (the consumers that watch the topics) runs in its own process so its CPU is
not counted as the load generator's. ``--profile router`` records a py-spy profile of
that service during the last measured phase (py-spy from PATH, else ``uv tool run``).

Prints a JSON summary and Markdown tables. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from e2e_stack import Stack, stack_env
from e2e_traffic import make_question, percentile

from loket_runtime.kafka import ensure_topics
from loket_schemas.events import QuestionReceived
from loket_schemas.kafka import encode
from loket_schemas.topics import HANDOFFS, QUESTIONS, agency_topic
from loket_schemas.vocabulary import AgencyCode

CLK_TCK = os.sysconf("SC_CLK_TCK")
GROUPS = ("intake", "router", "handoff", "kafka", "kafka JIT", "redis", "loadgen", "observer")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (digits stripped) of one process, e.g. the Kafka JVM."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            name = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
            name = name.rstrip("0123456789-_ ") or name
            fields = raw[raw.rindex(b")") + 2 :].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


# ============================================================================ HTTP client


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
    """Keep-alive connections; ``post`` returns (status, body, time sent, time answered)."""

    def __init__(self, base: str, size: int) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        self.all = [Connection(host, int(port)) for _ in range(size)]
        for c in self.all:
            self.free.put_nowait(c)

    async def post(
        self, payload: bytes, api_key: str, idem: str
    ) -> tuple[int, bytes, float, float]:
        conn = await self.free.get()
        sent = time.time()
        try:
            status, data = await conn.post(payload, api_key, idem)
            return status, data, sent, time.time()
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            conn.close()
            return 0, b"", sent, time.time()
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


def stats(values_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in values_s]
    return {
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1) if ms else float("nan"),
    }


# ============================================================================ CPU meter


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime+stime seconds) for every process."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        # after "pid (comm) ": state ppid ... utime(14th overall = index 11) stime(12)
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def _machine() -> tuple[float, float]:
    """(busy seconds, total seconds) of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class CpuMeter:
    """CPU seconds of process groups (each a set of root pids plus all descendants)."""

    def __init__(self, roots: Callable[[], dict[str, list[int]]]) -> None:
        self.roots = roots

    def snapshot(self) -> dict[str, Any]:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        groups: dict[str, float] = {}
        counted: set[int] = set()
        for name, roots in self.roots().items():
            total = 0.0
            stack = [p for p in roots if p in table]
            while stack:
                pid = stack.pop()
                if pid in counted:
                    continue
                counted.add(pid)
                total += table[pid][1]
                stack.extend(children.get(pid, ()))
            groups[name] = total
        busy, wall = _machine()
        kafka = self.roots().get("kafka") or [0]
        return {"t": time.time(), "groups": groups, "busy": busy, "all": wall, "load": loadavg(),
                "kafka_threads": thread_cpu(kafka[0])}  # fmt: skip

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any], questions: int) -> dict[str, Any]:
        wall = b["t"] - a["t"]
        groups = {k: b["groups"].get(k, 0.0) - a["groups"].get(k, 0.0) for k in b["groups"]}
        ours = sum(groups.values())
        busy = b["busy"] - a["busy"]
        n = max(questions, 1)
        ta, tb = a.get("kafka_threads", {}), b.get("kafka_threads", {})
        threads = sorted(((tb[k] - ta.get(k, 0.0), k) for k in tb), reverse=True)
        # JIT compilation is a warm-up cost of a fresh broker: shown on its own row
        jit = sum(v for v, k in threads if "Compiler" in k)
        if "kafka" in groups:
            groups["kafka"] -= jit
            groups["kafka JIT"] = jit
        return {
            "kafka_threads_ms_per_question": {k: round(v * 1000 / n, 3) for v, k in threads[:12]},
            "wall_s": round(wall, 1),
            "questions": questions,
            "cpu_ms_per_question": {k: round(v * 1000 / n, 3) for k, v in groups.items()},
            "cpu_ms_per_question_total": round(ours * 1000 / n, 3),
            "cores_used": {k: round(v / wall, 3) for k, v in groups.items()},
            "machine_busy_cores": round(busy / wall, 2),
            "other_users_cores": round(max(busy - ours, 0.0) / wall, 2),
            "load_start": a["load"],
            "load_end": b["load"],
        }


# ============================================================================ service metrics

#: Prometheus series summed over the instances of a service: (service, name, label filter).
SERIES = (
    ("router", "loket_router_batch_records_count", 'loop="questions"'),
    ("router", "loket_router_batch_records_sum", 'loop="questions"'),
    ("router", "loket_router_transaction_seconds_sum", 'loop="questions"'),
    ("router", "loket_router_batch_records_count", 'loop="reroute"'),
    ("router", "loket_router_batch_records_sum", 'loop="reroute"'),
    ("handoff", "loket_handoff_consumer_batch_records_count", ""),
    ("handoff", "loket_handoff_consumer_batch_records_sum", ""),
    ("handoff", "loket_handoff_consumer_batch_seconds_sum", ""),
)


async def scrape(stack: Stack) -> dict[str, float]:
    """The :data:`SERIES` of every instance, summed per (service, name, labels)."""
    import httpx

    out: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for service in ("router", "handoff"):
            for sp in stack.procs[service]:
                if not sp.alive:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    text = (await client.get(f"{sp.url}/metrics")).text
                    for line in text.splitlines():
                        for svc, name, labels in SERIES:
                            if svc == service and line.startswith(name) and labels in line:
                                key = f"{name}{{{labels}}}" if labels else name
                                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def batch_summary(a: dict[str, float], b: dict[str, float], wall: float) -> dict[str, float]:
    def d(key: str) -> float:
        return b.get(key, 0.0) - a.get(key, 0.0)

    q, rr = 'loket_router_batch_records_{}{{loop="questions"}}', 'loop="reroute"'
    rq_n, rq_sum = d(q.format("count")), d(q.format("sum"))
    rr_n = d(f"loket_router_batch_records_count{{{rr}}}")
    rr_sum = d(f"loket_router_batch_records_sum{{{rr}}}")
    h_n = d("loket_handoff_consumer_batch_records_count")
    return {
        "router_question_txns_per_s": round(rq_n / wall, 1),
        "router_questions_per_txn": round(rq_sum / max(rq_n, 1), 1),
        "router_question_txn_ms": round(
            1000 * d('loket_router_transaction_seconds_sum{loop="questions"}') / max(rq_n, 1), 1
        ),
        "router_reroute_txns_per_s": round(rr_n / wall, 1),
        "router_reroute_records_per_txn": round(rr_sum / max(rr_n, 1), 1),
        "handoff_batches_per_s": round(h_n / wall, 1),
        "handoff_records_per_batch": round(
            d("loket_handoff_consumer_batch_records_sum") / max(h_n, 1), 1
        ),
        "handoff_batch_ms": round(
            1000 * d("loket_handoff_consumer_batch_seconds_sum") / max(h_n, 1), 1
        ),
    }


# ============================================================================ observer


def observer_main(conn: Pipe, bootstrap: str, prefix: str) -> None:
    """Child process: watches the topics and timestamps each case's first events."""
    asyncio.run(_observer(conn, bootstrap, prefix))


async def _observer(conn: Pipe, bootstrap: str, prefix: str) -> None:
    agency_topics = {prefix + agency_topic(c) for c in AgencyCode}
    handoffs = prefix + HANDOFFS
    # case id -> [qr_visible, qr_append, cd_visible, cd_append, cr_append, ho_visible]
    seen: dict[str, list[float | None]] = {}
    common: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": None,
        "auto_offset_reset": "latest",
        "enable_auto_commit": False,
        # the broker answers a fetch as soon as data is there (fetch_min_bytes=1): the max
        # wait only bounds idle polling, so a long one costs no latency and little CPU
        "fetch_max_wait_ms": 100,
    }
    qc = AIOKafkaConsumer(prefix + QUESTIONS, isolation_level="read_uncommitted", **common)
    dc = AIOKafkaConsumer(
        *sorted(agency_topics), handoffs, isolation_level="read_committed", **common
    )

    def slot(case_id: str) -> list[float | None]:
        s = seen.get(case_id)
        if s is None:
            s = seen[case_id] = [None] * 6
        return s

    def ce_type(headers: Any) -> bytes:
        for k, v in headers:
            if k == "ce_type":
                return bytes(v)
        return b""

    async def run_q() -> None:
        while True:
            batches = await qc.getmany(timeout_ms=1000)
            now = time.time()
            for records in batches.values():
                for r in records:
                    if r.key is None:
                        continue
                    s = slot(r.key.decode())
                    if s[0] is None:
                        s[0], s[1] = now, r.timestamp / 1000

    async def run_d() -> None:
        while True:
            batches = await dc.getmany(timeout_ms=1000)
            now = time.time()
            for tp, records in batches.items():
                is_agency = tp.topic in agency_topics
                for r in records:
                    if r.key is None:
                        continue
                    s = slot(r.key.decode())
                    if is_agency:
                        if s[2] is None:
                            s[2], s[3] = now, r.timestamp / 1000
                    else:
                        t = ce_type(r.headers)
                        if t == b"nl.loket.case.routed.v1" and s[4] is None:
                            s[4] = r.timestamp / 1000
                        elif t == b"nl.loket.handoff.offered.v1" and s[5] is None:
                            s[5] = now

    for c in (qc, dc):
        await c.start()
        await c.getmany(timeout_ms=200)
        for tp in c.assignment():
            await c.position(tp)
    tasks = [asyncio.create_task(run_q()), asyncio.create_task(run_d())]
    loop = asyncio.get_running_loop()
    conn.send(("ready", os.getpid()))
    try:
        while True:
            cmd, arg = await loop.run_in_executor(None, conn.recv)
            if cmd == "wait":  # arg: (case ids, field index, within seconds)
                ids, index, within = arg
                deadline = time.monotonic() + within
                while time.monotonic() < deadline:
                    if all(seen.get(c, (None,) * 6)[index] is not None for c in ids):
                        break
                    await asyncio.sleep(0.1)  # the consumer tasks fill `seen`
                missing = sum(1 for c in ids if seen.get(c, (None,) * 6)[index] is None)
                conn.send(("waited", missing))
            elif cmd == "dump":
                conn.send(("dump", {c: seen.get(c) for c in arg}))
            elif cmd == "stop":
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await qc.stop()
        await dc.stop()
        conn.send(("stopped", None))


class Observer:
    QR_VIS, QR_APP, CD_VIS, CD_APP, CR_APP, HO_VIS = range(6)

    def __init__(self, bootstrap: str, prefix: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=observer_main, args=(child, bootstrap, prefix), daemon=True)
        self.pid: int | None = None

    async def _call(self, cmd: str, arg: Any = None) -> Any:
        self.conn.send((cmd, arg))
        _, value = await asyncio.to_thread(self.conn.recv)
        return value

    async def start(self) -> None:
        self.proc.start()
        _, self.pid = await asyncio.to_thread(self.conn.recv)

    async def wait(self, ids: list[str], index: int, within: float) -> int:
        return int(await self._call("wait", (ids, index, within)))

    async def dump(self, ids: list[str]) -> dict[str, list[float | None] | None]:
        return dict(await self._call("dump", ids))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call("stop"), 15)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()


# ============================================================================ phases


class Sample:
    """One accepted question: scheduled time, request sent and 202 received (wall clock)."""

    __slots__ = ("answered", "case_id", "scheduled", "sent")

    def __init__(self, case_id: str, scheduled: float, sent: float, answered: float) -> None:
        self.case_id, self.scheduled, self.sent, self.answered = case_id, scheduled, sent, answered


def stage_stats(samples: list[Sample], seen: dict[str, list[float | None] | None]) -> dict:
    stages: dict[str, list[float]] = {
        "e2e (scheduled -> CaseDelivered visible)": [],
        "loadgen lag (scheduled -> sent)": [],
        "intake (sent -> 202)": [],
        "QuestionReceived append -> visible (read_uncommitted)": [],
        "router (QuestionReceived append -> CaseDelivered append)": [],
        "commit (CaseDelivered append -> visible read_committed)": [],
        "handoff (CaseDelivered visible -> HandoffOffered visible)": [],
    }
    names = list(stages)
    for s in samples:
        v = seen.get(s.case_id)
        stages[names[1]].append(s.sent - s.scheduled)
        stages[names[2]].append(s.answered - s.sent)
        if v is None:
            continue
        qr_vis, qr_app, cd_vis, cd_app, _cr_app, ho_vis = v
        if cd_vis is not None:
            stages[names[0]].append(cd_vis - s.scheduled)
        if qr_vis is not None and qr_app is not None:
            stages[names[3]].append(qr_vis - qr_app)
        if qr_app is not None and cd_app is not None:
            stages[names[4]].append(cd_app - qr_app)
        if cd_app is not None and cd_vis is not None:
            stages[names[5]].append(cd_vis - cd_app)
        if cd_vis is not None and ho_vis is not None:
            stages[names[6]].append(ho_vis - cd_vis)
    return {k: stats(v) for k, v in stages.items()}


class Bench:
    def __init__(self, stack: Stack, observer: Observer, args: argparse.Namespace) -> None:
        self.stack, self.observer, self.args = stack, observer, args
        self.meter = CpuMeter(self.roots)
        self.profiles: list[str] = []

    def roots(self) -> dict[str, list[int]]:
        st = self.stack
        out: dict[str, list[int]] = {
            s: [p.pid for p in st.procs[s] if p.pid] for s in ("intake", "router", "handoff")
        }
        out["kafka"] = [p for p in [st.kafka.pid] if p]
        redis_pid = st.redis.state_dir / f"redis-{st.redis.port}" / "redis.pid"
        with contextlib.suppress(OSError, ValueError):
            out["redis"] = [int(redis_pid.read_text().strip())]
        # the observer (and py-spy) are children of the load generator: count them first
        out["observer"] = [self.observer.pid] if self.observer.pid else []
        out["loadgen"] = [os.getpid()]
        return out

    async def finish(
        self,
        samples: list[Sample],
        statuses: Counter[int],
        baseline: tuple[dict[str, Any], dict[str, float]],
        t0: float,
    ) -> dict[str, Any]:
        """Wait for delivery (and the handoff offers), then measure CPU and stages."""
        before, metrics_before = baseline
        ids = [s.case_id for s in samples]
        not_delivered = await self.observer.wait(ids, Observer.CD_VIS, within=180)
        no_offer = await self.observer.wait(ids, Observer.HO_VIS, within=60)
        after = self.meter.snapshot()
        metrics_after = await scrape(self.stack)
        seen = await self.observer.dump(ids)
        delivered = [v[Observer.CD_VIS] for v in seen.values() if v and v[Observer.CD_VIS]]
        last = max((float(t) for t in delivered if t is not None), default=t0)
        offered = [v[Observer.HO_VIS] for v in seen.values() if v and v[Observer.HO_VIS]]
        last_offer = max((float(t) for t in offered if t is not None), default=t0)
        return {
            "accepted": len(samples),
            "statuses": dict(statuses),
            "delivered": len(delivered),
            "not_delivered": not_delivered,
            "without_offer": no_offer,
            "delivered_per_s": round(len(delivered) / max(last - t0, 1e-9), 1),
            # through all three services: the case's first HandoffOffered is visible
            "offered_per_s": round(len(offered) / max(last_offer - t0, 1e-9), 1),
            "stages": stage_stats(samples, seen),
            "cpu": CpuMeter.delta(before, after, len(samples)),
            "batches": batch_summary(metrics_before, metrics_after, after["t"] - before["t"]),
        }

    async def fixed(self, rate: float, seconds: float, *, label: str = "") -> dict[str, Any]:
        n = int(rate * seconds)
        payloads = questions(n, seed=int(rate) + len(label))
        pool = Pool(self.stack.url("intake"), size=max(32, int(rate // 2)))
        samples: list[Sample] = []
        statuses: Counter[int] = Counter()
        before = (self.meter.snapshot(), await scrape(self.stack))
        start = time.time() + 0.2
        mono0 = time.monotonic() + 0.2

        async def fire(i: int) -> None:
            delay = mono0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # open-loop schedule
            key, payload = payloads[i]
            status, data, sent, answered = await pool.post(
                payload, key, f"bench-{label}{rate}-{i}-{time.time_ns()}"
            )
            statuses[status] += 1
            if status == 202:
                case_id = json.loads(data)["case_id"]
                samples.append(Sample(case_id, start + i / rate, sent, answered))

        profile = self.start_profile(seconds) if label == "profile" else None
        await asyncio.gather(*(fire(i) for i in range(n)))
        send_seconds = time.time() - start
        result = await self.finish(samples, statuses, before, start)
        pool.close()
        await self.wait_profile(profile)
        e2e = result["stages"]["e2e (scheduled -> CaseDelivered visible)"]
        return {"rate": rate, "seconds": seconds, "sent": n, "send_seconds": round(send_seconds, 1),
                **result, **e2e}  # fmt: skip

    async def max_rate(self, concurrency: int, seconds: float, profile: bool) -> dict[str, Any]:
        payloads = questions(50000, seed=99)
        pool = Pool(self.stack.url("intake"), size=concurrency)
        samples: list[Sample] = []
        statuses: Counter[int] = Counter()
        counter = itertools.count()  # payloads are reused (each POST has its own key)
        before = (self.meter.snapshot(), await scrape(self.stack))
        start = time.time()
        stop = start + seconds

        async def worker() -> None:
            while time.time() < stop:
                i = next(counter)
                key, payload = payloads[i % len(payloads)]
                status, data, sent, answered = await pool.post(
                    payload, key, f"bench-max-{i}-{time.time_ns()}"
                )
                statuses[status] += 1
                if status == 202:
                    samples.append(Sample(json.loads(data)["case_id"], sent, sent, answered))

        prof = self.start_profile(seconds) if profile else None
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        accepted_s = time.time() - start
        result = await self.finish(samples, statuses, before, start)
        pool.close()
        await self.wait_profile(prof)
        e2e = result["stages"]["e2e (scheduled -> CaseDelivered visible)"]
        return {"concurrency": concurrency, "seconds": seconds,
                "accepted_per_s": round(len(samples) / accepted_s, 1), **result, **e2e}  # fmt: skip

    async def idle(self, seconds: float) -> dict[str, float]:
        a = self.meter.snapshot()
        await asyncio.sleep(seconds)  # measuring the stack's idle CPU over this window
        b = self.meter.snapshot()
        return CpuMeter.delta(a, b, 1)["cores_used"]

    # ----------------------------------------------------------------- py-spy

    def start_profile(self, seconds: float) -> list[subprocess.Popen[bytes]] | None:
        if not self.args.profile:
            return None
        exe = shutil.which("py-spy")
        cmd = [exe] if exe else ["uv", "tool", "run", "py-spy"]
        out_dir = Path(self.args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        procs = []
        for service in self.args.profile.split(","):
            for sp in self.stack.procs[service]:
                if not sp.pid:
                    continue
                out = out_dir / f"{sp.name}.{int(time.time())}.txt"
                self.profiles.append(str(out))
                procs.append(
                    subprocess.Popen(
                        [
                            *cmd,
                            "record",
                            "--pid",
                            str(sp.pid),
                            "--duration",
                            str(int(seconds)),
                            "--rate",
                            "200",
                            "--nonblocking",
                            "--subprocesses",
                            "--format",
                            "raw",
                            "--output",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        return procs

    async def wait_profile(self, procs: list[subprocess.Popen[bytes]] | None) -> None:
        for p in procs or ():
            try:
                await asyncio.to_thread(p.wait, 60)
            except subprocess.TimeoutExpired:
                p.kill()


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
        fetch_max_wait_ms=100,
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


# ============================================================================ main


def parse_env(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"*": {"LOKET_LOG_LEVEL": "WARNING"}}
    for item in items:
        service, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        if not key:
            raise SystemExit(f"--env {item!r}: expected SERVICE:KEY=VALUE")
        out.setdefault(service, {})[key] = value
    return out


def print_tables(result: dict[str, Any]) -> None:
    print(
        "\n| rate | e2e p50 | e2e p99 | delivered/s | offered/s | Kafka floor p50 | floor p99 "
        "| load avg | other users (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    floors = {f["rate"]: f for f in result["floor"]}
    rows = [(f"{e['rate']:.0f}/s", e) for e in result["e2e"]]
    if "max" in result:
        rows.append((f"max ({result['max']['concurrency']} clients)", result["max"]))
    for label, e in rows:
        f = floors.get(e.get("rate"), {})
        cpu = e["cpu"]
        print(
            f"| {label} | {e['p50_ms']} ms | {e['p99_ms']} ms | {e['delivered_per_s']} | "
            f"{e['offered_per_s']} | {f.get('p50_ms', '-')} ms | {f.get('p99_ms', '-')} ms | "
            f"{cpu['load_start']}-{cpu['load_end']} | {cpu['other_users_cores']} |"
        )
    print("\nLatency per stage, p50 / p99 (ms):\n")
    names = list(rows[0][1]["stages"]) if rows else []
    print("| stage | " + " | ".join(label for label, _ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name in names:
        cells = [f"{e['stages'][name]['p50_ms']} / {e['stages'][name]['p99_ms']}" for _, e in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nCPU ms per accepted question (all processes of the group):\n")
    print("| process | " + " | ".join(label for label, _ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for group in GROUPS:
        cells = [str(e["cpu"]["cpu_ms_per_question"].get(group, "-")) for _, e in rows]
        print(f"| {group} | " + " | ".join(cells) + " |")
    for label, key in (
        ("**total**", "cpu_ms_per_question_total"),
        ("machine busy (cores)", "machine_busy_cores"),
        ("other users (cores)", "other_users_cores"),
    ):
        print(f"| {label} | " + " | ".join(str(e["cpu"][key]) for _, e in rows) + " |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="50,200,500")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-max", action="store_true")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds, not reported")
    parser.add_argument("--warmup-rate", type=float, default=150.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--handoffs", type=int, default=1)
    parser.add_argument("--intake-workers", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--kafka-heap", default="-Xmx512m", help="JVM options of the broker")
    parser.add_argument(
        "--kafka-jvm",
        default="",
        help="broker GC/JIT flags (--kafka-jvm=-XX:...; replace kafka.sh's defaults)",
    )
    parser.add_argument(
        "--kafka-config", action="append", default=[], help="broker KEY=VALUE (repeatable)"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="SERVICE:KEY=VALUE (SERVICE * = all)"
    )
    parser.add_argument("--profile", default="", help="py-spy these services (comma list)")
    parser.add_argument("--out-dir", default="/tmp/loket-e2e-bench")
    parser.add_argument("--json-out", default="", help="also write the JSON summary here")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    env = parse_env(args.env)
    env.setdefault("intake", {})["LOKET_WORKERS"] = str(args.intake_workers)
    env.setdefault("router", {})["LOKET_TOPIC_PARTITIONS"] = str(args.partitions)
    base_env = stack_env(**env)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 24 GB (shared)",
        "config": {
            "routers": args.routers,
            "handoffs": args.handoffs,
            "intake_workers": args.intake_workers,
            "partitions": args.partitions,
            "kafka_heap": args.kafka_heap,
            "kafka_jvm": args.kafka_jvm or "(kafka.sh default)",
            "kafka_config": args.kafka_config,
            "env": env,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
        },
        "floor": [],
        "e2e": [],
    }
    if args.kafka_config:  # appended to the bench broker's server.properties (kafka.sh)
        os.environ["KAFKA_EXTRA_CONFIG"] = "\n".join(args.kafka_config)
    if args.kafka_jvm:  # replaces kafka.sh's default GC/JIT flags of the bench broker
        os.environ["KAFKA_JVM_PERFORMANCE_OPTS"] = args.kafka_jvm
    # SIGTERM (e.g. a timeout) cancels the run, so the stack below is still taken down
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    stack = Stack(extra_env=base_env, partitions=args.partitions, kafka_heap=args.kafka_heap)
    async with stack:
        for _ in range(args.routers - 1):
            await stack.add_instance("router")
        for _ in range(args.handoffs - 1):
            await stack.add_instance("handoff")
        print(f"stack up: {stack.url('intake')} ({stack.workdir})", file=sys.stderr)
        observer = Observer(stack.bootstrap, stack.topic_prefix)
        await observer.start()
        bench = Bench(stack, observer, args)
        print(f"pids: {bench.roots()}", file=sys.stderr)
        try:
            if args.warmup:
                w = await bench.fixed(args.warmup_rate, args.warmup, label="warmup")
                print(f"warmup: p50 {w['p50_ms']} p99 {w['p99_ms']} ms", file=sys.stderr)
            if args.idle_seconds:
                result["idle_cores"] = await bench.idle(args.idle_seconds)
                print(f"idle cores: {result['idle_cores']}", file=sys.stderr)
            for i, rate in enumerate(rates):
                if not args.skip_floor:
                    floor = await kafka_floor(stack.bootstrap, rate, args.duration)
                    result["floor"].append(floor)
                    print(f"floor {rate}/s: {floor}", file=sys.stderr)
                last = i == len(rates) - 1 and args.skip_max
                e2e = await bench.fixed(rate, args.duration, label="profile" if last else "")
                result["e2e"].append(e2e)
                print(f"e2e {rate}/s: {json.dumps(e2e)}", file=sys.stderr)
            if not args.skip_max:
                result["max"] = await bench.max_rate(
                    args.concurrency, args.max_seconds, profile=bool(args.profile)
                )
                print(f"max: {json.dumps(result['max'])}", file=sys.stderr)
        finally:
            await observer.stop()
        result["profiles"] = bench.profiles
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:  # noqa: ASYNC230 - once, at the end
            json.dump(result, f, indent=2)
    print_tables(result)


if __name__ == "__main__":
    asyncio.run(main())
