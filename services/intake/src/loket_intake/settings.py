"""Settings of the intake service (environment variables with prefix ``LOKET_``).

API keys: ``LOKET_API_KEYS`` is a JSON object mapping the sha256 hex digest of a key to the
initiative it belongs to, e.g. ``{"9f86d0...": "bibliotheek-rotterdam-centrale"}``.
The deterministic development keys ``dev-<initiative-id>`` are accepted (and the desk page
submits with them) only while the development pseudonym key is in use (``make up``, tests),
or when ``LOKET_DEV_API_KEYS=true``; ``LOKET_DEV_API_KEYS=false`` turns them off.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from loket_runtime.settings import BaseServiceSettings


class IntakeSettings(BaseServiceSettings):
    service_name: str = "intake"
    port: int = 8000
    #: uvicorn worker processes (``python -m loket_intake``).
    workers: int = 1
    #: Base URL of the handoff service as people's browsers reach it (status links).
    handoff_public_url: str = "http://127.0.0.1:8002"
    #: Base URL intake itself uses to ask handoff for a case status (desk status panel);
    #: empty = ``handoff_public_url``.
    handoff_internal_url: str = ""
    #: sha256(key) hex -> initiative id.
    api_keys: dict[str, str] = Field(default_factory=dict)
    #: Accept ``dev-<initiative-id>`` keys and let the desk page use them. None (default):
    #: only while the development pseudonym key is in use (``make up``, tests), like handoff.
    dev_api_keys: bool | None = None
    #: Max. body sizes, checked while reading, before parsing.
    max_json_bytes: int = 64 * 1024
    max_email_bytes: int = 1024 * 1024
    #: Upper bound for one Kafka publish (acks=all) before the request answers 503.
    publish_timeout_s: float = 10.0
    #: aiokafka request timeout (also bounds delivery of a produced batch).
    kafka_request_timeout_ms: int = 8000
    #: aiokafka producer linger. 0: a record is sent at once (aiokafka still batches what
    #: queues while a produce request is in flight). 2 ms cost every question 2 ms of
    #: latency for no measurable CPU gain (bench 2026-12-03).
    kafka_linger_ms: int = 0
    #: Retry-After seconds sent with a 503.
    retry_after_s: int = 5
    #: How long a request with an Idempotency-Key in flight elsewhere waits before 409.
    idempotency_wait_s: float = 2.0
    #: Lease of a request on its Idempotency-Key: after a crash, a retry with the key
    #: resumes the case once the lease ran out. Must exceed ``publish_timeout_s``.
    idempotency_lease_s: float = 15.0
    #: Upper bound for starting a replacement Kafka producer (one attempt).
    producer_start_timeout_s: float = 10.0

    @model_validator(mode="after")
    def _lease_outlives_publish(self) -> IntakeSettings:
        if self.idempotency_lease_s <= self.publish_timeout_s:
            raise ValueError(
                "idempotency_lease_s must be longer than publish_timeout_s "
                f"({self.idempotency_lease_s} <= {self.publish_timeout_s})"
            )
        return self

    @property
    def dev_keys_enabled(self) -> bool:
        if self.dev_api_keys is None:
            return self.uses_dev_pseudonym_key
        return self.dev_api_keys

    @property
    def status_base_url(self) -> str:
        return (self.handoff_internal_url or self.handoff_public_url).rstrip("/")
