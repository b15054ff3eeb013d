"""pytest plugin: real Kafka and Redis for tests, plus helpers.

Registered by the repository's root ``conftest.py`` (``pytest_plugins =
["loket_runtime.testing"]``).

Kafka and Redis are found in this order (DESIGN.md):

1. ``LOKET_KAFKA_BOOTSTRAP`` / ``LOKET_REDIS_URL`` if set;
2. testcontainers when a Docker engine answers a ping (within ~2 s);
3. ``deploy/local/kafka.sh`` / ``deploy/local/redis.sh``: a broker/server already
   answering on the default port is used as is; one this session starts is stopped at
   session end.

The chosen addresses are exported as ``LOKET_KAFKA_BOOTSTRAP`` / ``LOKET_REDIS_URL`` so
settings objects and subprocesses started by tests pick them up.

Fixtures
--------
- ``kafka_bootstrap`` (session) -> ``"host:port"``
- ``redis_url`` (session) -> ``"redis://host:port/0"``
- ``unique_id`` -> 8 hex chars, unique per test
- ``topic_prefix`` -> ``"t<unique_id>."``; pass it as ``topic_prefix`` in settings
- ``redis_prefix`` -> ``"test:<unique_id>:"``; pass it as ``redis_key_prefix``
- ``loket_settings`` -> dict of settings kwargs (bootstrap, redis, both prefixes)
- ``make_topics`` -> ``async (*names, partitions=3) -> list[str]`` creating
  ``topic_prefix + name`` on the real broker and returning the full names
- ``local_kafka`` -> a started, separate :class:`LocalKafka` on free ports (stopped after)

Helpers: :func:`consume_until`, :class:`LocalKafka`, :func:`free_port`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from loket_runtime.kafka import ensure_topics

__all__ = [
    "LocalKafka",
    "LocalRedis",
    "consume_until",
    "docker_available",
    "free_port",
    "repo_root",
]


# --------------------------------------------------------------------------- helpers


def repo_root() -> Path:
    """The repository root: ``LOKET_REPO_ROOT`` or the first parent holding deploy/local."""
    env = os.environ.get("LOKET_REPO_ROOT")
    if env:
        return Path(env)
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "deploy" / "local" / "kafka.sh").is_file():
                return parent
    raise RuntimeError(
        "cannot find the repository root (deploy/local/kafka.sh); set LOKET_REPO_ROOT"
    )


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping (the docker CLI alone is not enough)."""
    if os.environ.get("LOKET_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _run_script(script: str, action: str, env: dict[str, str], timeout: float = 180) -> None:
    path = repo_root() / "deploy" / "local" / script
    proc = subprocess.run(
        ["bash", str(path), action],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{script} {action} failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
        )


class LocalKafka:
    """A separate single-node KRaft broker via ``deploy/local/kafka.sh``.

    For fault tests: own ports and own data dir, so stopping or killing it never
    disturbs the shared broker. ``restart()`` keeps the data (same cluster id).
    """

    def __init__(
        self,
        port: int | None = None,
        controller_port: int | None = None,
        state_dir: Path | str | None = None,
        heap: str = "-Xmx512m",
    ) -> None:
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix=f"loket-kafka-{self.port}-"))
        self.heap = heap

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / f"kafka-{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "LOKET_STATE_DIR": str(self.state_dir),
            "KAFKA_DIR": str(self.kafka_dir),
            "KAFKA_HEAP_OPTS": self.heap,
        }

    def start(self) -> LocalKafka:
        _run_script("kafka.sh", "start", self._env())
        return self

    def stop(self) -> None:
        """Clean shutdown (SIGTERM, then SIGKILL after a timeout)."""
        _run_script("kafka.sh", "stop", self._env())

    def kill(self) -> None:
        """``kill -9`` the broker process."""
        _run_script("kafka.sh", "kill", self._env())

    def restart(self) -> LocalKafka:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int | None:
        try:
            return int((self.kafka_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """Stop the broker and delete its data if this object created the directory."""
        with contextlib.suppress(Exception):
            self.kill()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class LocalRedis:
    """A Redis server via ``deploy/local/redis.sh`` (port and data dir configurable)."""

    def __init__(self, port: int = 6379, state_dir: Path | str | None = None) -> None:
        self.port = port
        self.state_dir = Path(state_dir) if state_dir else repo_root() / "var"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _env(self) -> dict[str, str]:
        return {"REDIS_PORT": str(self.port), "LOKET_STATE_DIR": str(self.state_dir)}

    def start(self) -> LocalRedis:
        _run_script("redis.sh", "start", self._env())
        return self

    def stop(self) -> None:
        _run_script("redis.sh", "stop", self._env())


# --------------------------------------------------------------------------- consume


async def consume_until(
    bootstrap: str,
    topic: str,
    predicate: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
    count: int | None = None,
    timeout: float = 30.0,
    *,
    from_beginning: bool = True,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` until ``count`` records matching ``predicate`` arrived.

    - ``predicate`` only: returns the first matching record (list of one);
    - ``count`` only: returns the first ``count`` records;
    - both: returns the first ``count`` matching records.

    Waits on the consumer (no sleeps). Records keep ``key``, ``value`` (bytes),
    ``headers`` (list of ``(str, bytes)``), ``partition`` and ``offset``. Raises
    ``AssertionError`` listing what was seen when ``timeout`` seconds pass first.
    """
    if count is None:
        count = 1
    match = predicate or (lambda _r: True)
    consumer: AIOKafkaConsumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    matched: list[ConsumerRecord[bytes, bytes]] = []
    seen = 0
    try:
        async with asyncio.timeout(timeout):
            while len(matched) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        seen += 1
                        if match(record) and len(matched) < count:
                            matched.append(record)
    except TimeoutError:
        raise AssertionError(
            f"consume_until({topic!r}): {len(matched)}/{count} matching records "
            f"after {timeout}s ({seen} records seen)"
        ) from None
    finally:
        await consumer.stop()
    return matched


def header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    """The decoded value of a record header, or None."""
    for key, value in record.headers or ():
        if key == name:
            return value.decode() if isinstance(value, bytes | bytearray) else str(value)
    return None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka broker (see module docstring for the order)."""
    env = os.environ.get("LOKET_KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    if docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as kafka:
            bootstrap = kafka.get_bootstrap_server()
            os.environ["LOKET_KAFKA_BOOTSTRAP"] = bootstrap
            try:
                yield bootstrap
            finally:
                os.environ.pop("LOKET_KAFKA_BOOTSTRAP", None)
        return
    port = 9092
    started = not port_open(port)
    if started:
        _run_script("kafka.sh", "start", {"KAFKA_PORT": str(port)})
    bootstrap = f"127.0.0.1:{port}"
    os.environ["LOKET_KAFKA_BOOTSTRAP"] = bootstrap
    try:
        yield bootstrap
    finally:
        os.environ.pop("LOKET_KAFKA_BOOTSTRAP", None)
        if started and not os.environ.get("LOKET_KEEP_SERVICES"):
            _run_script("kafka.sh", "stop", {"KAFKA_PORT": str(port)})


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server with AOF on when started by us."""
    env = os.environ.get("LOKET_REDIS_URL")
    if env:
        yield env
        return
    if docker_available():
        from testcontainers.community.redis import RedisContainer

        with RedisContainer("redis:7").with_command("redis-server --appendonly yes") as redis:
            url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
            os.environ["LOKET_REDIS_URL"] = url
            try:
                yield url
            finally:
                os.environ.pop("LOKET_REDIS_URL", None)
        return
    port = 6379
    started = not port_open(port)
    if started:
        _run_script("redis.sh", "start", {"REDIS_PORT": str(port)})
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["LOKET_REDIS_URL"] = url
    try:
        yield url
    finally:
        os.environ.pop("LOKET_REDIS_URL", None)
        if started and not os.environ.get("LOKET_KEEP_SERVICES"):
            _run_script("redis.sh", "stop", {"REDIS_PORT": str(port)})


@pytest.fixture
def unique_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def topic_prefix(unique_id: str) -> str:
    return f"t{unique_id}."


@pytest.fixture
def redis_prefix(unique_id: str) -> str:
    return f"test:{unique_id}:"


@pytest.fixture
def loket_settings(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, redis_prefix: str
) -> dict[str, Any]:
    """Keyword arguments for any ``BaseServiceSettings`` subclass, isolated per test."""
    return {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_prefix": topic_prefix,
        "redis_key_prefix": redis_prefix,
    }


@pytest.fixture
def make_topics(kafka_bootstrap: str, topic_prefix: str) -> Callable[..., Awaitable[list[str]]]:
    """``await make_topics("loket.questions.v1", partitions=3)`` -> prefixed names."""

    async def make(*names: str, partitions: int = 3) -> list[str]:
        full = [f"{topic_prefix}{n}" for n in names]
        await ensure_topics(kafka_bootstrap, full, partitions=partitions)
        return full

    return make


@pytest.fixture
def local_kafka() -> Iterator[LocalKafka]:
    """A started, separate broker on free ports; killed and deleted after the test."""
    kafka = LocalKafka()
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.cleanup()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    """A ``redis.asyncio.Redis`` on the test Redis (decode_responses=False)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
