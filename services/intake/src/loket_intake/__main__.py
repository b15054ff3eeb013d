"""Run the intake service: ``python -m loket_intake``.

Host/port from ``LOKET_HOST``/``LOKET_PORT``; ``LOKET_WORKERS`` > 1 starts that many
worker processes (each with its own Kafka producer and Redis pool). uvicorn uses uvloop
and httptools (both installed with loket-intake).
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from loket_intake.app import create_app
from loket_intake.settings import IntakeSettings
from loket_runtime.logging import configure_logging
from loket_runtime.process import tune_gc


def worker_app() -> FastAPI:
    """App factory for worker processes: logging configured in each process."""
    settings = IntakeSettings()
    configure_logging(settings)
    app = create_app(settings)
    tune_gc(settings.gc_threshold0)
    return app


def main() -> None:
    settings = IntakeSettings()
    configure_logging(settings)
    common: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "loop": "auto",
        "http": "auto",
    }
    if settings.workers > 1:
        uvicorn.run(
            "loket_intake.__main__:worker_app",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
    else:
        app = create_app(settings)
        tune_gc(settings.gc_threshold0)
        uvicorn.run(app, **common)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
