"""Interop with the official CloudEvents Python SDK (cloudevents 2.x, Kafka binding).

The SDK must read every event we publish (attributes and data equal), and we must read
what the SDK writes in binary content mode.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import HealthCheck, given, settings

from loket_schemas import kafka
from loket_schemas.events import Message
from loket_schemas.testing import aware_datetimes, messages
from loket_schemas.tracing import new_trace

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(message=messages(), moment=aware_datetimes())
def test_sdk_reads_what_encode_writes(message: Message, moment: datetime) -> None:
    trace = new_trace()
    record = kafka.encode(message, source=kafka.service_source("router"), trace=trace, time=moment)
    event = from_binary(
        KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value),
        JSONFormat(),
    )
    headers = record.headers_dict()
    assert event.get_specversion() == "1.0"
    assert event.get_id() == headers["ce_id"]
    assert event.get_source() == kafka.service_source("router")
    assert event.get_type() == message.EVENT_TYPE
    assert event.get_subject() == message.case_id
    assert event.get_dataschema() == kafka.schema_uri(message.EVENT_TYPE)
    assert event.get_datacontenttype() == "application/json"
    sdk_time = event.get_time()
    assert sdk_time is not None
    assert abs((sdk_time - moment).total_seconds()) < 0.001
    assert event.get_extension("partitionkey") == message.case_id
    data = event.get_data()
    assert data == json.loads(record.value)
    assert data == message.model_dump(mode="json")
    assert type(message).model_validate(data) == message


@SETTINGS
@given(message=messages(), moment=aware_datetimes())
def test_decode_reads_what_the_sdk_writes(message: Message, moment: datetime) -> None:
    event = CloudEvent(
        attributes={
            "id": "sdk-1",
            "source": "urn:nld:agency:duo:case-system",
            "type": message.EVENT_TYPE,
            "time": moment.astimezone(UTC),
            "subject": message.case_id,
            "dataschema": kafka.schema_uri(message.EVENT_TYPE),
            "datacontenttype": "application/json",
        },
        data=message.model_dump(mode="json"),
    )
    written = to_binary(event, JSONFormat(), key_mapper=lambda e: e.get_subject())
    assert set(written.headers) >= {"ce_id", "ce_type", "ce_source", "ce_specversion"}
    envelope = kafka.decode(written.value, written.headers)
    assert envelope.data == message
    assert envelope.attributes.id == "sdk-1"
    assert envelope.attributes.source == "urn:nld:agency:duo:case-system"
    assert envelope.attributes.type == message.EVENT_TYPE
    assert envelope.attributes.subject == message.case_id
    assert envelope.attributes.dataschema == kafka.schema_uri(message.EVENT_TYPE)
    assert envelope.attributes.time == moment


def test_decode_reads_a_minimal_sdk_event() -> None:
    """An agency system using the SDK with only the required attributes still gets through."""
    data = {
        "case_id": "3f2b6c1e-8a4d-4c1f-9e2a-7b5d0c9a1e42",
        "handoff_id": "ho-1",
        "agency": "duo",
        "contact": {"name": "Jeroen Bakker"},
    }
    event = CloudEvent(
        attributes={"type": "nl.loket.handoff.accept.v1", "source": "urn:nld:agency:duo"},
        data=data,
    )
    written = to_binary(event, JSONFormat())
    envelope = kafka.decode(written.value, written.headers)
    assert envelope.data.model_dump(mode="json", exclude_none=True)["contact"] == data["contact"]
    assert envelope.attributes.id == event.get_id()
