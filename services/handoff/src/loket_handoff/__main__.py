"""Run the handoff service: ``python -m loket_handoff`` (host/port from LOKET_HOST/LOKET_PORT)."""

from __future__ import annotations

import uvicorn

from loket_handoff.app import create_app
from loket_handoff.settings import HandoffSettings
from loket_runtime.logging import configure_logging


def main() -> None:
    settings = HandoffSettings()
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
