"""The invariant checkers on hand-made snapshots (no stack): they find what they must."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from e2e_invariants import Rec, Snapshot, check_no_bounce, check_offers

from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    CaseRouted,
    EscalationReason,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    Message,
    RouteCause,
)
from loket_schemas.kafka import decode, encode
from loket_schemas.topics import HANDOFFS
from loket_schemas.vocabulary import AgencyCode, Urgency

CASE = "28e67681-cb5c-482d-9788-c10001ff1408"
NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def rec(event: Message, offset: int) -> Rec:
    out = encode(event, source="urn:nld:loket:service:test")
    headers = tuple(out.headers)
    return Rec(
        topic=HANDOFFS,
        partition=0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=headers,
        timestamp_ms=0,
        envelope=decode(out.value, headers),
        error=None,
    )


def snap(*events: Message) -> Snapshot:
    return Snapshot(topics={HANDOFFS: [rec(e, i) for i, e in enumerate(events)]})


def routed(*agencies: AgencyCode, cause: RouteCause = RouteCause.INITIAL, **kw: Any) -> CaseRouted:
    return CaseRouted(
        case_id=CASE,
        reference="LK-HD2K-534R",
        initiative_id="bibliotheek-rotterdam-centrale",
        lead=agencies[0],
        assignments=[
            AgencyAssignment(
                agency=a,
                role=AgencyRole.LEAD if i == 0 else AgencyRole.SUPPORTING,
                reasons=["test"],
                confidence=1.0,
            )
            for i, a in enumerate(agencies)
        ],
        urgency=Urgency.NORMAL,
        cause=cause,
        routed_at=NOW,
        **kw,
    )


def offered(agency: AgencyCode, handoff_id: str) -> HandoffOffered:
    return HandoffOffered(
        case_id=CASE,
        handoff_id=handoff_id,
        agency=agency,
        occurred_at=NOW,
        role=AgencyRole.LEAD,
        initiative_id="bibliotheek-rotterdam-centrale",
        reference="LK-HD2K-534R",
        from_office="initiative:bibliotheek-rotterdam-centrale",
        urgency=Urgency.NORMAL,
        accept_due_at=NOW + timedelta(days=2),
    )


def escalated(handoff_id: str) -> HandoffEscalated:
    return HandoffEscalated(
        case_id=CASE,
        handoff_id=handoff_id,
        agency=AgencyCode.UWV,
        occurred_at=NOW,
        reason=EscalationReason.SLA,
        escalate_to=AgencyCode.MAATWERKLOKET,
    )


def test_every_assigned_agency_offered_is_fine() -> None:
    s = snap(
        routed(AgencyCode.UWV, AgencyCode.DUO),
        offered(AgencyCode.UWV, "h1"),
        offered(AgencyCode.DUO, "h2"),
    )
    assert check_offers(s) == []


def test_a_routing_without_its_offers_is_reported() -> None:
    s = snap(routed(AgencyCode.UWV, AgencyCode.DUO), offered(AgencyCode.UWV, "h1"))
    [problem] = check_offers(s)
    assert "initial routing to duo" in problem and "partition 0, offset 0" in problem


def test_an_initial_offer_must_follow_its_routing() -> None:
    s = snap(offered(AgencyCode.UWV, "h1"), routed(AgencyCode.UWV))
    assert len(check_offers(s)) == 1


def test_an_escalation_must_be_rerouted_once() -> None:
    base = (routed(AgencyCode.UWV), offered(AgencyCode.UWV, "h1"), escalated("h1"))
    reroute = routed(
        AgencyCode.MAATWERKLOKET, cause=RouteCause.ESCALATION, replaces_handoff_id="h1"
    )
    assert check_no_bounce(snap(*base, reroute, offered(AgencyCode.MAATWERKLOKET, "h2"))) == []
    [problem] = check_no_bounce(snap(*base))
    assert "escalated handoff h1 re-routed 0 times" in problem
    # and the re-routing itself must be offered
    [missing] = check_offers(snap(*base, reroute))
    assert "escalation routing to maatwerkloket" in missing


def test_a_routing_to_a_decliner_counts_as_offered_to_maatwerkloket() -> None:
    declined = HandoffDeclined(
        case_id=CASE,
        handoff_id="h1",
        agency=AgencyCode.GEMEENTE,
        occurred_at=NOW,
        reason="Niet van ons.",
        suggested_agency=AgencyCode.UWV,
        declined_by=[AgencyCode.GEMEENTE],
        decline_count=1,
    )
    back = routed(AgencyCode.GEMEENTE, cause=RouteCause.DECLINE, replaces_handoff_id="h1")
    base = (routed(AgencyCode.GEMEENTE), offered(AgencyCode.GEMEENTE, "h1"), declined, back)
    assert check_offers(snap(*base, offered(AgencyCode.MAATWERKLOKET, "h2"))) == []
    [problem] = check_offers(snap(*base))
    assert "decline routing to maatwerkloket" in problem
