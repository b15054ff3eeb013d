"""Property tests: every model survives JSON, and the Kafka binding survives anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from loket_schemas import kafka
from loket_schemas.catalog import CategoryPermission, Initiative, SlaNorm
from loket_schemas.events import (
    MESSAGE_TYPES,
    AgencyAssignment,
    Attachment,
    ContactPerson,
    Message,
    SharingManifest,
)
from loket_schemas.testing import aware_datetimes, messages, models
from loket_schemas.tracing import TraceContext
from loket_schemas.vocabulary import (
    BusinessRequester,
    ConsentRecord,
    ContactDetails,
    LegalBasis,
    PersonRequester,
)

FAST = settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow], deadline=None)

OTHER_MODELS: tuple[type[BaseModel], ...] = (
    LegalBasis,
    ContactDetails,
    PersonRequester,
    BusinessRequester,
    ConsentRecord,
    Attachment,
    AgencyAssignment,
    SharingManifest,
    ContactPerson,
    CategoryPermission,
    SlaNorm,
    Initiative,
)

trace_contexts = st.builds(
    TraceContext,
    trace_id=st.from_regex(r"[0-9a-f]{32}", fullmatch=True).filter(lambda t: set(t) != {"0"}),
    span_id=st.from_regex(r"[0-9a-f]{16}", fullmatch=True).filter(lambda s: set(s) != {"0"}),
    flags=st.sampled_from(["00", "01"]),
)
event_ids = st.from_regex(r"[A-Za-z0-9-]{1,40}", fullmatch=True)
sources = st.sampled_from(["intake", "router", "handoff", "agency-duo"]).map(kafka.service_source)


@pytest.mark.parametrize("cls", MESSAGE_TYPES + OTHER_MODELS, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_model_json_model_round_trip(cls: type[BaseModel], data: st.DataObject) -> None:
    model = data.draw(models(cls))
    text = model.model_dump_json()
    assert cls.model_validate_json(text) == model
    assert cls.model_validate(json.loads(text)) == model


@settings(max_examples=200, deadline=None)
@given(
    message=messages(),
    source=sources,
    trace=trace_contexts,
    event_id=event_ids,
    moment=aware_datetimes(),
)
def test_kafka_encode_decode_round_trip(
    message: Message, source: str, trace: TraceContext, event_id: str, moment: datetime
) -> None:
    record = kafka.encode(message, source=source, trace=trace, event_id=event_id, time=moment)
    assert record.key == message.case_id.encode()
    envelope = kafka.decode(record.value, record.headers)
    assert envelope.data == message
    assert type(envelope.data) is type(message)
    attributes = envelope.attributes
    assert attributes.id == event_id
    assert attributes.source == source
    assert attributes.type == message.EVENT_TYPE
    assert attributes.subject == message.case_id
    assert attributes.specversion == "1.0"
    assert attributes.datacontenttype == "application/json"
    assert attributes.dataschema == kafka.schema_uri(message.EVENT_TYPE)
    assert attributes.trace == trace
    # ce_time carries milliseconds in UTC.
    assert attributes.time.tzinfo is not None
    assert abs((attributes.time - moment).total_seconds()) < 0.001
    # Headers as a dict (FastStream) decode the same.
    assert kafka.decode(record.value, record.headers_dict()).data == message


def test_encode_without_trace_starts_one_and_defaults_time() -> None:
    message = next(iter([_some_message()]))
    record = kafka.encode(message, source=kafka.service_source("intake"))
    envelope = kafka.decode(record.value, record.headers)
    assert envelope.attributes.trace is not None
    assert (datetime.now(UTC) - envelope.attributes.time).total_seconds() < 5


def _some_message() -> Message:
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "nl.loket.handoff.accept.v1.json"
    from loket_schemas.events import AcceptHandoff

    return AcceptHandoff.model_validate_json(path.read_text())


VALID_HEADERS: dict[str, bytes] = {
    "ce_specversion": b"1.0",
    "ce_id": b"x-1",
    "ce_source": b"urn:nld:loket:service:test",
    "ce_type": b"nl.loket.handoff.accept.v1",
    "content-type": b"application/json",
}

header_names = st.one_of(
    st.sampled_from(
        [*VALID_HEADERS, "ce_time", "ce_subject", "ce_dataschema", "traceparent", "CE_TYPE"]
    ),
    st.text(max_size=12),
)
header_values = st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=40))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
record_values = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda v: v.encode(), st.text(max_size=200)),
)


@settings(max_examples=400, deadline=None)
@given(
    value=record_values,
    base=st.sampled_from([{}, VALID_HEADERS]),
    extra=st.lists(st.tuples(header_names, header_values), max_size=6),
)
def test_decode_raises_only_decode_errors(
    value: bytes | None,
    base: dict[str, bytes],
    extra: list[tuple[str, bytes | str | None]],
) -> None:
    headers: list[tuple[str, bytes | str | None]] = [*base.items(), *extra]
    try:
        kafka.decode(value, headers)
    except kafka.DecodeError:
        pass


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b'{"case_id": ' + b"9" * 5000 + b"}",
        b"\xff\xfe",
        b"null",
        b"[]",
        b"",
        None,
    ],
    ids=["deep-list", "deep-object", "huge-int", "not-utf8", "null", "array", "empty", "none"],
)
def test_decode_poison_values_are_decode_errors(value: bytes | None) -> None:
    with pytest.raises(kafka.DecodeError):
        kafka.decode(value, VALID_HEADERS)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"ce_type": None}, kafka.MissingAttribute),
        ({"ce_id": b""}, kafka.MissingAttribute),
        ({"ce_specversion": b"0.3"}, kafka.InvalidPayload),
        ({"ce_type": b"nl.loket.question.received.v9"}, kafka.UnknownEventType),
        ({"content-type": b"text/plain"}, kafka.InvalidPayload),
        ({"ce_time": b"yesterday"}, kafka.InvalidPayload),
        ({"ce_time": b"2025-03-11T09:42:03"}, kafka.InvalidPayload),
        ({"ce_subject": b"another-case"}, kafka.InvalidPayload),
        ({"ce_source": b"\xff"}, kafka.InvalidPayload),
    ],
)
def test_decode_bad_headers(change: dict[str, bytes | None], error: type[Exception]) -> None:
    record = kafka.encode(_some_message(), source=kafka.service_source("test"))
    headers = dict(record.headers)
    for name, value in change.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    with pytest.raises(error):
        kafka.decode(record.value, headers)


def test_decode_expect_limits_types() -> None:
    from loket_schemas.events import AcceptHandoff, DeclineHandoff

    record = kafka.encode(_some_message(), source=kafka.service_source("test"))
    assert kafka.decode(record.value, record.headers, expect=(AcceptHandoff,)).data
    with pytest.raises(kafka.UnknownEventType):
        kafka.decode(record.value, record.headers, expect=(DeclineHandoff,))
