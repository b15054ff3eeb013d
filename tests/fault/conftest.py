"""Fault tests run whole stacks (see tests/e2e); their helpers live in tests/e2e."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_stack import Stack, stack_env


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A fresh stack (own Kafka, own Redis, three services) for one fault test."""
    async with Stack(tmp_path / "stack", extra_env=stack_env()) as s:
        yield s
