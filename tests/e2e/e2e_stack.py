"""A whole Loket stack for end-to-end and fault tests: own Kafka, own Redis, three services.

``Stack`` starts:

* its OWN Kafka broker (:class:`loket_runtime.testing.LocalKafka`, free ports, own data
  dir), so restarting or killing it never disturbs the shared broker on 9092;
* its OWN Redis (:class:`loket_runtime.testing.LocalRedis`, free port, own dir, AOF on);
* every topic of :data:`loket_schemas.topics.ALL_TOPICS` with 3 partitions;
* intake, router and handoff as separate OS processes (``sys.executable -m loket_<svc>``),
  each with its own port, Redis key prefix and log file.

Fault injection: :meth:`Stack.kill` (SIGKILL by default), :meth:`Stack.start`,
:meth:`Stack.add_instance` (a second router/handoff in the same consumer group),
:meth:`Stack.stop_kafka` / :meth:`Stack.start_kafka` / :meth:`Stack.restart_kafka`,
:meth:`Stack.stop_redis` / :meth:`Stack.start_redis` / :meth:`Stack.wipe_redis`.

Used as an async context manager::

    async with Stack(tmp_path) as stack:
        url = stack.url("intake")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from loket_runtime.kafka import ensure_topics
from loket_runtime.testing import LocalKafka, LocalRedis, free_port
from loket_schemas.topics import ALL_TOPICS

SERVICES: tuple[str, ...] = ("intake", "router", "handoff")
#: Development pseudonym key used by every service of a test stack (same for all, so the
#: status token intake hands out is the one handoff checks).
STACK_PSEUDONYM_KEY = "e2e-stack-pseudonym-key-not-a-secret"


#: Environment every test stack's services get (dev keys on; see the services' READMEs).
STACK_ENV: dict[str, dict[str, str]] = {
    "intake": {"LOKET_DEV_API_KEYS": "true"},
    "handoff": {"LOKET_HANDOFF_DEV_KEYS": "true"},
}


def stack_env(**per_service: dict[str, str]) -> dict[str, dict[str, str]]:
    """:data:`STACK_ENV` plus extra variables per service (``"*"`` for every service)."""
    env = {k: dict(v) for k, v in STACK_ENV.items()}
    for service, values in per_service.items():
        env.setdefault(service, {}).update(values)
    return env


@dataclass
class ServiceProcess:
    """One running (or dead) service process."""

    service: str
    index: int
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass
class Stack:
    """A complete Loket deployment on its own Kafka and Redis (see module docstring)."""

    workdir: Path | None = None
    services: tuple[str, ...] = SERVICES
    topic_prefix: str = ""
    partitions: int = 3
    #: extra environment per service name (``"*"`` for all)
    extra_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    ready_timeout: float = 60.0
    kafka_heap: str = "-Xmx512m"

    def __post_init__(self) -> None:
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="loket-e2e-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.run_id = uuid.uuid4().hex[:8]
        self.kafka = LocalKafka(state_dir=self.workdir / "kafka", heap=self.kafka_heap)
        self.redis = LocalRedis(port=free_port(), state_dir=self.workdir / "redis")
        self.procs: dict[str, list[ServiceProcess]] = {s: [] for s in SERVICES}
        self._http = httpx.AsyncClient(timeout=5.0)

    # ------------------------------------------------------------------ addresses

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def redis_prefix(self, service: str) -> str:
        """Redis key prefix of a service; shared by all instances of that service."""
        return f"e2e:{self.run_id}:{service}:"

    def instance(self, service: str, index: int = 0) -> ServiceProcess:
        return self.procs[service][index]

    def url(self, service: str, index: int = 0) -> str:
        return self.instance(service, index).url

    @property
    def handoff_public_url(self) -> str:
        procs = self.procs["handoff"]
        return procs[0].url if procs else "http://127.0.0.1:8002"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Stack:
        try:
            await self.up()
        except BaseException:
            await self.down()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    async def up(self) -> None:
        """Start Kafka, Redis, the topics and every service; wait until all are ready."""
        await asyncio.gather(
            asyncio.to_thread(self.kafka.start), asyncio.to_thread(self.redis.start)
        )
        await self.create_topics()
        # Reserve ports first so every service knows the handoff public URL.
        for service in self.services:
            self._new_instance(service)
        await asyncio.gather(*(self.start(s) for s in self.services))

    async def create_topics(self) -> None:
        await ensure_topics(
            self.bootstrap, [self.topic(t) for t in ALL_TOPICS], partitions=self.partitions
        )

    async def down(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL), Kafka and Redis; delete data."""
        await asyncio.gather(
            *(self.stop(p.service, p.index) for ps in self.procs.values() for p in ps),
            return_exceptions=True,
        )
        await self._http.aclose()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.kafka.kill)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.redis.stop)
        if self._own_workdir and not os.environ.get("LOKET_E2E_KEEP"):
            assert self.workdir is not None
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _new_instance(self, service: str) -> ServiceProcess:
        index = len(self.procs[service])
        sp = ServiceProcess(
            service=service,
            index=index,
            port=free_port(),
            log_path=self.log_dir / f"{service}-{index}.log",
        )
        self.procs[service].append(sp)
        return sp

    def env_for(self, sp: ServiceProcess) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOKET_")}
        env.update(
            {
                "LOKET_KAFKA_BOOTSTRAP": self.bootstrap,
                "LOKET_REDIS_URL": self.redis_url,
                "LOKET_HOST": "127.0.0.1",
                "LOKET_PORT": str(sp.port),
                "LOKET_REDIS_KEY_PREFIX": self.redis_prefix(sp.service),
                "LOKET_TOPIC_PREFIX": self.topic_prefix,
                "LOKET_HANDOFF_PUBLIC_URL": self.handoff_public_url,
                "LOKET_PSEUDONYM_KEY": STACK_PSEUDONYM_KEY,
                "LOKET_INSTANCE_ID": f"{sp.service}-{self.run_id}-{sp.index}",
                # stable per instance slot: a restarted router fences its predecessor
                "LOKET_ROUTER_INSTANCE_ID": str(sp.index),
                "LOKET_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env.get("*", {}))
        env.update(self.extra_env.get(sp.service, {}))
        return env

    async def start(self, service: str, index: int = 0, *, wait: bool = True) -> ServiceProcess:
        """(Re)start one service instance and wait until its /readyz answers 200."""
        sp = self.procs[service][index]
        if sp.alive:
            return sp
        log = sp.log_path.open("ab")
        log.write(f"\n===== start #{sp.starts + 1} at {time.time():.3f} =====\n".encode())
        log.flush()
        sp.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", f"loket_{service}"],
            env=self.env_for(sp),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        sp.starts += 1
        if wait:
            await self.wait_ready(service, index)
        return sp

    async def add_instance(self, service: str) -> ServiceProcess:
        """One more instance of ``service`` (same consumer groups, same Redis prefix)."""
        sp = self._new_instance(service)
        return await self.start(service, sp.index)

    def kill(self, service: str, index: int = 0, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default) to one service process and reap it."""
        sp = self.procs[service][index]
        if sp.proc is None or sp.proc.poll() is not None:
            return
        sp.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                sp.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sp.proc.kill()
                sp.proc.wait(timeout=10)

    async def stop(self, service: str, index: int = 0, grace: float = 15.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL after ``grace`` seconds."""
        sp = self.procs[service][index]
        if sp.proc is None or sp.proc.poll() is not None:
            return
        sp.proc.terminate()
        try:
            await asyncio.to_thread(sp.proc.wait, grace)
        except subprocess.TimeoutExpired:
            sp.proc.kill()
            await asyncio.to_thread(sp.proc.wait, 10)

    async def restart(self, service: str, index: int = 0, sig: int = signal.SIGKILL) -> None:
        self.kill(service, index, sig)
        await self.start(service, index)

    async def wait_ready(self, service: str, index: int = 0, within: float | None = None) -> None:
        """Poll ``/readyz`` until 200; fail with the log tail when the deadline passes."""
        sp = self.procs[service][index]
        deadline = time.monotonic() + (within or self.ready_timeout)
        last = "no answer"
        while time.monotonic() < deadline:
            if not sp.alive:
                raise RuntimeError(
                    f"{sp.name} exited with {sp.proc.returncode if sp.proc else '?'}\n"
                    + self.log_tail(service, index)
                )
            try:
                r = await self._http.get(f"{sp.url}/readyz", timeout=3.0)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            await asyncio.sleep(0.1)  # polling a process we do not control
        raise TimeoutError(
            f"{sp.name} not ready after {within or self.ready_timeout}s ({last})\n"
            + self.log_tail(service, index)
        )

    async def wait_all_ready(self, within: float | None = None) -> None:
        await asyncio.gather(
            *(
                self.wait_ready(p.service, p.index, within)
                for ps in self.procs.values()
                for p in ps
                if p.alive
            )
        )

    def log_tail(self, service: str, index: int = 0, lines: int = 40) -> str:
        path = self.procs[service][index].log_path
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {path})"
        return f"--- {path} ---\n" + "\n".join(text)

    def logs(self) -> str:
        return "\n".join(
            self.log_tail(p.service, p.index) for ps in self.procs.values() for p in ps
        )

    # ------------------------------------------------------------------ Kafka faults

    async def stop_kafka(self) -> None:
        await asyncio.to_thread(self.kafka.stop)

    async def kill_kafka(self) -> None:
        await asyncio.to_thread(self.kafka.kill)

    async def start_kafka(self) -> None:
        await asyncio.to_thread(self.kafka.start)

    async def restart_kafka(self, down_for: float = 0.0) -> None:
        await self.stop_kafka()
        if down_for:
            await asyncio.sleep(down_for)  # the fault: the broker stays away this long
        await self.start_kafka()

    # ------------------------------------------------------------------ Redis faults

    async def stop_redis(self) -> None:
        await asyncio.to_thread(self.redis.stop)

    async def start_redis(self) -> None:
        await asyncio.to_thread(self.redis.start)

    async def wipe_redis(self, services: Iterable[str] | None = None) -> int:
        """Delete every Redis key of ``services`` (all when None). Returns keys deleted."""
        prefixes = [self.redis_prefix(s) for s in (services or SERVICES)]
        client = Redis.from_url(self.redis_url)
        deleted = 0
        try:
            for prefix in prefixes:
                batch: list[Any] = []
                async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        deleted += await client.delete(*batch)
                        batch = []
                if batch:
                    deleted += await client.delete(*batch)
        finally:
            await client.aclose()
        return deleted

    async def redis_client(self) -> Redis:
        return Redis.from_url(self.redis_url)
