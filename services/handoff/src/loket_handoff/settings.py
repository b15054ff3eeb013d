"""Settings of the handoff service (environment variables with prefix ``LOKET_``)."""

from __future__ import annotations

from loket_runtime.settings import BaseServiceSettings


class HandoffSettings(BaseServiceSettings):
    service_name: str = "handoff"
    port: int = 8002
