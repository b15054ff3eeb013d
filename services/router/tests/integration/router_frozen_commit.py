"""A router process that freezes inside its first question transaction (test helper).

Run as a script by ``test_router_takeover.py``: the real router (``python -m loket_router``)
with one change: once the outputs of its first question transaction are written to Kafka
(acked, not committed) the process prints ``FROZEN_IN_TRANSACTION`` and blocks for good,
its event loop included (no heartbeats, no commit, no abort), like a router that died
mid-commit. The test then kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loket_router import loop as router_loop
from loket_router.__main__ import main

_send_all = router_loop.TransactionalLoop._send_all


async def send_then_freeze(self: Any, producer: Any, result: Any) -> list[Any]:
    futures = await _send_all(self, producer, result)
    if self.name == "questions" and futures:
        await asyncio.gather(*futures)  # the records are in the partition logs
        print("FROZEN_IN_TRANSACTION", flush=True)
        time.sleep(3600)  # noqa: ASYNC251 - blocking the whole process is the point
    return futures


router_loop.TransactionalLoop._send_all = send_then_freeze  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
