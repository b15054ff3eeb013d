"""Hypothesis fuzzing of the Kafka decode path every Loket consumer uses.

Random bytes and headers (and mutations of valid records) given to
``loket_schemas.kafka.decode`` with each consumer's ``expect`` tuple either decode to an
accepted type or raise ``DecodeError`` (poison -> DLQ), never anything else; and the
dead-letter record built from any such input is itself a valid ``MessageDeadLettered``.
The same on real Kafka, with running services, is tests/fuzz/test_fuzz_kafka_dlq.py.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loket_schemas.events import (
    AcceptHandoff,
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    DeclineHandoff,
    EscalateHandoff,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    HandoffResolved,
    HandoffResponseRejected,
    HandoffSlaBreached,
    HandoffSlaWarning,
    Message,
    MessageDeadLettered,
    QuestionReceived,
    ResolveHandoff,
)
from loket_schemas.kafka import DecodeError, decode, encode
from loket_schemas.testing import messages

# What each consumer of the protocol accepts (DESIGN.md topics table).
CONSUMERS: dict[str, tuple[type[Message], ...]] = {
    "router/questions": (QuestionReceived,),
    "router/consent": (ConsentGiven, ConsentWithdrawn),
    "router/handoffs": (
        CaseRouted,
        HandoffOffered,
        HandoffAccepted,
        HandoffDeclined,
        HandoffResolved,
        HandoffEscalated,
        HandoffSlaWarning,
        HandoffSlaBreached,
        HandoffResponseRejected,
    ),
    "handoff/responses": (AcceptHandoff, DeclineHandoff, ResolveHandoff, EscalateHandoff),
    "handoff/consent": (ConsentGiven, ConsentWithdrawn),
    "any": tuple(),
}

CE_HEADERS = (
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "content-type",
    "traceparent",
)

header_names = st.one_of(st.sampled_from(CE_HEADERS), st.text(max_size=20))
header_values = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"1.0", b"application/json", b"nl.loket.question.received.v1", b""]),
    st.text(max_size=40).map(str.encode),
)
headers_st = st.lists(st.tuples(header_names, header_values), max_size=12)
values_st = st.one_of(
    st.none(),
    st.binary(max_size=512),
    st.sampled_from([b"{}", b"[]", b"null", b'{"case_id": 1}', b"\xff\xfe", b"9" * 5000]),
)


def _check(value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
    for expect in CONSUMERS.values():
        try:
            env = decode(value, headers, expect=expect or None)
        except DecodeError:
            continue
        assert not expect or isinstance(env.data, expect)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values_st, headers=headers_st)
def test_random_records_decode_or_raise_decode_error(
    value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    _check(value, headers)


@st.composite
def mutated_records(draw: st.DrawFn) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """A valid record of any type, then one or more mutations of value and headers."""
    message = draw(messages())
    rec = encode(message, source="urn:nld:loket:service:fuzz")
    value: bytes | None = rec.value
    headers = list(rec.headers)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "drop_header", "edit_header", "type", "json"]))
        if op == "flip" and value:
            i = draw(st.integers(0, len(value) - 1))
            value = value[:i] + bytes([value[i] ^ draw(st.integers(1, 255))]) + value[i + 1 :]
        elif op == "cut" and value:
            value = value[: draw(st.integers(0, len(value)))]
        elif op == "drop_header" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif op == "edit_header" and headers:
            i = draw(st.integers(0, len(headers) - 1))
            headers[i] = (headers[i][0], draw(header_values))
        elif op == "type":
            headers = [(k, v) for k, v in headers if k != "ce_type"]
            headers.append(("ce_type", draw(st.sampled_from(CE_TYPES)).encode()))
        elif op == "json":
            value = draw(st.sampled_from([b"{}", b'{"case_id": "x"}', None, b"[1,2]"]))
    return value, headers


CE_TYPES = [
    QuestionReceived.EVENT_TYPE,
    AcceptHandoff.EVENT_TYPE,
    DeclineHandoff.EVENT_TYPE,
    CaseRouted.EVENT_TYPE,
    ConsentWithdrawn.EVENT_TYPE,
    "nl.loket.question.received.v2",
    "",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=mutated_records())
def test_mutated_valid_records_decode_or_raise_decode_error(
    record: tuple[bytes | None, list[tuple[str, bytes]]],
) -> None:
    _check(*record)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(st.none(), st.binary(max_size=100)),
    value=values_st,
    headers=headers_st,
    offset=st.integers(0, 2**40),
)
# regressions: non-ASCII letters/digits pass str.isalnum() but not the schemas' id pattern
@example(key=b"\xcf\x80", value=None, headers=[], offset=0)  # "π"
@example(key="٣".encode(), value=b"{}", headers=[], offset=1)  # Arabic-Indic digit three
@example(key=b"k" * 65, value=None, headers=[], offset=2)  # longer than an id may be
@example(key=b"", value=None, headers=[], offset=3)
async def test_handoff_dead_letter_record_is_always_valid(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], offset: int
) -> None:
    """Whatever arrives, the handoff service's DLQ record is a valid MessageDeadLettered."""
    from loket_handoff.subscribers import dead_letter

    sent: list[dict[str, Any]] = []

    class FakeDlq:
        async def publish(self, value: bytes, *, key: bytes, headers: dict[str, str]) -> None:
            sent.append({"value": value, "key": key, "headers": headers})

    raw = SimpleNamespace(key=key, value=value, headers=headers, partition=1, offset=offset)
    msg = SimpleNamespace(raw_message=raw)
    try:
        decode(value, headers)
        error: Exception = DecodeError("not expected here")
    except DecodeError as exc:
        error = exc
    await dead_letter(FakeDlq(), msg, "loket.handoff-responses.v1", error)
    [out] = sent
    env = decode(out["value"], list(out["headers"].items()), expect=(MessageDeadLettered,))
    dl = env.data
    assert dl.offset == offset
    assert dl.original_topic == "loket.handoff-responses.v1"
    if value:
        assert base64.b64decode(dl.original_value_b64 or "") == value
