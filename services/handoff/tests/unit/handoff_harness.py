"""An in-memory case harness for unit tests: pure domain + a protocol-following fake router."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from loket_handoff.businesshours import BusinessCalendar
from loket_handoff.domain import (
    BOUNCE_LIMIT,
    ESCALATION_POINT,
    Accepted,
    Decision,
    Projection,
    decide_command,
    decide_routing,
    decide_timer,
    evolve,
)
from loket_schemas.catalog import load_agencies
from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    CaseRouted,
    HandoffCommand,
    HandoffDeclined,
    HandoffEscalated,
    HandoffEvent,
    RouteCause,
)
from loket_schemas.vocabulary import AgencyCode, Urgency

CATALOG = load_agencies()
CALENDAR = BusinessCalendar()
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def routed(
    case_id: str = "case-1",
    lead: AgencyCode = AgencyCode.UWV,
    supporting: tuple[AgencyCode, ...] = (),
    *,
    cause: RouteCause = RouteCause.INITIAL,
    replaces: str | None = None,
    urgency: Urgency = Urgency.NORMAL,
) -> CaseRouted:
    assignments = [AgencyAssignment(agency=lead, role=AgencyRole.LEAD, confidence=0.9)]
    assignments += [
        AgencyAssignment(agency=a, role=AgencyRole.SUPPORTING, confidence=0.7) for a in supporting
    ]
    return CaseRouted(
        case_id=case_id,
        reference="LK-AAAA-BBBB",
        initiative_id="bibliotheek-rotterdam-centrale",
        lead=lead,
        assignments=assignments,
        urgency=urgency,
        cause=cause,
        replaces_handoff_id=replaces,
        routed_at=T0,
    )


@dataclass
class Harness:
    """One case: routes, decides, applies, and plays the router's re-routing rules."""

    now: datetime = T0
    projection: Projection = field(default_factory=Projection)
    log: list[CaseRouted | HandoffEvent] = field(default_factory=list)
    route_seq: int = 0

    def route(self, event: CaseRouted) -> list[HandoffEvent]:
        self.log.append(event)
        evolve(self.projection, event, CALENDAR)
        seq = self.route_seq
        self.route_seq += 1
        offers = decide_routing(
            self.projection.case,
            list(self.projection.handoffs.values()),
            event,
            route_seq=seq,
            now=self.now,
            catalog=CATALOG,
            calendar=CALENDAR,
        )
        self.apply(offers)
        return list(offers)

    def apply(self, events: list[HandoffEvent] | tuple[HandoffEvent, ...]) -> None:
        for event in events:
            self.log.append(event)
            evolve(self.projection, event, CALENDAR)
        for event in events:
            self._router_reacts(event)

    def command(self, command: HandoffCommand, actor: str | None = None) -> Decision:
        handoff = self.projection.handoffs.get(command.handoff_id)
        decision = decide_command(
            self.projection.case,
            handoff,
            command,
            actor=actor if actor is not None else command.agency.value,
            now=self.now,
            catalog=CATALOG,
            calendar=CALENDAR,
        )
        if isinstance(decision, Accepted):
            self.apply(decision.events)
        return decision

    def tick(self, now: datetime) -> list[HandoffEvent]:
        self.now = now
        fired: list[HandoffEvent] = []
        for handoff in list(self.projection.handoffs.values()):
            events = decide_timer(handoff, now)
            fired.extend(events)
            self.apply(events)
        return fired

    # The router's re-routing rules (protocol item 4).
    def _router_reacts(self, event: HandoffEvent) -> None:
        case = self.projection.case
        assert case is not None
        handoff = self.projection.handoffs[event.handoff_id]
        if isinstance(event, HandoffDeclined) and event.decline_count < BOUNCE_LIMIT:
            target = event.suggested_agency
            handling = {h.agency for h in self.projection.handoffs.values() if h.is_open}
            if target in event.declined_by or target in handling:
                target = ESCALATION_POINT
            self.route(
                _single(case.case_id, target, handoff.role, event.handoff_id, lead=case.lead)
            )
        elif isinstance(event, HandoffEscalated):
            self.route(
                _single(
                    case.case_id,
                    event.escalate_to,
                    handoff.role,
                    event.handoff_id,
                    lead=case.lead,
                    cause=RouteCause.ESCALATION,
                )
            )


def _single(
    case_id: str,
    agency: AgencyCode,
    role: AgencyRole,
    replaces: str,
    *,
    lead: AgencyCode,
    cause: RouteCause = RouteCause.DECLINE,
) -> CaseRouted:
    return CaseRouted(
        case_id=case_id,
        reference="LK-AAAA-BBBB",
        initiative_id="bibliotheek-rotterdam-centrale",
        lead=agency if role is AgencyRole.LEAD else lead,
        assignments=[AgencyAssignment(agency=agency, role=role, confidence=1.0)],
        cause=cause,
        replaces_handoff_id=replaces,
        routed_at=T0,
    )
