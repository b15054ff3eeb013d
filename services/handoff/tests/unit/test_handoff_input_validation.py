"""Input rules found by the schemathesis fuzz tests (tests/api/test_api_fuzz_handoff.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from handoff_harness import T0, Harness, routed
from pydantic import ValidationError

from loket_handoff.api import AcceptBody
from loket_handoff.domain import Accepted, HandoffState, Rejected, RejectionKind
from loket_schemas.events import AcceptHandoff, ContactPerson
from loket_schemas.vocabulary import AgencyCode


def accept_by(handoff_id: str, expected_by: datetime) -> AcceptHandoff:
    return AcceptHandoff(
        case_id="case-1",
        handoff_id=handoff_id,
        agency=AgencyCode.UWV,
        contact=ContactPerson(name="Anna"),
        expected_by=expected_by,
    )


def test_expected_by_before_the_offer_is_refused_and_changes_nothing() -> None:
    # year 3 used to be stored, then every read of the handoff failed (HTTP 500)
    h = Harness()
    (offer,) = h.route(routed())
    for bad in (datetime(3, 1, 1, tzinfo=UTC), T0 - timedelta(seconds=1)):
        decision = h.command(accept_by(offer.handoff_id, bad))
        assert isinstance(decision, Rejected) and decision.kind is RejectionKind.INVALID
        assert "expected_by" in decision.reason
    assert h.projection.handoffs[offer.handoff_id].state is HandoffState.OFFERED
    ok = h.command(accept_by(offer.handoff_id, T0 + timedelta(days=5)))
    assert isinstance(ok, Accepted) and ok.events


@pytest.mark.parametrize("value", [0, 1700000000, 1.5, True])
def test_accept_body_expected_by_is_a_date_time_string_not_a_number(value: object) -> None:
    with pytest.raises(ValidationError):
        AcceptBody.model_validate({"contact": {"name": "Anna"}, "expected_by": value})
    body = AcceptBody.model_validate(
        {"contact": {"name": "Anna"}, "expected_by": "2030-01-01T00:00:00Z"}
    )
    assert body.expected_by == datetime(2030, 1, 1, tzinfo=UTC)
