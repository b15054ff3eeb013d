"""Run the intake service: ``python -m loket_intake`` (host/port from LOKET_HOST/LOKET_PORT)."""

from __future__ import annotations

import uvicorn

from loket_intake.app import create_app
from loket_intake.settings import IntakeSettings
from loket_runtime.logging import configure_logging


def main() -> None:
    settings = IntakeSettings()
    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
