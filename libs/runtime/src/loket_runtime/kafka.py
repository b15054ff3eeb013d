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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
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


# --------------------------------------------------------------- producer replacement


def needs_new_producer(exc: BaseException) -> bool:
    """True when a publish error means the producer cannot be trusted to deliver again.

    aiokafka's idempotent producer gives every batch a sequence number when it drains it.
    A batch that then fails for good (expired while its partition had no leader after a
    broker restart, rejected by the broker, ...) leaves a gap: every later batch on that
    partition gets ``OutOfOrderSequenceNumber``, forever, and aiokafka (unlike the Java
    client) never resets the sequence or bumps the epoch. ``UnknownProducerId``,
    ``ProducerFenced``/``InvalidProducerEpoch`` and ``ProducerClosed`` are as final. So
    any Kafka error that reaches a publish, except a timeout (the record is still queued
    and may land), means: replace the producer. (Retriable errors never get here: the
    idempotent producer retries them itself.) Used by intake and handoff
    (docs/reliability.md, B3 and B4).
    """
    if isinstance(exc, KafkaTimeoutError | TimeoutError):
        return False
    return isinstance(exc, KafkaError)


async def stop_producer(producer: AIOKafkaProducer, within: float) -> None:
    """Stop a producer (flushing what it still holds), bounded by ``within`` seconds;
    a timeout or an error is logged, never raised."""
    try:
        await asyncio.wait_for(producer.stop(), within)
    except TimeoutError:
        log.error("kafka producer did not stop within %ss", within)
    except Exception as exc:
        log.warning("kafka producer stop failed: %s", type(exc).__name__)


async def start_replacement_producer(
    new_producer: Callable[[], AIOKafkaProducer],
    *,
    closed: Callable[[], bool],
    start_timeout_s: float = 10.0,
    on_failed_start: Callable[[int, BaseException], None] | None = None,
) -> tuple[AIOKafkaProducer, int] | None:
    """Start a replacement producer: ``new_producer()`` then ``start()`` (bounded by
    ``start_timeout_s``), again with back-off (0.2 s doubling to 5 s) until one starts.

    Returns the started producer and the number of attempts, or None once ``closed()``
    (shutdown; nothing left running). A cancel stops the producer being started.
    """
    delay = 0.2
    attempt = 0
    while not closed():
        attempt += 1
        new = new_producer()
        try:
            await asyncio.wait_for(new.start(), start_timeout_s)
        except asyncio.CancelledError:
            await stop_producer(new, 5.0)
            raise
        except Exception as exc:
            if on_failed_start is not None:
                on_failed_start(attempt, exc)
            await stop_producer(new, 5.0)
            await asyncio.sleep(delay)  # back-off before the next attempt
            delay = min(delay * 2, 5.0)
            continue
        if closed():
            await stop_producer(new, 5.0)
            return None
        return new, attempt
    return None
