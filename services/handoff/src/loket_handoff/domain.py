"""The handoff state machine and case-level rules (pure: no I/O, no clock).

Per handoff::

    offered --accept (named person)--> accepted --resolve--> resolved
    offered --decline (reason + suggested agency)--> declined
    offered | accepted --escalate (sla | bounce_limit | manual)--> escalated

Per case:

* the *owner* starts as the intake initiative and moves only when the LEAD handoff is
  accepted by a named person (exactly one owner at any time);
* a case is never offered again to an office that declined it (such an assignment is
  redirected to maatwerkloket);
* the 2nd (and every later) decline of a case escalates it to maatwerkloket
  (``HandoffEscalated(reason=bounce_limit)``);
* maatwerkloket cannot decline (it escalates manually), and its own SLA breaches do not
  escalate further.

``decide_*`` functions take the current projection and return the events to publish (or a
rejection); :func:`evolve` applies one event to the projection. Both are deterministic.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from loket_handoff.businesshours import SlaCalendar
from loket_schemas.catalog import AgencyCatalog
from loket_schemas.events import (
    AcceptHandoff,
    AgencyRole,
    CaseRouted,
    DeclineHandoff,
    EscalateHandoff,
    EscalationReason,
    HandoffAccepted,
    HandoffCommand,
    HandoffDeclined,
    HandoffEscalated,
    HandoffEvent,
    HandoffOffered,
    HandoffResolved,
    HandoffSlaBreached,
    HandoffSlaWarning,
    ResolveHandoff,
    SlaKind,
)
from loket_schemas.vocabulary import AgencyCode, Urgency

#: Namespace of deterministic handoff ids (uuid5 of ``case_id:agency:route_seq``).
HANDOFF_NAMESPACE = uuid.UUID("5b0c7e4e-3f1d-5a0e-9d3c-6c6f6b657431")
#: Namespace of deterministic event ids (uuid5 of ``handoff_id:type:version``).
EVENT_NAMESPACE = uuid.UUID("8f1f7a52-1c55-5d6b-a0a4-6c6f6b657432")

ESCALATION_POINT = AgencyCode.MAATWERKLOKET
BOUNCE_LIMIT = 2
WARNING_FRACTION = 0.75
OPERATOR = "operator"


class HandoffState(StrEnum):
    OFFERED = "offered"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    RESOLVED = "resolved"
    ESCALATED = "escalated"


OPEN_STATES = frozenset({HandoffState.OFFERED, HandoffState.ACCEPTED})


def handoff_id_for(case_id: str, agency: AgencyCode | str, route_seq: int) -> str:
    """Deterministic handoff id, so replaying a CaseRouted opens nothing twice."""
    return str(uuid.uuid5(HANDOFF_NAMESPACE, f"{case_id}:{AgencyCode(agency).value}:{route_seq}"))


def event_id_for(handoff_id: str, event_type: str, version: int) -> str:
    """Deterministic event id of the transition of ``handoff_id`` from ``version``.

    Two deciders that race on the same transition produce the same id, so the projection
    applies it once.
    """
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{handoff_id}:{event_type}:{version}"))


def initiative_owner(initiative_id: str) -> str:
    return f"initiative:{initiative_id}"


def agency_owner(agency: AgencyCode | str) -> str:
    return f"agency:{AgencyCode(agency).value}"


@dataclass(frozen=True)
class Handoff:
    """One transfer of a case to one agency (projection)."""

    handoff_id: str
    case_id: str
    agency: AgencyCode
    role: AgencyRole
    state: HandoffState
    urgency: Urgency
    initiative_id: str
    reference: str
    offered_at: datetime
    accept_due_at: datetime
    accept_warn_at: datetime
    version: int = 1
    contact: str | None = None
    accepted_at: datetime | None = None
    expected_by: datetime | None = None
    resolve_due_at: datetime | None = None
    resolve_warn_at: datetime | None = None
    warned: bool = False
    """The warning of the current SLA clock (accept while offered, resolve after) fired."""
    breached: bool = False
    """The current SLA clock ran out."""
    closed_at: datetime | None = None
    reason: str | None = None
    """Decline reason, escalation reason or resolution summary."""
    suggested_agency: AgencyCode | None = None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def sla(self) -> SlaKind | None:
        """The running SLA clock, if any."""
        if self.state is HandoffState.OFFERED:
            return SlaKind.ACCEPT
        if self.state is HandoffState.ACCEPTED and self.resolve_due_at is not None:
            return SlaKind.RESOLVE
        return None

    @property
    def due_at(self) -> datetime | None:
        kind = self.sla
        if kind is SlaKind.ACCEPT:
            return self.accept_due_at
        if kind is SlaKind.RESOLVE:
            return self.resolve_due_at
        return None

    @property
    def warn_at(self) -> datetime | None:
        kind = self.sla
        if kind is SlaKind.ACCEPT:
            return self.accept_warn_at
        if kind is SlaKind.RESOLVE:
            return self.resolve_warn_at
        return None

    def next_timer(self) -> datetime | None:
        """When the SLA timer of this handoff must fire next (None: no timer)."""
        if self.breached or self.due_at is None:
            return None
        if not self.warned and self.warn_at is not None:
            return self.warn_at
        return self.due_at


@dataclass(frozen=True)
class Case:
    """Case-level facts the rules need (projection)."""

    case_id: str
    reference: str
    initiative_id: str
    owner: str
    lead: AgencyCode
    urgency: Urgency = Urgency.NORMAL
    declined_by: tuple[AgencyCode, ...] = ()
    decline_count: int = 0
    route_count: int = 0
    escalations: int = 0


# --------------------------------------------------------------------------- decisions


class RejectionKind(StrEnum):
    NOT_FOUND = "not_found"  # HTTP 404
    FORBIDDEN = "forbidden"  # HTTP 403
    CONFLICT = "conflict"  # HTTP 409: illegal transition
    INVALID = "invalid"  # HTTP 422: missing reason / suggested agency


@dataclass(frozen=True)
class Rejected:
    kind: RejectionKind
    reason: str


@dataclass(frozen=True)
class Accepted:
    """The command is valid: these events record it (empty for a duplicate: a no-op)."""

    events: tuple[HandoffEvent, ...] = ()

    @property
    def duplicate(self) -> bool:
        return not self.events


Decision = Accepted | Rejected


def decide_routing(
    case: Case | None,
    handoffs: Sequence[Handoff],
    routed: CaseRouted,
    *,
    route_seq: int,
    now: datetime,
    catalog: AgencyCatalog,
    calendar: SlaCalendar,
) -> list[HandoffOffered]:
    """Offers for a CaseRouted: one per assignment without an open handoff for its agency.

    An assignment to an agency that declined the case goes to maatwerkloket instead (a
    case never returns to an office that declined it). Replays open nothing twice: the
    handoff id is deterministic and an existing id is skipped.
    """
    declined = set(case.declined_by) if case else set()
    known = {h.handoff_id for h in handoffs}
    busy = {h.agency for h in handoffs if h.is_open}
    owner = case.owner if case else initiative_owner(routed.initiative_id)
    offers: list[HandoffOffered] = []
    for assignment in routed.assignments:
        agency = assignment.agency
        if agency in declined:
            agency = ESCALATION_POINT
        handoff_id = handoff_id_for(routed.case_id, agency, route_seq)
        if handoff_id in known or agency in busy:
            continue
        norm = catalog.get(agency).sla[routed.urgency]
        offers.append(
            HandoffOffered(
                case_id=routed.case_id,
                handoff_id=handoff_id,
                agency=agency,
                occurred_at=now,
                role=assignment.role,
                initiative_id=routed.initiative_id,
                reference=routed.reference,
                from_office=owner,
                urgency=routed.urgency,
                accept_due_at=calendar.add_hours(now, norm.accept_hours),
            )
        )
        known.add(handoff_id)
        busy.add(agency)
    return offers


def may_act(actor: str, handoff: Handoff, command: HandoffCommand) -> bool:
    """The addressee acts on its handoff; maatwerkloket and operators may also escalate."""
    if isinstance(command, EscalateHandoff) and actor in (OPERATOR, ESCALATION_POINT.value):
        return True
    return actor == handoff.agency.value and command.agency == handoff.agency


def decide_command(
    case: Case | None,
    handoff: Handoff | None,
    command: HandoffCommand,
    *,
    actor: str,
    now: datetime,
    catalog: AgencyCatalog,
    calendar: SlaCalendar,
) -> Decision:
    """Decide an agency response against the projection."""
    if handoff is None or handoff.case_id != command.case_id:
        return Rejected(RejectionKind.NOT_FOUND, "unknown handoff")
    if not may_act(actor, handoff, command):
        return Rejected(
            RejectionKind.FORBIDDEN,
            f"handoff {handoff.handoff_id} is addressed to {handoff.agency.value}",
        )
    base = {
        "case_id": handoff.case_id,
        "handoff_id": handoff.handoff_id,
        "agency": handoff.agency,
        "occurred_at": now,
    }
    state = handoff.state
    if isinstance(command, AcceptHandoff):
        if state is HandoffState.ACCEPTED and handoff.contact == command.contact.name:
            return Accepted()
        if state is not HandoffState.OFFERED:
            return _illegal(handoff, "accept")
        if not command.contact.name.strip():
            return Rejected(RejectionKind.INVALID, "a named contact person is required")
        if command.expected_by is not None and command.expected_by < handoff.offered_at:
            # also keeps absurd dates (year 3) out of the projection's time stamps
            return Rejected(
                RejectionKind.INVALID, "expected_by must not be before the handoff was offered"
            )
        norm = catalog.get(handoff.agency).sla[handoff.urgency]
        return Accepted(
            (
                HandoffAccepted(
                    **base,
                    contact=command.contact,
                    expected_by=command.expected_by,
                    resolve_due_at=calendar.add_hours(now, norm.resolve_hours),
                ),
            )
        )
    if isinstance(command, DeclineHandoff):
        if handoff.agency is ESCALATION_POINT:
            return Rejected(
                RejectionKind.CONFLICT,
                "maatwerkloket cannot decline a case: escalate manually",
            )
        if (
            state is HandoffState.DECLINED
            and handoff.reason == command.reason
            and handoff.suggested_agency == command.suggested_agency
        ):
            return Accepted()
        if state is not HandoffState.OFFERED:
            return _illegal(handoff, "decline")
        if not command.reason.strip():
            return Rejected(RejectionKind.INVALID, "a reason is required to decline")
        if command.suggested_agency == handoff.agency:
            return Rejected(RejectionKind.INVALID, "the suggested agency must be another agency")
        declined_by = list(case.declined_by) if case else []
        if handoff.agency not in declined_by:
            declined_by.append(handoff.agency)
        count = (case.decline_count if case else 0) + 1
        events: list[HandoffEvent] = [
            HandoffDeclined(
                **base,
                reason=command.reason,
                suggested_agency=command.suggested_agency,
                declined_by=declined_by,
                decline_count=count,
            )
        ]
        if count >= BOUNCE_LIMIT:
            events.append(
                HandoffEscalated(
                    **base,
                    reason=EscalationReason.BOUNCE_LIMIT,
                    escalate_to=ESCALATION_POINT,
                    note=f"declined {count} times",
                )
            )
        return Accepted(tuple(events))
    if isinstance(command, ResolveHandoff):
        if state is HandoffState.RESOLVED and handoff.reason == command.summary:
            return Accepted()
        if state is not HandoffState.ACCEPTED:
            return _illegal(handoff, "resolve")
        return Accepted((HandoffResolved(**base, summary=command.summary),))
    if isinstance(command, EscalateHandoff):
        if state is HandoffState.ESCALATED and handoff.reason == EscalationReason.MANUAL.value:
            return Accepted()
        if handoff.agency is ESCALATION_POINT:
            return Rejected(
                RejectionKind.CONFLICT,
                "the case is already at maatwerkloket, the escalation point",
            )
        if state not in OPEN_STATES:
            return _illegal(handoff, "escalate")
        return Accepted(
            (
                HandoffEscalated(
                    **base,
                    reason=EscalationReason.MANUAL,
                    escalate_to=ESCALATION_POINT,
                    note=command.note,
                ),
            )
        )
    return Rejected(RejectionKind.INVALID, f"unsupported command {type(command).__name__}")


def _illegal(handoff: Handoff, action: str) -> Rejected:
    return Rejected(
        RejectionKind.CONFLICT,
        f"cannot {action} a handoff that is {handoff.state.value}",
    )


def decide_timer(handoff: Handoff, now: datetime) -> list[HandoffEvent]:
    """SLA events due for a handoff at ``now`` (warning at 75%, breach at 100%).

    Every SLA clock warns once and breaches once, in that order: a warning that did not
    fire in time (the service was down, or Redis was rebuilt, when it fell due) comes
    right before the breach instead of being skipped. An acceptance breach escalates to
    maatwerkloket, except maatwerkloket's own.
    """
    kind = handoff.sla
    due = handoff.due_at
    if kind is None or due is None or handoff.breached:
        return []
    base = {
        "case_id": handoff.case_id,
        "handoff_id": handoff.handoff_id,
        "agency": handoff.agency,
        "occurred_at": now,
    }
    events: list[HandoffEvent] = []
    warn_at = handoff.warn_at
    if not handoff.warned and warn_at is not None and now >= min(warn_at, due):
        events.append(HandoffSlaWarning(**base, sla=kind, due_at=due))
    if now >= due:
        events.append(HandoffSlaBreached(**base, sla=kind, due_at=due))
        if kind is SlaKind.ACCEPT and handoff.agency is not ESCALATION_POINT:
            events.append(
                HandoffEscalated(
                    **base,
                    reason=EscalationReason.SLA,
                    escalate_to=ESCALATION_POINT,
                    note="acceptance SLA ran out",
                )
            )
    return events


# --------------------------------------------------------------------------- evolve


@dataclass
class Projection:
    """A case and its handoffs, as the rules see them (mutable working copy)."""

    case: Case | None = None
    handoffs: dict[str, Handoff] = field(default_factory=dict)

    def open_for(self, agency: AgencyCode) -> Handoff | None:
        for handoff in self.handoffs.values():
            if handoff.agency == agency and handoff.is_open:
                return handoff
        return None


def evolve(
    projection: Projection, event: CaseRouted | HandoffEvent, calendar: SlaCalendar
) -> list[str]:
    """Apply one event to the projection in place; returns the ids of changed handoffs.

    Tolerant: an event that does not fit the current state (a replay of an older fact)
    changes nothing. Idempotence across redeliveries is the store's job (event ids).
    """
    case = projection.case
    if isinstance(event, CaseRouted):
        if case is None:
            case = Case(
                case_id=event.case_id,
                reference=event.reference,
                initiative_id=event.initiative_id,
                owner=initiative_owner(event.initiative_id),
                lead=event.lead,
                urgency=event.urgency,
            )
        projection.case = replace(case, lead=event.lead, route_count=case.route_count + 1)
        return []
    if isinstance(event, HandoffOffered):
        if case is None:
            case = Case(
                case_id=event.case_id,
                reference=event.reference,
                initiative_id=event.initiative_id,
                owner=initiative_owner(event.initiative_id),
                lead=event.agency,
                urgency=event.urgency,
            )
            projection.case = case
        if event.handoff_id in projection.handoffs:
            return []
        projection.handoffs[event.handoff_id] = Handoff(
            handoff_id=event.handoff_id,
            case_id=event.case_id,
            agency=event.agency,
            role=event.role,
            state=HandoffState.OFFERED,
            urgency=event.urgency,
            initiative_id=event.initiative_id,
            reference=event.reference,
            offered_at=event.occurred_at,
            accept_due_at=event.accept_due_at,
            accept_warn_at=calendar.point_at(
                event.occurred_at, event.accept_due_at, WARNING_FRACTION
            ),
        )
        return [event.handoff_id]
    handoff = projection.handoffs.get(event.handoff_id)
    if handoff is None:
        if isinstance(event, HandoffEscalated | HandoffDeclined) and case is not None:
            projection.case = _case_after(case, event)
        return []
    new = _handoff_after(handoff, event, calendar)
    if case is not None:
        case = _case_after(case, event)
        if (
            isinstance(event, HandoffAccepted)
            and handoff.state is HandoffState.OFFERED
            and handoff.role is AgencyRole.LEAD
        ):
            case = replace(case, owner=agency_owner(handoff.agency), lead=handoff.agency)
        projection.case = case
    if new is handoff:
        return []
    projection.handoffs[event.handoff_id] = replace(new, version=handoff.version + 1)
    return [event.handoff_id]


def _case_after(case: Case, event: HandoffEvent) -> Case:
    if isinstance(event, HandoffDeclined):
        declined = list(case.declined_by)
        for agency in (*event.declined_by, event.agency):
            if agency not in declined:
                declined.append(agency)
        return replace(
            case,
            declined_by=tuple(declined),
            decline_count=max(case.decline_count + 1, event.decline_count),
        )
    if isinstance(event, HandoffEscalated):
        return replace(case, escalations=case.escalations + 1)
    return case


def _handoff_after(handoff: Handoff, event: HandoffEvent, calendar: SlaCalendar) -> Handoff:
    state = handoff.state
    at = event.occurred_at
    if isinstance(event, HandoffAccepted):
        if state is not HandoffState.OFFERED:
            return handoff
        resolve_warn = (
            calendar.point_at(at, event.resolve_due_at, WARNING_FRACTION)
            if event.resolve_due_at
            else None
        )
        return replace(
            handoff,
            state=HandoffState.ACCEPTED,
            contact=event.contact.name,
            accepted_at=at,
            expected_by=event.expected_by,
            resolve_due_at=event.resolve_due_at,
            resolve_warn_at=resolve_warn,
            warned=False,
            breached=False,
        )
    if isinstance(event, HandoffDeclined):
        if state is not HandoffState.OFFERED:
            return handoff
        return replace(
            handoff,
            state=HandoffState.DECLINED,
            closed_at=at,
            reason=event.reason,
            suggested_agency=event.suggested_agency,
        )
    if isinstance(event, HandoffResolved):
        if state is not HandoffState.ACCEPTED:
            return handoff
        return replace(handoff, state=HandoffState.RESOLVED, closed_at=at, reason=event.summary)
    if isinstance(event, HandoffEscalated):
        if state not in OPEN_STATES:
            return handoff
        return replace(
            handoff, state=HandoffState.ESCALATED, closed_at=at, reason=event.reason.value
        )
    if isinstance(event, HandoffSlaWarning):
        if handoff.sla is not event.sla or handoff.warned:
            return handoff
        return replace(handoff, warned=True)
    if isinstance(event, HandoffSlaBreached):
        if handoff.sla is not event.sla or handoff.breached:
            return handoff
        return replace(handoff, warned=True, breached=True)
    return handoff


def replay(events: Iterable[CaseRouted | HandoffEvent], calendar: SlaCalendar) -> Projection:
    """Fold events into a fresh projection (tests, rebuild of one case)."""
    projection = Projection()
    for event in events:
        evolve(projection, event, calendar)
    return projection


def owner_of(projection: Projection) -> str | None:
    return projection.case.owner if projection.case else None


def open_handoffs(handoffs: Mapping[str, Handoff]) -> list[Handoff]:
    return [h for h in handoffs.values() if h.is_open]
