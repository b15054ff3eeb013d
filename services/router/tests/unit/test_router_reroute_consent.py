"""Re-route target choice and consent withdrawal (pure domain)."""

from __future__ import annotations

from typing import Any

from router_factories import NOW

from loket_router import domain
from loket_schemas.events import (
    AgencyRole,
    EscalationReason,
    HandoffDeclined,
    HandoffEscalated,
    RouteCause,
)
from loket_schemas.vocabulary import AgencyCode, DataCategory

A = AgencyCode
C = DataCategory


def declined(**kw: Any) -> HandoffDeclined:
    base: dict[str, Any] = {
        "case_id": "case-1",
        "handoff_id": "h-1",
        "agency": A.UWV,
        "occurred_at": NOW,
        "reason": "niet onze taak",
        "suggested_agency": A.SVB,
        "declined_by": [A.UWV],
        "decline_count": 1,
    }
    base.update(kw)
    return HandoffDeclined(**base)


def test_decline_goes_to_suggested_agency_with_replaced_role() -> None:
    rr = domain.reroute_target(declined(), {A.UWV, A.DUO}, {A.UWV: AgencyRole.SUPPORTING})
    assert rr is not None
    assert (rr.target, rr.role, rr.cause) == (A.SVB, AgencyRole.SUPPORTING, RouteCause.DECLINE)
    assert rr.replaces_handoff_id == "h-1" and not rr.redirected


def test_decline_to_an_agency_that_declined_before_goes_to_maatwerkloket() -> None:
    ev = declined(agency=A.SVB, suggested_agency=A.UWV, declined_by=[A.UWV, A.SVB])
    rr = domain.reroute_target(ev, {A.UWV, A.SVB}, {A.SVB: AgencyRole.LEAD})
    assert rr is not None and rr.target == A.MAATWERKLOKET and rr.redirected
    assert rr.role == AgencyRole.LEAD


def test_decline_to_an_agency_already_handling_goes_to_maatwerkloket() -> None:
    rr = domain.reroute_target(declined(suggested_agency=A.DUO), {A.UWV, A.DUO})
    assert rr is not None and rr.target == A.MAATWERKLOKET


def test_decline_suggesting_itself_goes_to_maatwerkloket() -> None:
    rr = domain.reroute_target(declined(suggested_agency=A.UWV), {A.UWV})
    assert rr is not None and rr.target == A.MAATWERKLOKET


def test_second_decline_waits_for_the_escalation() -> None:
    assert (
        domain.reroute_target(declined(decline_count=2, declined_by=[A.DUO, A.UWV]), set()) is None
    )


def test_escalation_goes_to_escalate_to_keeping_the_role() -> None:
    ev = HandoffEscalated(
        case_id="case-1",
        handoff_id="h-2",
        agency=A.UWV,
        occurred_at=NOW,
        reason=EscalationReason.SLA,
    )
    rr = domain.reroute_target(ev, {A.UWV}, {A.UWV: AgencyRole.SUPPORTING})
    assert rr is not None
    assert (rr.target, rr.role, rr.cause) == (
        A.MAATWERKLOKET,
        AgencyRole.SUPPORTING,
        RouteCause.ESCALATION,
    )


def test_unknown_role_defaults_to_lead() -> None:
    rr = domain.reroute_target(declined(), set(), {})
    assert rr is not None and rr.role == AgencyRole.LEAD


SHARES = [
    domain.ConsentShare(A.BELASTINGDIENST, "c-1", frozenset({C.QUESTION_TEXT})),
    domain.ConsentShare(A.RIJKSWATERSTAAT, "c-1", frozenset({C.QUESTION_TEXT, C.IDENTITY})),
    domain.ConsentShare(A.DUO, "c-2", frozenset({C.QUESTION_TEXT})),
]


def test_withdrawal_requests_erasure_from_every_agency_on_that_consent() -> None:
    reqs = domain.erasure_requests("case-1", domain.Withdrawal("c-1"), SHARES, at=NOW)
    assert [(r.agency, r.categories) for r in reqs] == [
        (A.BELASTINGDIENST, [C.QUESTION_TEXT]),
        (A.RIJKSWATERSTAAT, [C.IDENTITY, C.QUESTION_TEXT]),
    ]
    assert all(r.consent_id == "c-1" and r.case_id == "case-1" for r in reqs)


def test_partial_withdrawal_erases_only_those_categories() -> None:
    w = domain.Withdrawal("c-1", frozenset({C.IDENTITY}))
    reqs = domain.erasure_requests("case-1", w, SHARES, at=NOW)
    assert [(r.agency, r.categories) for r in reqs] == [(A.RIJKSWATERSTAAT, [C.IDENTITY])]


def test_withdrawal_of_unused_consent_requests_nothing() -> None:
    assert domain.erasure_requests("case-1", domain.Withdrawal("c-9"), SHARES, at=NOW) == []


def test_merge_withdrawals() -> None:
    merged = domain.merge_withdrawals(
        [
            domain.Withdrawal("c-1", frozenset({C.IDENTITY})),
            domain.Withdrawal("c-1", frozenset({C.CONTACT})),
            domain.Withdrawal("c-2", frozenset({C.IDENTITY})),
            domain.Withdrawal("c-2"),
        ]
    )
    assert merged["c-1"].categories == {C.IDENTITY, C.CONTACT}
    assert merged["c-2"].categories == frozenset()
