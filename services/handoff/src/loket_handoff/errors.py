"""One error hierarchy: retryable (transport, contention) vs poison (invalid input)."""

from __future__ import annotations


class HandoffError(Exception):
    """Base of the handoff service's errors."""


class Retryable(HandoffError):
    """A transient failure (Kafka/Redis unavailable, contention): retry the message."""


class CaseBusy(Retryable):
    """The per-case lock could not be taken in time."""


class LeaseExpired(Retryable):
    """The case lock's lease (nearly) ran out: another session may own the case now, so
    nothing loaded under the old lease may be written."""


class NotReady(Retryable):
    """The projection is being rebuilt from Kafka; try again shortly."""


class Poison(HandoffError):
    """The message is invalid and will never succeed: dead-letter it, do not retry."""
