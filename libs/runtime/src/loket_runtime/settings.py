"""Service settings: pydantic-settings with the ``LOKET_`` environment prefix.

Every service subclasses :class:`BaseServiceSettings` and overrides ``service_name``
and ``port``. Each field maps to one environment variable, e.g. ``kafka_bootstrap`` to
``LOKET_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Development-only pseudonymisation key. NEVER use it outside a laptop or CI:
#: production must set ``LOKET_PSEUDONYM_KEY`` from a secret store.
DEV_PSEUDONYM_KEY = "dev-only-insecure-pseudonym-key-do-not-use-in-production"


class BaseServiceSettings(BaseSettings):
    """Settings every Loket service shares."""

    model_config = SettingsConfigDict(env_prefix="LOKET_", extra="ignore")

    service_name: str = "loket"
    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    #: HMAC key for pseudonymising personal identifiers. The default is for development
    #: only (see DEV_PSEUDONYM_KEY); services log a warning when it is in use.
    pseudonym_key: SecretStr = SecretStr(DEV_PSEUDONYM_KEY)
    #: Prefix for every Redis key the service writes; tests set a unique one.
    redis_key_prefix: str = "loket:"
    #: Prefix for every Kafka topic name (empty in production). Tests set a unique one
    #: (e.g. ``"t1a2b3c4d."``) so they get fresh topics on a shared broker. Always build
    #: names with :meth:`topic`.
    topic_prefix: str = ""
    #: Seconds a publish may wait for the Kafka ack before it raises KafkaTimeoutError.
    kafka_delivery_timeout_s: float = 30.0
    #: Seconds each readiness probe (Kafka, Redis) may take before /readyz says 503.
    readiness_timeout_s: float = 2.0
    #: Redis connections per process; a command waits up to ``redis_pool_timeout_s`` for
    #: a free one (then ConnectionError: 503 / retry). See ``service.redis_client``.
    redis_max_connections: int = 100
    redis_pool_timeout_s: float = 5.0
    #: CPython generation-0 GC threshold set by the service's process at start-up
    #: (``loket_runtime.process.tune_gc``); 0 keeps CPython's default (700).
    gc_threshold0: int = 10_000

    def topic(self, name: str) -> str:
        """The topic name as used on the wire: ``topic_prefix + name``."""
        return f"{self.topic_prefix}{name}"

    def redis_key(self, *parts: str) -> str:
        """A Redis key under this service's prefix: ``redis_key_prefix + ':'.join(parts)``."""
        return self.redis_key_prefix + ":".join(parts)

    @property
    def uses_dev_pseudonym_key(self) -> bool:
        return self.pseudonym_key.get_secret_value() == DEV_PSEUDONYM_KEY
