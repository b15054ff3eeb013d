"""Run the handoff service: ``python -m loket_handoff`` (host/port from LOKET_HOST/LOKET_PORT)."""

from __future__ import annotations

import uvicorn

from loket_handoff.app import create_app
from loket_handoff.settings import HandoffSettings
from loket_runtime.logging import configure_logging
from loket_runtime.process import tune_gc


def main() -> None:
    settings = HandoffSettings()
    configure_logging(settings)
    app = create_app(settings)
    tune_gc(settings.gc_threshold0)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
