"""Settings of the intake service (environment variables with prefix ``LOKET_``)."""

from __future__ import annotations

from loket_runtime.settings import BaseServiceSettings


class IntakeSettings(BaseServiceSettings):
    service_name: str = "intake"
    port: int = 8000
