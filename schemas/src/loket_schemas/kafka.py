"""The one Kafka binding: CloudEvents 1.0 in binary content mode, NL GOV profile.

Every service publishes with :func:`encode` and consumes with :func:`decode`:

* record key: the case id (UTF-8), so one case stays on one partition, in order;
* record value: the event data as JSON (``content-type: application/json``);
* headers: ``ce_specversion``, ``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``,
  ``ce_subject`` (the case id), ``ce_dataschema``, and the W3C ``traceparent``.

:func:`decode` raises a :class:`DecodeError` subclass for anything that is not a valid
Loket event; consumers treat those as poison (dead-letter them, never retry).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import ValidationError

from loket_schemas.events import REGISTRY, Message
from loket_schemas.tracing import TRACEPARENT_HEADER, TraceContext, new_trace, parse_traceparent

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
SCHEMA_URN_PREFIX = "urn:nld:loket:schema:"
SOURCE_URN_PREFIX = "urn:nld:loket:service:"

M = TypeVar("M", bound=Message)

HeaderInput = Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes | None]]


def service_source(service: str) -> str:
    """CloudEvents ``source`` of one of our services, e.g. ``urn:nld:loket:service:intake``."""
    return f"{SOURCE_URN_PREFIX}{service}"


def schema_uri(event_type: str) -> str:
    """``ce_dataschema`` for an event type: a URN naming the JSON Schema in schemas/jsonschema."""
    return f"{SCHEMA_URN_PREFIX}{event_type}"


class DecodeError(ValueError):
    """A record is not a valid Loket event (poison: dead-letter it, do not retry)."""


class MissingAttribute(DecodeError):
    """A required CloudEvents attribute header is missing or empty."""


class UnknownEventType(DecodeError):
    """``ce_type`` names no event type we know (or a version we do not read)."""


class InvalidPayload(DecodeError):
    """The value is not JSON, or does not validate against the event model."""


@dataclass(frozen=True)
class Attributes:
    """The CloudEvents context attributes of one event."""

    id: str
    source: str
    type: str
    time: datetime
    subject: str
    specversion: str = SPECVERSION
    datacontenttype: str = CONTENT_TYPE
    dataschema: str | None = None
    traceparent: str | None = None

    @property
    def trace(self) -> TraceContext | None:
        """The parsed trace context, if the record carried a valid one."""
        return parse_traceparent(self.traceparent)


@dataclass(frozen=True)
class Envelope(Generic[M]):
    """A decoded event: CloudEvents attributes plus the validated data model."""

    attributes: Attributes
    data: M


@dataclass(frozen=True)
class KafkaRecord:
    """What goes to Kafka for one event: key, value and headers (all bytes on the wire)."""

    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)

    def headers_dict(self) -> dict[str, str]:
        """Headers as ``dict[str, str]`` (FastStream's ``publish(headers=...)``)."""
        return {name: value.decode() for name, value in self.headers}

    @property
    def key_str(self) -> str:
        """The key as text (the case id)."""
        return self.key.decode()


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and millisecond precision."""
    if moment.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(
    message: Message,
    *,
    source: str,
    trace: TraceContext | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> KafkaRecord:
    """Turn a message into a Kafka record in CloudEvents binary content mode.

    ``source`` is the sending service's URN (see :func:`service_source`). ``trace`` is the
    context of the current span; a new trace starts when it is None. ``event_id`` defaults
    to a fresh UUID; pass a deterministic id to make republishing idempotent downstream.
    """
    if not message.EVENT_TYPE:
        raise TypeError(f"{type(message).__name__} has no EVENT_TYPE")
    if not source:
        raise ValueError("source must not be empty")
    context = trace or new_trace()
    headers: list[tuple[str, bytes]] = [
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", (event_id or str(uuid.uuid4())).encode()),
        ("ce_source", source.encode()),
        ("ce_type", message.EVENT_TYPE.encode()),
        ("ce_time", format_time(time or datetime.now(UTC)).encode()),
        ("ce_subject", message.subject.encode()),
        ("ce_dataschema", schema_uri(message.EVENT_TYPE).encode()),
        ("content-type", CONTENT_TYPE.encode()),
        (TRACEPARENT_HEADER, context.traceparent.encode()),
    ]
    value = message.model_dump_json(exclude_none=False).encode()
    return KafkaRecord(key=message.subject.encode(), value=value, headers=tuple(headers))


def _header_map(headers: HeaderInput | None) -> dict[str, str]:
    items: Iterable[tuple[str, str | bytes | None]]
    if headers is None:
        items = ()
    elif isinstance(headers, Mapping):
        items = headers.items()
    else:
        items = headers
    out: dict[str, str] = {}
    for name, raw in items:
        if raw is None:
            continue
        try:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as exc:
            raise InvalidPayload(f"header {name!r} is not UTF-8") from exc
        out[str(name).lower()] = text
    return out


def _parse_time(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidPayload(f"ce_time is not RFC 3339: {raw!r}") from exc
    if moment.tzinfo is None:
        raise InvalidPayload(f"ce_time has no time zone: {raw!r}")
    return moment


def decode_attributes(headers: HeaderInput | None) -> Attributes:
    """Read and check the CloudEvents attributes of a record (binary content mode)."""
    found = _header_map(headers)
    missing = [
        name for name in ("ce_specversion", "ce_id", "ce_source", "ce_type") if not found.get(name)
    ]
    if missing:
        raise MissingAttribute(f"missing CloudEvents header(s): {', '.join(missing)}")
    if found["ce_specversion"] != SPECVERSION:
        raise InvalidPayload(f"unsupported ce_specversion {found['ce_specversion']!r}")
    content_type = found.get("content-type", CONTENT_TYPE)
    if content_type.split(";")[0].strip() != CONTENT_TYPE:
        raise InvalidPayload(f"unsupported content-type {content_type!r}")
    time_raw = found.get("ce_time")
    return Attributes(
        id=found["ce_id"],
        source=found["ce_source"],
        type=found["ce_type"],
        time=_parse_time(time_raw) if time_raw else datetime.now(UTC),
        subject=found.get("ce_subject", ""),
        dataschema=found.get("ce_dataschema"),
        traceparent=found.get(TRACEPARENT_HEADER),
    )


def decode(
    value: bytes | None,
    headers: HeaderInput | None,
    *,
    expect: tuple[type[M], ...] | None = None,
) -> Envelope[M]:
    """Turn a Kafka record back into an :class:`Envelope`.

    ``expect`` limits which message classes this consumer accepts; any other type raises
    :class:`UnknownEventType`. Unknown fields in the data are ignored (tolerant reader).
    Raises a :class:`DecodeError` subclass for every kind of bad record.
    """
    attributes = decode_attributes(headers)
    cls = REGISTRY.get(attributes.type)
    if cls is None:
        raise UnknownEventType(f"unknown event type {attributes.type!r}")
    if expect is not None and cls not in expect:
        raise UnknownEventType(f"event type {attributes.type!r} is not handled here")
    if value is None:
        raise InvalidPayload("record has no value")
    try:
        payload = json.loads(value)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and ints over the digit limit;
        # RecursionError: absurdly deep nesting. All are poison, never a crash.
        raise InvalidPayload(f"value is not JSON: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidPayload("value must be a JSON object")
    try:
        data = cls.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayload(
            f"invalid {attributes.type}: {exc.error_count()} error(s): {exc}"
        ) from exc
    if attributes.subject and attributes.subject != data.subject:
        raise InvalidPayload("ce_subject does not match the case id in the data")
    return Envelope(attributes=attributes, data=data)  # type: ignore[arg-type]
