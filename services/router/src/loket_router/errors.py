"""The router's one error hierarchy: retryable (transport) versus poison (the message).

* :class:`RetryableError`: Kafka or Redis is (briefly) unavailable. The batch is aborted,
  the consumer seeks back to the first record of the batch and the batch is retried with
  backoff; after a bounded number of attempts the loop restarts from the last committed
  offset (a fresh consumer and transactional producer).
* :class:`PoisonMessage`: the record itself is bad (not JSON, unknown type or version,
  failed validation, missing CloudEvents headers, or data that cannot be routed). It goes
  to ``loket.dlq.v1`` as ``MessageDeadLettered`` in the same transaction as the offset
  commit, so the partition keeps flowing and the record is never lost.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


class RetryableError(RouterError):
    """A transient transport failure (Kafka, Redis): retry the batch, never dead-letter."""


class PoisonMessage(RouterError):
    """The record can never be processed: dead-letter it with this reason."""

    def __init__(self, reason: str, *, error_class: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_class = error_class or type(self).__name__


class LoopFenced(RouterError):
    """Another producer with our transactional id took over: restart the loop."""
