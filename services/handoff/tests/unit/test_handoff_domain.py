"""The handoff state machine and case rules (pure domain)."""

from __future__ import annotations

from datetime import timedelta

from handoff_harness import T0, Harness, routed

from loket_handoff.domain import (
    OPERATOR,
    Accepted,
    HandoffState,
    Rejected,
    RejectionKind,
    agency_owner,
    handoff_id_for,
    initiative_owner,
)
from loket_schemas.events import (
    AcceptHandoff,
    AgencyRole,
    ContactPerson,
    DeclineHandoff,
    EscalateHandoff,
    EscalationReason,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    HandoffResolved,
    HandoffSlaBreached,
    HandoffSlaWarning,
    ResolveHandoff,
    SlaKind,
)
from loket_schemas.vocabulary import AgencyCode, Urgency

ANNA = ContactPerson(name="Anna de Vries", email="anna@uwv.example")


def accept(h: HandoffOffered | str, agency: AgencyCode = AgencyCode.UWV, name: str = "Anna"):
    hid = h if isinstance(h, str) else h.handoff_id
    return AcceptHandoff(
        case_id="case-1", handoff_id=hid, agency=agency, contact=ContactPerson(name=name)
    )


def decline(hid: str, agency: AgencyCode, suggested: AgencyCode = AgencyCode.SVB):
    return DeclineHandoff(
        case_id="case-1",
        handoff_id=hid,
        agency=agency,
        reason="not our task",
        suggested_agency=suggested,
    )


def test_routing_opens_one_deterministic_handoff_per_assignment() -> None:
    h = Harness()
    offers = h.route(routed(supporting=(AgencyCode.GEMEENTE,)))
    assert [o.agency for o in offers] == [AgencyCode.UWV, AgencyCode.GEMEENTE]
    assert offers[0].handoff_id == handoff_id_for("case-1", AgencyCode.UWV, 0)
    assert offers[0].role is AgencyRole.LEAD
    assert offers[0].from_office == initiative_owner("bibliotheek-rotterdam-centrale")
    # normal urgency at UWV: 16 business hours from Monday 09:00 UTC (10:00 local)
    assert offers[0].accept_due_at == T0 + timedelta(days=2)
    # replaying the same routing opens nothing (same route seq, ids exist)
    h.route_seq = 0
    assert h.route(routed(supporting=(AgencyCode.GEMEENTE,))) == []


def test_accept_moves_ownership_only_for_the_lead() -> None:
    h = Harness()
    lead, support = h.route(routed(supporting=(AgencyCode.GEMEENTE,)))
    case = h.projection.case
    assert case is not None and case.owner == initiative_owner(case.initiative_id)
    assert isinstance(h.command(accept(support, AgencyCode.GEMEENTE)), Accepted)
    assert h.projection.case.owner == initiative_owner(case.initiative_id)  # type: ignore[union-attr]
    decision = h.command(accept(lead))
    assert isinstance(decision, Accepted)
    (event,) = decision.events
    assert isinstance(event, HandoffAccepted) and event.resolve_due_at is not None
    assert h.projection.case.owner == agency_owner(AgencyCode.UWV)  # type: ignore[union-attr]
    assert h.projection.handoffs[lead.handoff_id].state is HandoffState.ACCEPTED


def test_duplicate_accept_is_a_noop_and_other_contact_is_a_conflict() -> None:
    h = Harness()
    (offer,) = h.route(routed())
    h.command(accept(offer))
    again = h.command(accept(offer))
    assert isinstance(again, Accepted) and again.duplicate
    other = h.command(accept(offer, name="Bob"))
    assert isinstance(other, Rejected) and other.kind is RejectionKind.CONFLICT
    assert "accepted" in other.reason


def test_only_the_addressee_may_respond() -> None:
    h = Harness()
    (offer,) = h.route(routed())
    wrong = h.command(accept(offer, AgencyCode.SVB))
    assert isinstance(wrong, Rejected) and wrong.kind is RejectionKind.FORBIDDEN
    spoof = h.command(accept(offer), actor="svb")
    assert isinstance(spoof, Rejected) and spoof.kind is RejectionKind.FORBIDDEN
    unknown = h.command(accept("nope"))
    assert isinstance(unknown, Rejected) and unknown.kind is RejectionKind.NOT_FOUND
    assert h.projection.handoffs[offer.handoff_id].state is HandoffState.OFFERED


def test_illegal_transitions_change_nothing() -> None:
    h = Harness()
    (offer,) = h.route(routed())
    r = h.command(
        ResolveHandoff(case_id="case-1", handoff_id=offer.handoff_id, agency=AgencyCode.UWV)
    )
    assert isinstance(r, Rejected) and r.kind is RejectionKind.CONFLICT
    h.command(accept(offer))
    before = h.projection.handoffs[offer.handoff_id]
    d = h.command(decline(offer.handoff_id, AgencyCode.UWV))
    assert isinstance(d, Rejected) and d.kind is RejectionKind.CONFLICT
    assert h.projection.handoffs[offer.handoff_id] == before
    resolved = h.command(
        ResolveHandoff(
            case_id="case-1", handoff_id=offer.handoff_id, agency=AgencyCode.UWV, summary="ok"
        )
    )
    assert isinstance(resolved, Accepted)
    assert isinstance(resolved.events[0], HandoffResolved)
    again = h.command(
        ResolveHandoff(
            case_id="case-1", handoff_id=offer.handoff_id, agency=AgencyCode.UWV, summary="ok"
        )
    )
    assert isinstance(again, Accepted) and again.duplicate
    assert isinstance(h.command(accept(offer, name="Anna")), Rejected)


def test_decline_validation() -> None:
    h = Harness()
    (offer,) = h.route(routed())
    blank = h.command(
        DeclineHandoff(
            case_id="case-1",
            handoff_id=offer.handoff_id,
            agency=AgencyCode.UWV,
            reason="   ",
            suggested_agency=AgencyCode.SVB,
        )
    )
    assert isinstance(blank, Rejected) and blank.kind is RejectionKind.INVALID
    itself = h.command(decline(offer.handoff_id, AgencyCode.UWV, suggested=AgencyCode.UWV))
    assert isinstance(itself, Rejected) and itself.kind is RejectionKind.INVALID


def test_decline_reroutes_and_second_decline_escalates() -> None:
    h = Harness()
    (first,) = h.route(routed())
    d1 = h.command(decline(first.handoff_id, AgencyCode.UWV, AgencyCode.SVB))
    assert isinstance(d1, Accepted)
    (declined,) = d1.events
    assert isinstance(declined, HandoffDeclined)
    assert declined.decline_count == 1 and declined.declined_by == [AgencyCode.UWV]
    second = h.projection.open_for(AgencyCode.SVB)
    assert second is not None and second.role is AgencyRole.LEAD
    # the duplicate decline is a no-op
    dup = h.command(decline(first.handoff_id, AgencyCode.UWV, AgencyCode.SVB))
    assert isinstance(dup, Accepted) and dup.duplicate
    # SVB declines suggesting UWV (which already declined): bounce limit -> escalated
    d2 = h.command(decline(second.handoff_id, AgencyCode.SVB, AgencyCode.UWV))
    assert isinstance(d2, Accepted)
    assert [type(e) for e in d2.events] == [HandoffDeclined, HandoffEscalated]
    esc = d2.events[1]
    assert isinstance(esc, HandoffEscalated) and esc.reason is EscalationReason.BOUNCE_LIMIT
    mw = h.projection.open_for(AgencyCode.MAATWERKLOKET)
    assert mw is not None
    assert h.projection.open_for(AgencyCode.UWV) is None
    # maatwerkloket cannot decline
    no = h.command(decline(mw.handoff_id, AgencyCode.MAATWERKLOKET, AgencyCode.UWV))
    assert isinstance(no, Rejected) and no.kind is RejectionKind.CONFLICT
    assert "escalate" in no.reason
    assert isinstance(h.command(accept(mw.handoff_id, AgencyCode.MAATWERKLOKET)), Accepted)
    assert h.projection.case.owner == agency_owner(AgencyCode.MAATWERKLOKET)  # type: ignore[union-attr]


def test_never_offered_again_to_an_office_that_declined() -> None:
    h = Harness()
    (first,) = h.route(routed())
    h.command(decline(first.handoff_id, AgencyCode.UWV, AgencyCode.SVB))
    # a (misbehaving) router offers UWV again: it goes to maatwerkloket instead
    offers = h.route(routed(lead=AgencyCode.UWV))
    assert [o.agency for o in offers] == [AgencyCode.MAATWERKLOKET]


def test_manual_escalation_by_operator_and_maatwerkloket() -> None:
    h = Harness()
    (offer,) = h.route(routed())
    cmd = EscalateHandoff(
        case_id="case-1", handoff_id=offer.handoff_id, agency=AgencyCode.UWV, note="stuck"
    )
    assert isinstance(h.command(cmd, actor="svb"), Rejected)
    decision = h.command(cmd, actor=OPERATOR)
    assert isinstance(decision, Accepted)
    (event,) = decision.events
    assert isinstance(event, HandoffEscalated) and event.reason is EscalationReason.MANUAL
    again = h.command(cmd, actor=OPERATOR)
    assert isinstance(again, Accepted) and again.duplicate
    mw = h.projection.open_for(AgencyCode.MAATWERKLOKET)
    assert mw is not None
    own = EscalateHandoff(
        case_id="case-1", handoff_id=mw.handoff_id, agency=AgencyCode.MAATWERKLOKET
    )
    refused = h.command(own)
    assert isinstance(refused, Rejected) and refused.kind is RejectionKind.CONFLICT


def test_sla_warning_breach_and_escalation() -> None:
    h = Harness()
    (offer,) = h.route(routed())
    handoff = h.projection.handoffs[offer.handoff_id]
    assert handoff.next_timer() == handoff.accept_warn_at
    assert h.tick(handoff.accept_warn_at - timedelta(seconds=1)) == []
    (warning,) = h.tick(handoff.accept_warn_at)
    assert isinstance(warning, HandoffSlaWarning) and warning.sla is SlaKind.ACCEPT
    assert h.tick(handoff.accept_warn_at + timedelta(minutes=1)) == []  # fires once
    assert h.projection.handoffs[offer.handoff_id].next_timer() == offer.accept_due_at
    breach, escalation = h.tick(offer.accept_due_at)
    assert isinstance(breach, HandoffSlaBreached)
    assert isinstance(escalation, HandoffEscalated) and escalation.reason is EscalationReason.SLA
    assert h.projection.handoffs[offer.handoff_id].state is HandoffState.ESCALATED
    mw = h.projection.open_for(AgencyCode.MAATWERKLOKET)
    assert mw is not None
    # maatwerkloket's own breach does not escalate further (its warning, never fired
    # because the clock jumped past both, comes first)
    fired = h.tick(mw.accept_due_at + timedelta(days=30))
    assert [type(e) for e in fired] == [HandoffSlaWarning, HandoffSlaBreached]
    assert h.projection.handoffs[mw.handoff_id].next_timer() is None


def test_a_warning_that_fell_due_unnoticed_comes_right_before_the_breach_once() -> None:
    # e.g. handoff was down (or Redis was being rebuilt) over both the 75% and 100% points
    h = Harness()
    (offer,) = h.route(routed())
    fired = h.tick(offer.accept_due_at + timedelta(minutes=5))
    assert [type(e) for e in fired] == [HandoffSlaWarning, HandoffSlaBreached, HandoffEscalated]
    warning, breach, _ = fired
    assert isinstance(warning, HandoffSlaWarning) and isinstance(breach, HandoffSlaBreached)
    assert warning.due_at == breach.due_at == offer.accept_due_at
    later = h.tick(offer.accept_due_at + timedelta(days=1))  # (maatwerkloket's fire now)
    assert [e for e in later if e.handoff_id == offer.handoff_id] == []  # each fired once
    handoff = h.projection.handoffs[offer.handoff_id]
    assert handoff.warned and handoff.breached and handoff.next_timer() is None


def test_resolve_sla_breach_does_not_escalate() -> None:
    h = Harness()
    (offer,) = h.route(routed(urgency=Urgency.URGENT))
    h.command(accept(offer))
    handoff = h.projection.handoffs[offer.handoff_id]
    assert handoff.resolve_due_at is not None
    fired = h.tick(handoff.resolve_due_at)
    assert [type(e) for e in fired] == [HandoffSlaWarning, HandoffSlaBreached]
    assert h.projection.handoffs[offer.handoff_id].state is HandoffState.ACCEPTED
