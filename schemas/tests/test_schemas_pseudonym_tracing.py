"""Keyed pseudonyms and W3C trace context."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loket_schemas.pseudonym import is_pseudonym, pseudonymise
from loket_schemas.tracing import TraceContext, new_trace, parse_traceparent

identifiers = st.text(min_size=1, max_size=40)
keys = st.binary(min_size=1, max_size=64)


@given(identifier=identifiers, key=keys)
def test_pseudonym_is_deterministic_per_key(identifier: str, key: bytes) -> None:
    first = pseudonymise(identifier, key)
    assert first == pseudonymise(identifier, key)
    assert is_pseudonym(first)


@given(identifier=identifiers, key_a=keys, key_b=keys)
def test_pseudonym_differs_across_keys(identifier: str, key_a: bytes, key_b: bytes) -> None:
    if key_a != key_b:
        assert pseudonymise(identifier, key_a) != pseudonymise(identifier, key_b)


@given(identifier=identifiers, key=keys)
def test_pseudonym_differs_across_domains(identifier: str, key: bytes) -> None:
    assert pseudonymise(identifier, key, domain="subject") != pseudonymise(
        identifier, key, domain="audit"
    )


@given(identifier=st.from_regex(r"[0-9]{8,9}", fullmatch=True), key=keys)
def test_pseudonym_never_contains_the_input(identifier: str, key: bytes) -> None:
    assert identifier not in pseudonymise(identifier, key)


def test_known_bsn_pseudonym_shape() -> None:
    value = pseudonymise("111222333", "test-key")
    assert value.startswith("ps1:") and len(value) == 52
    assert "111222333" not in value
    assert value == pseudonymise("111222333", b"test-key")
    assert value != pseudonymise("123456782", "test-key")
    assert not is_pseudonym("111222333")


@pytest.mark.parametrize(("identifier", "key"), [("", "k"), ("111222333", ""), ("1", b"")])
def test_pseudonym_rejects_empty_input(identifier: str, key: str | bytes) -> None:
    with pytest.raises(ValueError):
        pseudonymise(identifier, key)


VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_traceparent() -> None:
    context = parse_traceparent(VALID)
    assert context == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert context.traceparent == VALID
    assert parse_traceparent(f"  {VALID.upper()} ") == context


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-xbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_parse_traceparent_rejects_malformed(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_child_keeps_trace_and_changes_span() -> None:
    root = new_trace()
    child = root.child()
    assert child.trace_id == root.trace_id
    assert child.span_id != root.span_id
    assert child.flags == root.flags
    assert parse_traceparent(child.traceparent) == child
    assert new_trace().trace_id != root.trace_id


@given(st.text(max_size=80))
def test_parse_traceparent_never_raises(value: str) -> None:
    parsed = parse_traceparent(value)
    assert parsed is None or parse_traceparent(parsed.traceparent) == parsed
