"""Settings of the router service (environment variables with prefix ``LOKET_``)."""

from __future__ import annotations

from loket_runtime.settings import BaseServiceSettings


class RouterSettings(BaseServiceSettings):
    service_name: str = "router"
    port: int = 8001
