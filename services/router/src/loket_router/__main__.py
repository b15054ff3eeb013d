"""Run the router service: ``python -m loket_router`` (host/port from LOKET_HOST/LOKET_PORT)."""

from __future__ import annotations

import uvicorn

from loket_router.app import create_app
from loket_router.service import tune_gc
from loket_router.settings import RouterSettings
from loket_runtime.logging import configure_logging


def main() -> None:
    settings = RouterSettings()
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
        loop=settings.event_loop,
    )


if __name__ == "__main__":
    main()
