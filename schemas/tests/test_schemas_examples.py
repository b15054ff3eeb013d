"""Every message type has a realistic example that validates against model and JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from loket_schemas import generate
from loket_schemas.events import MESSAGE_TYPES, Message, validate_strict
from loket_schemas.kafka import decode, encode, service_source

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCHEMAS = generate.build_schemas()


def _example(cls: type[Message]) -> dict[str, Any]:
    data = json.loads((EXAMPLES / f"{cls.EVENT_TYPE}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_one_example_per_message_type_and_nothing_else() -> None:
    names = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert names == sorted(cls.EVENT_TYPE for cls in MESSAGE_TYPES)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.EVENT_TYPE)
def test_example_validates_against_model_strictly(cls: type[Message]) -> None:
    data = _example(cls)
    model = validate_strict(cls, data)
    again = cls.model_validate_json(model.model_dump_json())
    assert again == model


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.EVENT_TYPE)
def test_example_validates_against_json_schema(cls: type[Message]) -> None:
    schema = SCHEMAS[cls.EVENT_TYPE]
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    errors = [e.message for e in validator.iter_errors(_example(cls))]
    assert errors == []
    # What a producer actually puts on the wire validates too.
    wire = json.loads(cls.model_validate(_example(cls)).model_dump_json())
    assert [e.message for e in validator.iter_errors(wire)] == []


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.EVENT_TYPE)
def test_example_survives_the_kafka_binding(cls: type[Message]) -> None:
    model = cls.model_validate(_example(cls))
    record = encode(model, source=service_source("examples"))
    envelope = decode(record.value, record.headers)
    assert envelope.data == model
    assert envelope.attributes.type == cls.EVENT_TYPE


def test_json_schema_rejects_what_the_model_rejects() -> None:
    schema = SCHEMAS["nl.loket.question.received.v1"]
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    data = json.loads((EXAMPLES / "nl.loket.question.received.v1.json").read_text())
    for bad in (
        {**data, "channel": "postduif"},
        {**data, "reference": "lk-123"},
        {**data, "requester": {"kind": "person", "bsn": "12345"}},
        {**data, "requester": {"kind": "business", "kvk_number": "1234"}},
        {k: v for k, v in data.items() if k != "received_at"},
    ):
        assert list(validator.iter_errors(bad)), bad
