"""Kafka subscribers of the handoff service (to be filled in by the service engineers).

``register(runtime)`` is called by ``create_app`` before the broker starts. Example::

    def register(runtime: ServiceRuntime) -> None:
        @runtime.broker.subscriber(runtime.topic(topics.QUESTIONS), group_id="loket-handoff")
        async def on_question(body: dict, msg: KafkaMessage) -> None: ...
"""

from __future__ import annotations

from loket_runtime.service import ServiceRuntime


def register(runtime: ServiceRuntime) -> None:
    """Attach this service's subscribers and publishers to ``runtime.broker``."""
