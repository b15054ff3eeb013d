"""Desk page (placeholder, filled in next)."""

from __future__ import annotations

from typing import Any


def install(app: Any, settings: Any, keys: Any) -> None:
    return None
