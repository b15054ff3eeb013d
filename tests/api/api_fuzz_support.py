"""Helpers for the schemathesis API fuzz tests: the real service process, and case helpers.

Each service runs as in production: ``python -m loket_<svc>`` (uvicorn, lifespan on, so
``create_app(settings)`` connects Kafka and Redis and starts its consumers), configured
through ``LOKET_*`` environment variables with a unique topic and Redis key prefix on the
shared Kafka and Redis. schemathesis talks HTTP to it.

Why a process and not the app in-process: schemathesis' ASGI transport opens a Starlette
TestClient per request (the lifespan, i.e. Kafka and Redis, would start and stop per
request), and a server thread in the test process shares the ``random`` module with
Hypothesis, which then reports the service's own use of it as a strategy using ``random``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from loket_runtime.testing import free_port

STARTUP_TIMEOUT_S = 60.0


def unique_prefixes() -> tuple[str, str]:
    """A fresh (topic prefix, Redis key prefix) pair, like the per-test fixtures."""
    uid = uuid.uuid4().hex[:8]
    return f"t{uid}.", f"test:{uid}:"


class ServiceProcess:
    """``python -m <module>`` on a free 127.0.0.1 port, output in a log file."""

    def __init__(self, module: str, env: dict[str, str]) -> None:
        self.module = module
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            "LOKET_HOST": "127.0.0.1",
            "LOKET_PORT": str(self.port),
            "LOKET_LOG_LEVEL": "WARNING",
        }
        self.log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self) -> ServiceProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.module} exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.module} not ready in {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_service(module: str, env: dict[str, str]) -> Iterator[ServiceProcess]:
    service = ServiceProcess(module, env).start()
    try:
        yield service
    finally:
        service.stop()
        service.log_path.unlink(missing_ok=True)


def delete_redis_prefix(redis_url: str, prefix: str) -> None:
    """Remove every key the run wrote (the shared Redis stays clean)."""
    client = Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


# --------------------------------------------------------------------------- cases


def negated(case: Any, location: str) -> bool:
    """True when schemathesis made this part of the request invalid on purpose.

    The tests only fill in valid keys and known ids where the request is meant to be
    valid: a negative header (e.g. the API key left out) or path stays as generated.
    """
    meta = getattr(case, "meta", None)
    if meta is None:
        return False
    return any(
        loc.value == location and info.mode.is_negative for loc, info in meta.components.items()
    )


def pick(seed: str, n: int) -> int:
    """A deterministic choice in ``range(n)`` from generated data (reproducible runs)."""
    return zlib.crc32(seed.encode()) % n


def auth_headers(case: Any, key: str) -> dict[str, str] | None:
    """``{"X-API-Key": key}`` unless the case's headers are negated (then: as generated)."""
    return None if negated(case, "header") else {"X-API-Key": key}
