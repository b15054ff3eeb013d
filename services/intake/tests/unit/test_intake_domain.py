"""Unit tests of intake's pure domain logic: references, tokens, validation, events."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from loket_intake import domain
from loket_intake.domain import REFERENCE_ALPHABET, FieldError, QuestionIn
from loket_schemas.events import QuestionReceived
from loket_schemas.pseudonym import is_pseudonym, pseudonymise
from loket_schemas.vocabulary import bsn_is_valid

INITIATIVE = "bibliotheek-rotterdam-centrale"
VALID_BSN = "111222333"
REF = re.compile(r"^LK-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")


def question(**extra: object) -> dict[str, object]:
    return {"channel": "balie", "initiative": INITIATIVE, "text": "Ik heb een vraag", **extra}


def errors_of(payload: object) -> list[FieldError]:
    result = domain.parse_question(payload)
    assert isinstance(result, list), result
    return result


# ----------------------------------------------------------------- references


def test_reference_alphabet_is_crockford_without_ambiguous_letters() -> None:
    assert len(REFERENCE_ALPHABET) == 32
    assert not set("ILOU") & set(REFERENCE_ALPHABET)
    assert set(REFERENCE_ALPHABET) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_references_have_the_fixed_format_and_vary() -> None:
    refs = {domain.new_reference() for _ in range(2000)}
    assert len(refs) == 2000
    for ref in refs:
        assert REF.fullmatch(ref), ref
    used = {ch for ref in refs for ch in ref[3:].replace("-", "")}
    assert used == set(REFERENCE_ALPHABET)


def test_reference_matches_the_event_schema_pattern() -> None:
    pattern = QuestionReceived.model_fields["reference"].metadata
    ref = domain.new_reference()
    assert any(getattr(m, "pattern", None) and re.fullmatch(m.pattern, ref) for m in pattern)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("LK-7F3K-92QD", "LK-7F3K-92QD"),
        ("lk-7f3k-92qd", "LK-7F3K-92QD"),
        (" lk 7f3k 92qd ", "LK-7F3K-92QD"),
        ("7F3K92QD", "LK-7F3K-92QD"),
        ("LK-OOIL-1234", "LK-0011-1234"),
        ("LK-7F3K-92Q", None),
        ("LK-7F3K-92QU", None),
        ("", None),
    ],
)
def test_normalise_reference(typed: str, expected: str | None) -> None:
    assert domain.normalise_reference(typed) == expected


def test_status_token_follows_protocol_item_6() -> None:
    key = "k" * 32
    token = domain.status_token("LK-7F3K-92QD", key)
    assert token == pseudonymise("LK-7F3K-92QD", key, domain="status-token")[4:28]
    assert re.fullmatch(r"[0-9a-f]{24}", token)
    assert domain.status_token_matches("LK-7F3K-92QD", token, key)
    assert not domain.status_token_matches("LK-7F3K-92QE", token, key)
    url = domain.status_url("http://h:8002/", "LK-7F3K-92QD", token)
    assert url == f"http://h:8002/status/LK-7F3K-92QD?token={token}"


def test_api_keys_are_sha256_and_dev_keys_cover_every_initiative() -> None:
    assert domain.hash_api_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    hashes = domain.dev_key_hashes()
    assert hashes[domain.hash_api_key(f"dev-{INITIATIVE}")] == INITIATIVE
    assert len(hashes) >= 25


# ----------------------------------------------------------------- validation


def test_valid_question_parses_and_strips() -> None:
    q = domain.parse_question(question(text="  vraag  "))
    assert isinstance(q, QuestionIn)
    assert q.text == "vraag"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_a_field_error(text: str) -> None:
    [err] = errors_of(question(text=text))
    assert (err.field, err.code) == ("text", "empty")


def test_text_longer_than_5000_is_refused_and_5000_is_fine() -> None:
    assert isinstance(domain.parse_question(question(text="a" * 5000)), QuestionIn)
    [err] = errors_of(question(text="a" * 5001))
    assert (err.field, err.code) == ("text", "too_long")


def test_unknown_initiative() -> None:
    [err] = errors_of(question(initiative="nergens"))
    assert (err.field, err.code) == ("initiative", "initiative_unknown")


@pytest.mark.parametrize(
    ("bsn", "code"),
    [
        ("123456789", "bsn_elfproef"),
        ("000000000", "bsn_elfproef"),
        ("12345678", "bsn_format"),
        ("12345678a", "bsn_format"),
        ("１１１２２２３３３", "bsn_format"),  # full-width digits
    ],
)
def test_bsn_validation_messages(bsn: str, code: str) -> None:
    [err] = errors_of(question(requester={"bsn": bsn}))
    assert err.field == "requester.bsn"
    assert err.code == code
    assert ("eleven-test" in err.message) == (code == "bsn_elfproef")
    assert ("9 digits" in err.message) == (code == "bsn_format")


def test_valid_bsn_with_spaces_is_accepted() -> None:
    assert bsn_is_valid(VALID_BSN)
    q = domain.parse_question(question(requester={"kind": "person", "bsn": "111 222 333"}))
    assert isinstance(q, QuestionIn)
    assert q.requester is not None and getattr(q.requester, "bsn", None) == VALID_BSN


def test_business_requester_needs_8_digit_kvk() -> None:
    [err] = errors_of(question(requester={"kind": "business", "kvk_number": "1234"}))
    assert (err.field, err.code) == ("requester.kvk_number", "kvk_format")
    ok = domain.parse_question(question(requester={"kind": "business", "kvk_number": "12345678"}))
    assert isinstance(ok, QuestionIn)


def test_unknown_requester_kind_and_unknown_fields() -> None:
    errs = errors_of(question(requester={"kind": "alien"}, colour="blue"))
    assert {(e.field, e.code) for e in errs} == {
        ("requester", "invalid_choice"),
        ("colour", "unknown_field"),
    }


def test_health_consent_needs_explicit() -> None:
    [err] = errors_of(question(consent={"categories": ["health"]}))
    assert (err.field, err.code) == ("consent.explicit", "consent_explicit")
    ok = domain.parse_question(question(consent={"categories": ["health"], "explicit": True}))
    assert isinstance(ok, QuestionIn)


def test_consent_must_not_be_expired_and_needs_categories() -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    [err] = errors_of(question(consent={"categories": ["income"], "expires_at": past}))
    assert (err.field, err.code) == ("consent.expires_at", "consent_expired")
    [err] = errors_of(question(consent={"categories": []}))
    assert err.field == "consent.categories"


def test_body_must_be_an_object() -> None:
    [err] = errors_of([1, 2])
    assert (err.field, err.code) == ("body", "invalid_type")


def test_body_hash_ignores_key_order_and_whitespace() -> None:
    assert domain.body_hash({"a": 1, "b": [1, 2]}) == domain.body_hash({"b": [1, 2], "a": 1})
    assert domain.body_hash({"a": 1}) != domain.body_hash({"a": 2})


# ----------------------------------------------------------------- event


def test_build_event_pseudonymises_and_carries_consent() -> None:
    q = domain.parse_question(
        question(
            requester={"bsn": VALID_BSN, "contact": {"name": "Fatima", "email": "f@example.nl"}},
            consent={"categories": ["identity", "debts", "debts"], "recipients": ["duo"]},
            urgent=True,
        )
    )
    assert isinstance(q, QuestionIn)
    now = datetime.now(UTC)
    case_id = domain.new_case_id()
    event = domain.build_event(
        q, case_id=case_id, reference="LK-7F3K-92QD", received_at=now, pseudonym_key="key"
    )
    assert event.case_id == case_id
    assert event.subject_pseudonym == pseudonymise(VALID_BSN, "key")
    assert event.subject_pseudonym is not None and is_pseudonym(event.subject_pseudonym)
    assert event.consent is not None
    assert event.consent.consent_id == domain.consent_id_for(case_id)
    assert [c.value for c in event.consent.categories] == ["identity", "debts"]
    assert event.consent.given_at == now
    assert event.urgent and event.urgency.value == "urgent"
    # the event round-trips through the strict schema
    assert QuestionReceived.model_validate_json(event.model_dump_json()) == event


def test_build_event_without_requester_has_no_pseudonym() -> None:
    q = domain.parse_question(question())
    assert isinstance(q, QuestionIn)
    event = domain.build_event(
        q,
        case_id=domain.new_case_id(),
        reference=domain.new_reference(),
        received_at=datetime.now(UTC),
        pseudonym_key="key",
    )
    assert event.requester is None and event.subject_pseudonym is None and event.consent is None


# ----------------------------------------------------------------- settings and status panel


def test_dev_keys_follow_the_dev_pseudonym_key() -> None:
    from loket_intake.settings import IntakeSettings

    assert IntakeSettings().dev_keys_enabled
    assert not IntakeSettings(pseudonym_key="a-real-secret").dev_keys_enabled
    assert IntakeSettings(pseudonym_key="a-real-secret", dev_api_keys=True).dev_keys_enabled
    assert not IntakeSettings(dev_api_keys=False).dev_keys_enabled


def test_status_panel_reads_handoffs_public_status() -> None:
    from loket_intake.desk import summarise_status

    out = summarise_status(
        "LK-7F3K-92QD",
        {
            "referentie": "LK-7F3K-92QD",
            "status": "doorgestuurd",
            "samenvatting": "Uw vraag is doorgestuurd.",
            "stappen": [{"organisatie": "DUO", "status": "doorgestuurd", "tekst": "Naar DUO."}],
        },
    )
    assert out["label"] == "Uw vraag is doorgestuurd."
    assert out["details"] == ["Naar DUO."]
    assert summarise_status("LK-7F3K-92QD", {"status": "afgerond"})["label"] == "Afgerond"
