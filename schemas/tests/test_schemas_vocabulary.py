"""BSN and KvK checks, consent coverage, strict vs tolerant validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from loket_schemas.events import (
    CaseDelivered,
    QuestionReceived,
    UnknownFieldsError,
    validate_strict,
)
from loket_schemas.testing import bsns
from loket_schemas.vocabulary import (
    AgencyCode,
    BusinessRequester,
    ConsentRecord,
    DataCategory,
    PersonRequester,
    bsn_is_valid,
)

# ------------------------------------------------------------------ BSN and KvK


@pytest.mark.parametrize("bsn", ["111222333", "123456782", "999999990", "100000009"])
def test_valid_bsns(bsn: str) -> None:
    assert bsn_is_valid(bsn)
    assert PersonRequester(bsn=bsn).bsn == bsn


@pytest.mark.parametrize(
    "bsn",
    [
        "111222334",  # check digit off by one
        "123456789",  # fails the eleven-test
        "000000000",  # all zeros passes the arithmetic but is not a BSN
        "12345678",  # too short
        "1234567820",  # too long
        "12345678a",
        " 11122233",
        "111 222 333",
        "١١١٢٢٢٣٣٣",  # Arabic-Indic digits: digits to Python, not to the BSN
        "",
    ],
)
def test_invalid_bsns(bsn: str) -> None:
    assert not bsn_is_valid(bsn)
    with pytest.raises(ValidationError):
        PersonRequester(bsn=bsn)


@given(bsns())
def test_generated_bsns_pass_and_single_digit_changes_fail(bsn: str) -> None:
    assert bsn_is_valid(bsn)
    # The eleven-test catches every single-digit error.
    for i in range(9):
        digit = int(bsn[i])
        changed = bsn[:i] + str((digit + 1) % 10) + bsn[i + 1 :]
        assert not bsn_is_valid(changed)


@pytest.mark.parametrize("kvk", ["69599084", "12345678", "00000001"])
def test_valid_kvk_numbers(kvk: str) -> None:
    assert BusinessRequester(kvk_number=kvk).kvk_number == kvk


@pytest.mark.parametrize("kvk", ["1234567", "123456789", "1234567a", "", "１２３４５６７８"])
def test_invalid_kvk_numbers(kvk: str) -> None:
    with pytest.raises(ValidationError):
        BusinessRequester(kvk_number=kvk)


def test_requester_union_is_discriminated_by_kind() -> None:
    base: dict[str, Any] = {
        "case_id": "c-1",
        "reference": "LK-AAAA-BBBB",
        "channel": "web",
        "initiative_id": "online-loket-chat",
        "text": "Vraag",
        "received_at": "2025-03-11T09:00:00Z",
    }
    person = QuestionReceived.model_validate({**base, "requester": {"bsn": "111222333"}})
    assert isinstance(person.requester, PersonRequester)
    business = QuestionReceived.model_validate(
        {**base, "requester": {"kind": "business", "kvk_number": "69599084"}}
    )
    assert isinstance(business.requester, BusinessRequester)
    with pytest.raises(ValidationError):
        QuestionReceived.model_validate({**base, "requester": {"kind": "robot"}})
    with pytest.raises(ValidationError):
        QuestionReceived.model_validate({**base, "requester": {"kind": "business"}})


# ------------------------------------------------------------------ consent

T0 = datetime(2025, 3, 11, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=10)


def consent(**changes: Any) -> ConsentRecord:
    fields: dict[str, Any] = {
        "consent_id": "cs-1",
        "categories": [DataCategory.INCOME, DataCategory.CONTACT, DataCategory.HEALTH],
        "recipients": [AgencyCode.DUO, AgencyCode.GEMEENTE],
        "purpose": "case_handling",
        "given_at": T0,
        "expires_at": T0 + timedelta(days=180),
        "explicit": False,
    }
    return ConsentRecord(**(fields | changes))


D, G, U = AgencyCode.DUO, AgencyCode.GEMEENTE, AgencyCode.UWV
INCOME, HEALTH, DEBTS = DataCategory.INCOME, DataCategory.HEALTH, DataCategory.DEBTS


@pytest.mark.parametrize(
    ("record", "category", "recipient", "purpose", "at", "expected"),
    [
        pytest.param(consent(), INCOME, D, "case_handling", NOW, True, id="covered"),
        pytest.param(consent(), INCOME, G, "case_handling", NOW, True, id="other-recipient"),
        pytest.param(
            consent(expires_at=NOW - timedelta(seconds=1)),
            INCOME, D, "case_handling", NOW, False, id="expired",
        ),
        pytest.param(consent(expires_at=NOW), INCOME, D, "case_handling", NOW, False,
                     id="expires-exactly-now"),
        pytest.param(
            consent(withdrawn_at=NOW - timedelta(hours=1)),
            INCOME, D, "case_handling", NOW, False, id="withdrawn",
        ),
        pytest.param(
            consent(withdrawn_at=NOW + timedelta(hours=1)),
            INCOME, D, "case_handling", NOW, True, id="withdrawn-later",
        ),
        pytest.param(consent(), INCOME, D, "marketing", NOW, False, id="purpose-mismatch"),
        pytest.param(consent(), INCOME, U, "case_handling", NOW, False, id="recipient-not-covered"),
        pytest.param(consent(recipients=[]), INCOME, U, "case_handling", NOW, True,
                     id="empty-recipients-means-any"),
        pytest.param(consent(), DEBTS, D, "case_handling", NOW, False, id="category-not-listed"),
        pytest.param(consent(), HEALTH, D, "case_handling", NOW, False,
                     id="health-without-explicit"),
        pytest.param(consent(explicit=True), HEALTH, D, "case_handling", NOW, True,
                     id="health-with-explicit"),
        pytest.param(consent(), INCOME, D, "case_handling", T0 - timedelta(minutes=1), False,
                     id="before-given"),
        pytest.param(consent(expires_at=None), INCOME, D, "case_handling",
                     T0 + timedelta(days=3650), True, id="no-expiry"),
    ],
)  # fmt: skip
def test_consent_covers(
    record: ConsentRecord,
    category: DataCategory,
    recipient: AgencyCode,
    purpose: str,
    at: datetime,
    expected: bool,
) -> None:
    assert record.covers(category, recipient, purpose, at) is expected


def test_consent_needs_aware_datetimes() -> None:
    with pytest.raises(ValidationError):
        consent(given_at=datetime(2025, 3, 11, 9, 0))


# ------------------------------------------------------------------ strict vs tolerant

QUESTION: dict[str, Any] = {
    "case_id": "3f2b6c1e-8a4d-4c1f-9e2a-7b5d0c9a1e42",
    "reference": "LK-7F3K-92QD",
    "channel": "balie",
    "initiative_id": "bibliotheek-rotterdam-centrale",
    "text": "Ik moet studieschuld terugbetalen maar ben werkloos.",
    "requester": {"kind": "person", "bsn": "111222333", "contact": {"name": "S. el Amrani"}},
    "consent": {
        "consent_id": "cs-1",
        "categories": ["contact"],
        "given_at": "2025-03-11T09:41:12Z",
    },
    "attachments": [{"filename": "brief.pdf", "content_type": "application/pdf", "size_bytes": 1}],
    "received_at": "2025-03-11T09:42:03Z",
}


def test_validate_strict_accepts_known_fields() -> None:
    assert validate_strict(QuestionReceived, QUESTION) == QuestionReceived.model_validate(QUESTION)


@pytest.mark.parametrize(
    ("data", "unknown"),
    [
        ({**QUESTION, "colour": "blue"}, "colour"),
        ({**QUESTION, "requester": {**QUESTION["requester"], "iban": "NL91"}}, "requester.iban"),
        (
            {
                **QUESTION,
                "requester": {
                    **QUESTION["requester"],
                    "contact": {"name": "S. el Amrani", "fax": "1"},
                },
            },
            "requester.contact.fax",
        ),
        ({**QUESTION, "consent": {**QUESTION["consent"], "scope": "all"}}, "consent.scope"),
        (
            {**QUESTION, "attachments": [{**QUESTION["attachments"][0], "sha": "x"}]},
            "attachments[0].sha",
        ),
    ],
    ids=["top", "union-member", "nested-twice", "nested", "list-item"],
)
def test_validate_strict_rejects_unknown_fields(data: dict[str, Any], unknown: str) -> None:
    with pytest.raises(UnknownFieldsError, match=rf"\b{__import__('re').escape(unknown)}\b"):
        validate_strict(QuestionReceived, data)
    # The tolerant reader accepts the same input and ignores the extra field.
    tolerant = QuestionReceived.model_validate(data)
    assert tolerant == QuestionReceived.model_validate(QUESTION)
    assert unknown.split(".")[-1].split("[")[0] not in tolerant.model_dump_json()


def test_validate_strict_still_validates_values() -> None:
    with pytest.raises(ValidationError):
        validate_strict(QuestionReceived, {**QUESTION, "channel": "postduif"})


@given(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=5), max_size=4))
def test_tolerant_reader_ignores_any_unknown_top_level_fields(extra: dict[str, str]) -> None:
    known = set(CaseDelivered.model_fields) | set(QuestionReceived.model_fields)
    unknown = {k: v for k, v in extra.items() if k not in known}
    assert QuestionReceived.model_validate(
        {**QUESTION, **unknown}
    ) == QuestionReceived.model_validate(QUESTION)
