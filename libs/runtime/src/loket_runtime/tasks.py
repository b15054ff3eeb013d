"""Stopping background tasks so that a shutdown can never hang.

``task.cancel(); await task`` is not enough on Python 3.11. ``asyncio.wait_for`` there
loses a cancellation that arrives just as the awaited operation completes (CPython
gh-86296, fixed in 3.12 where ``wait_for`` is built on ``asyncio.timeout``): the task
carries on as if it had never been cancelled. redis-py (8.x) wraps every socket write in
``asyncio.wait_for`` when a socket timeout is set, and its default socket timeout is set,
so any task that talks to Redis can swallow a ``cancel()`` (measured: about one cancel in
three of a task looping on ``EXISTS`` on a busy machine). A loop like the SLA sweep then
keeps sweeping, and whoever awaits it after ``cancel()`` waits forever; this is how the
two-instance timer test hung until pytest-timeout (the second instance's shutdown awaited
its sweep task).

So every background loop of a service also checks a stop flag (it ends at its next
iteration even if a cancellation was lost), and :func:`stop_task` cancels again until the
task has ended, within a deadline, and reports a task that would not stop instead of
waiting forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: How often :func:`stop_task` repeats the cancellation of a task that is still running.
RECANCEL_S = 0.1


async def stop_task(task: asyncio.Task[Any], *, timeout_s: float = 10.0, log: Any = None) -> bool:
    """Cancel ``task`` and wait until it has ended (at most ``timeout_s``).

    Cancels again every :data:`RECANCEL_S` while the task still runs (a lost cancellation
    reaches it at its next ``await``). Returns True when the task ended; False (logged as
    ``background_task_did_not_stop``) when it still ran at the deadline. An exception the
    task ended with is logged, not raised: stopping must not fail a shutdown.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            if log is not None:
                log.error("background_task_did_not_stop", task=task.get_name(), waited_s=timeout_s)
            return False
        task.cancel()
        await asyncio.wait([task], timeout=min(RECANCEL_S, remaining))
    if not task.cancelled():
        exc = task.exception()
        if exc is not None and log is not None:
            log.warning(
                "background_task_failed",
                task=task.get_name(),
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
    return True
