"""Input rules found by the schemathesis fuzz tests (tests/api/test_api_fuzz_intake.py)."""

from __future__ import annotations

from typing import Any

import pytest

from loket_intake.domain import QuestionIn, parse_question

BASE = {"channel": "web", "initiative": "bibliotheek-rotterdam-centrale", "text": "Vraag"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"urgent": 0}, "urgent"),
        ({"vulnerable": "yes"}, "vulnerable"),
        ({"consent": {"categories": ["contact"], "explicit": 1}}, "consent.explicit"),
        ({"consent": {"categories": ["contact"], "expires_at": 4102444800}}, "consent.expires_at"),
    ],
)
def test_no_guessing_of_booleans_and_dates(extra: dict[str, Any], field: str) -> None:
    parsed = parse_question(BASE | extra)
    assert isinstance(parsed, list), parsed
    assert [e.field for e in parsed] == [field]


def test_json_booleans_and_rfc3339_dates_are_accepted() -> None:
    parsed = parse_question(
        BASE
        | {
            "urgent": True,
            "vulnerable": False,
            "consent": {
                "categories": ["health"],
                "explicit": True,
                "expires_at": "2099-01-01T00:00:00Z",
            },
        }
    )
    assert isinstance(parsed, QuestionIn) and parsed.urgent and parsed.consent is not None
