"""Loket service runtime shared by intake, router and handoff.

- :mod:`loket_runtime.settings`: ``BaseServiceSettings`` (env prefix ``LOKET_``).
- :mod:`loket_runtime.logging`: structlog JSON logging with a bound ``trace_id``.
- :mod:`loket_runtime.health`: ``/healthz``, ``/readyz`` and ``/metrics``.
- :mod:`loket_runtime.kafka`: FastStream ``KafkaBroker`` factory and topic creation.
- :mod:`loket_runtime.testing`: pytest plugin with real Kafka/Redis fixtures.
"""

from loket_runtime.settings import BaseServiceSettings

__all__ = ["BaseServiceSettings"]
