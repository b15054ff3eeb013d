"""Builders for router unit tests (module name unique across packages)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from loket_schemas.events import QuestionReceived
from loket_schemas.vocabulary import (
    BusinessRequester,
    ConsentRecord,
    ContactDetails,
    DataCategory,
    PersonRequester,
)

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
BSN = "111222333"  # passes the elfproef


def consent(**kw: Any) -> ConsentRecord:
    base: dict[str, Any] = {
        "consent_id": "c-1",
        "categories": [DataCategory.QUESTION_TEXT, DataCategory.IDENTITY, DataCategory.CONTACT],
        "given_at": NOW - timedelta(hours=1),
    }
    base.update(kw)
    return ConsentRecord(**base)


def question(case_id: str = "case-1", **kw: Any) -> QuestionReceived:
    base: dict[str, Any] = {
        "case_id": case_id,
        "reference": "LK-AAAA-BBBB",
        "channel": "balie",
        "initiative_id": "bibliotheek-utrecht-neude",
        "text": "Ik heb een schuld bij de Belastingdienst en mijn toeslag is gestopt.",
        "requester": PersonRequester(
            bsn=BSN, contact=ContactDetails(name="A. Jansen", email="a@example.nl")
        ),
        "consent": consent(),
        "received_at": NOW,
    }
    base.update(kw)
    return QuestionReceived(**base)


def business_question(case_id: str = "case-b", **kw: Any) -> QuestionReceived:
    return question(
        case_id,
        requester=BusinessRequester(
            kvk_number="12345678",
            trade_name="Bakkerij Jansen",
            contact=ContactDetails(phone="0201112233"),
        ),
        **kw,
    )
