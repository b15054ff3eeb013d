"""FastStream subscribers of the router: none.

The router's consumers are consume-transform-produce loops in Kafka transactions, which
FastStream does not support; they are raw aiokafka loops (loket_router.loop) started in
the app lifespan by loket_router.service. The FastStream broker of the ServiceRuntime is
only used for the Kafka readiness check.
"""

from __future__ import annotations

from loket_runtime.service import ServiceRuntime


def register(runtime: ServiceRuntime) -> None:
    """Nothing to attach: see the module docstring."""
