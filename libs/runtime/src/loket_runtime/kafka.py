"""Kafka helpers: a FastStream ``KafkaBroker`` with safe producer defaults, topic creation.

Producer defaults: ``acks="all"`` and ``enable_idempotence=True``, so ``await
broker.publish(...)`` returns only after the broker has durably written the record and
retries cannot duplicate it.

aiokafka's idempotent producer retries forever while the broker is unreachable, so a
bare publish would hang. Every broker built here therefore carries a delivery-timeout
middleware: a publish that is not acknowledged within ``delivery_timeout_s`` raises
``aiokafka.errors.KafkaTimeoutError`` (loudly, never silently dropped). Note that
``broker.stop()`` flushes pending records and so also waits while the broker is down;
use :func:`stop_broker` for a bounded shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError
from faststream import BaseMiddleware
from faststream.kafka import KafkaBroker

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from loket_runtime.settings import BaseServiceSettings

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
DEFAULT_DELIVERY_TIMEOUT_S = 30.0


def delivery_timeout_middleware(seconds: float) -> type[BaseMiddleware]:
    """A FastStream middleware bounding every publish by ``seconds`` (broker ack included)."""

    class DeliveryTimeout(BaseMiddleware):
        async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
            try:
                async with asyncio.timeout(seconds):
                    return await call_next(cmd)
            except TimeoutError as exc:
                dest = getattr(cmd, "destination", "?")
                raise KafkaTimeoutError(
                    f"publish to {dest!r} not acknowledged by Kafka within {seconds:g}s"
                ) from exc

    return DeliveryTimeout


async def stop_broker(broker: KafkaBroker, timeout: float = 10.0) -> bool:
    """Stop ``broker`` but give up after ``timeout`` s (e.g. Kafka down). True if clean."""
    try:
        await asyncio.wait_for(broker.stop(), timeout=timeout)
    except TimeoutError:
        log.error("kafka broker did not stop within %ss (Kafka unreachable?)", timeout)
        return False
    return True


def create_broker(
    settings: BaseServiceSettings | None = None,
    *,
    bootstrap: str | None = None,
    client_id: str | None = None,
    registry: CollectorRegistry | None = None,
    middlewares: Sequence[Any] = (),
    delivery_timeout_s: float | None = None,
    **overrides: Any,
) -> KafkaBroker:
    """A FastStream ``KafkaBroker`` with ``acks="all"`` and idempotent producing.

    Nothing connects here; call ``await broker.start()`` (the app lifespan does that).
    Publishing is bounded by ``delivery_timeout_s`` (default: the settings'
    ``kafka_delivery_timeout_s``, else 30 s).
    ``registry`` adds FastStream's Prometheus middleware; ``overrides`` go to
    ``KafkaBroker`` unchanged (e.g. ``request_timeout_ms=5000`` in fault tests).
    """
    if bootstrap is None:
        if settings is None:
            raise ValueError("create_broker needs settings or bootstrap")
        bootstrap = settings.kafka_bootstrap
    if client_id is None:
        client_id = settings.service_name if settings is not None else "loket"
    if delivery_timeout_s is None:
        delivery_timeout_s = (
            settings.kafka_delivery_timeout_s
            if settings is not None
            else DEFAULT_DELIVERY_TIMEOUT_S
        )
    mws: list[Any] = [delivery_timeout_middleware(delivery_timeout_s), *middlewares]
    if registry is not None:
        from faststream.kafka.prometheus import KafkaPrometheusMiddleware

        mws.append(
            KafkaPrometheusMiddleware(
                registry=registry, app_name=client_id, metrics_prefix="loket_kafka"
            )
        )
    kwargs: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "client_id": client_id,
        "middlewares": tuple(mws),
        "logger": logging.getLogger(f"loket.faststream.{client_id}"),
    }
    kwargs.update(overrides)
    return KafkaBroker(bootstrap, **kwargs)


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 3,
    replication_factor: int = 1,
    *,
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; existing ones are left alone.

    Returns after each topic's partitions all have a leader, so producers and
    consumers can use them immediately. Returns the names that were created.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        created: list[str] = []
        if missing:
            resp = await admin.create_topics(
                [
                    NewTopic(n, num_partitions=partitions, replication_factor=replication_factor)
                    for n in missing
                ],
                timeout_ms=int(timeout * 1000),
            )
            for err in resp.topic_errors:
                name, code = err[0], err[1]
                if code == 0:
                    created.append(name)
                elif code != _TOPIC_ALREADY_EXISTS:
                    msg = err[2] if len(err) > 2 else ""
                    raise KafkaError(f"creating topic {name!r} failed: error {code} {msg}")
        await _wait_for_leaders(admin, wanted, timeout)
        return created
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        described = await admin.describe_topics(names)
        pending = [
            t["topic"]
            for t in described
            if t.get("error_code", 0) != 0
            or not t.get("partitions")
            or any(p.get("leader", -1) < 0 for p in t["partitions"])
        ]
        if not pending:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout}s: {pending}")
        await asyncio.sleep(delay)  # broker-side state change; no event to await
        delay = min(delay * 2, 0.5)
