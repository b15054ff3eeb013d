"""W3C Trace Context (``traceparent``) helpers, carried end to end as a Kafka header."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

TRACEPARENT_HEADER = "traceparent"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceContext:
    """A parsed ``traceparent``: trace id, the parent span id and flags."""

    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        """The header value, version 00."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace (for the next hop)."""
        return TraceContext(self.trace_id, secrets.token_hex(8), self.flags)


def new_trace() -> TraceContext:
    """Start a new trace (at the edge: intake)."""
    trace_id = secrets.token_hex(16)
    while trace_id == "0" * 32:  # pragma: no cover - astronomically unlikely
        trace_id = secrets.token_hex(16)
    return TraceContext(trace_id, secrets.token_hex(8))


def parse_traceparent(value: str | None) -> TraceContext | None:
    """Parse a ``traceparent`` header; None when absent or malformed (start a new trace then)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, flags)
