"""Hypothesis state machine: responsibility and no-bounce invariants over random sequences."""

from __future__ import annotations

import copy
from datetime import timedelta

from handoff_harness import Harness, routed
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from loket_handoff.domain import (
    BOUNCE_LIMIT,
    ESCALATION_POINT,
    OPERATOR,
    Rejected,
    agency_owner,
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
    ResolveHandoff,
)
from loket_schemas.vocabulary import AgencyCode

AGENCIES = st.sampled_from(
    [
        AgencyCode.UWV,
        AgencyCode.SVB,
        AgencyCode.GEMEENTE,
        AgencyCode.TOESLAGEN,
        AgencyCode.MAATWERKLOKET,
    ]
)
ACTORS = st.one_of(AGENCIES.map(lambda a: a.value), st.just(OPERATOR))
NAMES = st.sampled_from(["Anna", "Bram"])


class CaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()

    @initialize(lead=AGENCIES, supporting=st.lists(AGENCIES, max_size=2, unique=True))
    def route_case(self, lead: AgencyCode, supporting: list[AgencyCode]) -> None:
        self.h.route(routed(lead=lead, supporting=tuple(a for a in supporting if a != lead)))

    def _pick(self, index: int) -> str:
        ids = list(self.h.projection.handoffs)
        return ids[index % len(ids)]

    def _send(self, command: AcceptHandoff | DeclineHandoff | ResolveHandoff | EscalateHandoff,
              actor: str) -> None:  # fmt: skip
        before = copy.deepcopy(self.h.projection)
        log_len = len(self.h.log)
        decision = self.h.command(command, actor=actor)
        if isinstance(decision, Rejected):
            assert self.h.projection == before, "a rejected command changed the state"
            assert len(self.h.log) == log_len

    @rule(index=st.integers(0, 20), actor=ACTORS, name=NAMES)
    def accept(self, index: int, actor: str, name: str) -> None:
        hid = self._pick(index)
        agency = self.h.projection.handoffs[hid].agency if actor == OPERATOR else AgencyCode(actor)
        self._send(
            AcceptHandoff(
                case_id="case-1", handoff_id=hid, agency=agency, contact=ContactPerson(name=name)
            ),
            actor,
        )

    @rule(index=st.integers(0, 20), actor=ACTORS, suggested=AGENCIES)
    def decline(self, index: int, actor: str, suggested: AgencyCode) -> None:
        hid = self._pick(index)
        agency = self.h.projection.handoffs[hid].agency if actor == OPERATOR else AgencyCode(actor)
        self._send(
            DeclineHandoff(
                case_id="case-1",
                handoff_id=hid,
                agency=agency,
                reason="not ours",
                suggested_agency=suggested,
            ),
            actor,
        )

    @rule(index=st.integers(0, 20), actor=ACTORS)
    def resolve(self, index: int, actor: str) -> None:
        hid = self._pick(index)
        agency = self.h.projection.handoffs[hid].agency if actor == OPERATOR else AgencyCode(actor)
        self._send(ResolveHandoff(case_id="case-1", handoff_id=hid, agency=agency), actor)

    @rule(index=st.integers(0, 20), actor=ACTORS)
    def escalate(self, index: int, actor: str) -> None:
        hid = self._pick(index)
        agency = self.h.projection.handoffs[hid].agency if actor == OPERATOR else AgencyCode(actor)
        self._send(EscalateHandoff(case_id="case-1", handoff_id=hid, agency=agency), actor)

    @rule(hours=st.integers(1, 120))
    def time_passes(self, hours: int) -> None:
        self.h.tick(self.h.now + timedelta(hours=hours))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def exactly_one_owner_moved_only_by_lead_acceptance(self) -> None:
        case = self.h.projection.case
        assert case is not None
        expected = initiative_owner(case.initiative_id)
        roles = {}
        for event in self.h.log:
            if isinstance(event, HandoffOffered):
                roles[event.handoff_id] = event.role
            elif isinstance(event, HandoffAccepted) and roles[event.handoff_id] is AgencyRole.LEAD:
                expected = agency_owner(event.agency)
        assert case.owner == expected

    @invariant()
    def never_offered_to_an_office_that_declined(self) -> None:
        declined: set[AgencyCode] = set()
        for event in self.h.log:
            if isinstance(event, HandoffOffered):
                assert event.agency not in declined, f"{event.agency} declined before"
            elif isinstance(event, HandoffDeclined):
                declined.add(event.agency)

    @invariant()
    def bounce_limit_escalates_and_maatwerkloket_never_declines(self) -> None:
        log = self.h.log
        declines = 0
        for i, event in enumerate(log):
            if isinstance(event, HandoffDeclined):
                declines += 1
                assert event.agency is not ESCALATION_POINT
                assert event.decline_count == declines
                if declines >= BOUNCE_LIMIT:
                    nxt = log[i + 1]
                    assert isinstance(nxt, HandoffEscalated)
                    assert nxt.reason is EscalationReason.BOUNCE_LIMIT
                    assert nxt.handoff_id == event.handoff_id
        case = self.h.projection.case
        assert case is not None and case.decline_count == declines

    @invariant()
    def at_most_one_open_handoff_per_agency(self) -> None:
        open_agencies = [h.agency for h in self.h.projection.handoffs.values() if h.is_open]
        assert len(open_agencies) == len(set(open_agencies))


TestCaseMachine = CaseMachine.TestCase
TestCaseMachine.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
