"""Settings of the handoff service (environment variables with prefix ``LOKET_``)."""

from __future__ import annotations

import hashlib

from pydantic import Field

from loket_runtime.settings import BaseServiceSettings

DEV_KEY_PREFIX = "dev-"


def hash_key(key: str) -> str:
    """sha256 hex of an API key (keys are stored hashed, never in clear)."""
    return hashlib.sha256(key.encode()).hexdigest()


class HandoffSettings(BaseServiceSettings):
    service_name: str = "handoff"
    port: int = 8002
    redis_key_prefix: str = "loket:handoff:"
    #: Public base URL of this service (status links).
    handoff_public_url: str = "http://127.0.0.1:8002"
    #: Agency API keys: sha256 hex of the key -> agency code (``LOKET_HANDOFF_API_KEYS``
    #: as JSON, e.g. ``{"9f86d0...": "uwv"}``).
    handoff_api_keys: dict[str, str] = Field(default_factory=dict)
    #: sha256 hex of operator keys (may escalate any handoff, read every case).
    handoff_operator_keys: list[str] = Field(default_factory=list)
    #: sha256 hex of intake/desk keys (read case timelines).
    handoff_desk_keys: list[str] = Field(default_factory=list)
    #: Development only: accept ``dev-<agencycode>``, ``dev-operator`` and ``dev-desk``.
    #: Unset: on exactly when the development pseudonym key is in use (``make up``), so a
    #: production deployment (which must set LOKET_PSEUDONYM_KEY) never accepts them.
    handoff_dev_keys: bool | None = None
    #: SLA time scale: 1 = real business hours; N > 1 = SLA hours pass N times faster on
    #: the wall clock (demo: 3600 makes one SLA hour last one second).
    handoff_time_scale: float = Field(default=1.0, gt=0)
    #: How often the SLA timer sweep runs (seconds) and how many timers one sweep claims.
    handoff_timer_interval_s: float = Field(default=1.0, gt=0)
    handoff_timer_batch: int = Field(default=500, ge=1)
    #: Lease of a claimed timer: if the instance dies, the timer returns after this.
    handoff_timer_lease_s: float = Field(default=30.0, gt=0)
    #: Run the SLA timer sweep in this instance (all instances may: claims are atomic).
    handoff_timers_enabled: bool = True
    #: Consumer group of this service.
    handoff_group_id: str = "loket-handoff"
    #: Records per consumed batch (one offset commit per batch).
    handoff_batch_max_records: int = Field(default=500, ge=1)
    #: Fetch batching of the consumer: the broker answers a fetch once this many bytes
    #: are there or after the wait, so at moderate load a batch carries more records and
    #: the service wakes up, locks, writes and commits less often (an offer appears up to
    #: this many ms later; docs/benchmarks.md, 2026-12-04). 1 byte: every record at once.
    handoff_fetch_min_bytes: int = Field(default=65536, ge=1)
    handoff_fetch_max_wait_ms: int = Field(default=25, ge=0)
    #: Cases of a batch whose lock is held elsewhere, handled concurrently in their own
    #: sessions (each waits for its lock; the batch session runs the others together).
    handoff_concurrency: int = Field(default=64, ge=1)

    def key_hashes(self) -> dict[str, str]:
        """sha256 -> principal: an agency code, ``operator`` or ``desk``."""
        table = {h.lower(): code for h, code in self.handoff_api_keys.items()}
        for h in self.handoff_operator_keys:
            table[h.lower()] = "operator"
        for h in self.handoff_desk_keys:
            table[h.lower()] = "desk"
        dev = (
            self.uses_dev_pseudonym_key if self.handoff_dev_keys is None else self.handoff_dev_keys
        )
        if dev:
            from loket_schemas.vocabulary import AgencyCode

            for code in AgencyCode:
                table[hash_key(f"{DEV_KEY_PREFIX}{code.value}")] = code.value
            table[hash_key(f"{DEV_KEY_PREFIX}operator")] = "operator"
            table[hash_key(f"{DEV_KEY_PREFIX}desk")] = "desk"
        return table
