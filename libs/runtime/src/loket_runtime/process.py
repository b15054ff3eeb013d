"""Process-wide settings for a service process (called once, from its ``__main__``)."""

from __future__ import annotations

import gc


def tune_gc(threshold0: int) -> None:
    """Freeze what exists now and raise CPython's generation-0 GC threshold.

    A service allocates many short-lived objects per message or request (models, dicts,
    records), so CPython's default generation-0 threshold (700 allocations) runs a
    collection every few requests, and each older-generation collection re-scans every
    long-lived object (app, catalogs, connection pools). ``gc.freeze`` moves the start-up
    objects to a permanent generation that collections skip; a higher threshold makes
    collections rarer. Cycles are still collected, only less often. ``threshold0 <= 0``
    leaves CPython's defaults untouched.

    Only for a service's own process: never call it from a library or a test process
    (frozen objects are never collected).
    """
    if threshold0 <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold0, max(gen1, 20), max(gen2, 20))
