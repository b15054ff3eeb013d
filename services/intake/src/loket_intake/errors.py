"""One error hierarchy for the intake service.

Every error maps to one HTTP status and one stable ``code`` in the error body
``{"error": {"status": ..., "code": ..., "message": ..., "fields": [...]}}``.

- :class:`Retryable` (transport: Kafka or Redis did not answer): HTTP 503 with
  ``Retry-After``; the client may retry, with the same ``Idempotency-Key``.
- everything else is the client's problem (4xx) and must not be retried unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from loket_intake.domain import FieldError


class IntakeError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, fields: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.fields = list(fields)


class Retryable(IntakeError):
    status = 503
    code = "unavailable"


class PublishFailed(Retryable):
    code = "kafka_unavailable"

    def __init__(self, message: str, *, in_flight: bool = False) -> None:
        super().__init__(message)
        #: True when the record may still be delivered (the producer keeps retrying).
        self.in_flight = in_flight


class StoreUnavailable(Retryable):
    code = "redis_unavailable"


class BadRequest(IntakeError):
    status = 400
    code = "malformed_body"


class Unauthorized(IntakeError):
    status = 401
    code = "unauthorized"


class Forbidden(IntakeError):
    status = 403
    code = "forbidden"


class NotFound(IntakeError):
    status = 404
    code = "not_found"


class Conflict(IntakeError):
    status = 409
    code = "conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_key_reused"


class IdempotencyInProgress(Conflict):
    code = "idempotency_key_in_progress"


class NoConsent(Conflict):
    code = "no_consent"


class PayloadTooLarge(IntakeError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(IntakeError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(IntakeError):
    status = 422
    code = "validation_failed"
