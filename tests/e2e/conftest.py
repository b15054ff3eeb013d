"""Fixtures of the end-to-end tests: whole Loket stacks on their own Kafka and Redis.

The helper modules (e2e_stack, e2e_invariants, e2e_traffic) sit beside this file;
tests/fault and tests/fuzz put this folder on sys.path in their own conftest.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_stack import Stack, stack_env


@pytest.fixture(scope="module")
async def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for the tests of a module that do not break anything."""
    stack = Stack(tmp_path_factory.mktemp("stack"), extra_env=stack_env())
    async with stack:
        yield stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A fresh stack for one test (fault tests break it)."""
    async with Stack(tmp_path / "stack", extra_env=stack_env()) as s:
        yield s
