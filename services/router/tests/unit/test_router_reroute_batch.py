"""RerouteProcessor dedupe: only actions taken are "done", keyed by (case, cause, handoff).

Regression: the router marked a not-acted 2nd ``HandoffDeclined`` as seen under the marker
``<case>:<handoff_id>``; the ``HandoffEscalated`` of the same handoff that follows in the
same batch then counted as a duplicate and the case never reached maatwerkloket.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router_factories import NOW, question

from loket_router.handlers import BatchResult, RerouteProcessor, RouterContext
from loket_router.routing import RoutingDecision
from loket_router.store import CaseState
from loket_schemas.catalog import load_agencies
from loket_schemas.events import (
    AgencyRole,
    ContactPerson,
    EscalationReason,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    Message,
)
from loket_schemas.kafka import encode
from loket_schemas.vocabulary import AgencyCode

A = AgencyCode
CASE = "case-1"


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    offset: int
    topic: str = "loket.handoffs.v1"
    partition: int = 0


@dataclass
class MemoryStore:
    """The part of RedisStore the re-route loop uses, in memory (markers persist across
    batches like Redis does across restarts)."""

    markers: set[str] = field(default_factory=set)
    roles: dict[AgencyCode, AgencyRole] = field(default_factory=dict)
    via: dict[AgencyCode, str] = field(default_factory=dict)

    def done_key(self, kind: str, ident: str) -> str:
        return f"done:{kind}:{ident}"

    async def load(
        self, case_ids: Sequence[str], *, done_keys: Sequence[str] | None = None, full: bool = True
    ) -> dict[str, CaseState]:
        return {
            cid: CaseState(
                cid, question=question(cid), lead=A.UWV, roles=dict(self.roles), via=dict(self.via)
            )
            for cid in case_ids
        }

    async def done(self, markers: Sequence[str]) -> list[bool]:
        return [m in self.markers for m in markers]

    def write(self, result: BatchResult) -> None:
        """The state writes the loop does before the commit."""
        for _, agency, role in result.writes.roles:
            self.roles[agency] = role
        for _, agency, action in result.writes.via:
            self.via[agency] = action

    def commit(self, result: BatchResult) -> None:
        """The writes before and the markers after a committed transaction."""
        self.write(result)
        self.markers.update(result.markers)


def never_classify(*_: Any, **__: Any) -> RoutingDecision:
    raise AssertionError("re-routing never classifies")


def processor(store: MemoryStore | None = None) -> tuple[RerouteProcessor, MemoryStore]:
    store = store or MemoryStore(roles={A.UWV: AgencyRole.LEAD, A.SVB: AgencyRole.LEAD})
    ctx = RouterContext(
        catalog=load_agencies(), classify=never_classify, pseudonym_key="k", clock=lambda: NOW
    )
    return RerouteProcessor(ctx, store), store  # type: ignore[arg-type]


def declined(hid: str = "h-2", count: int = 2, **kw: Any) -> HandoffDeclined:
    base: dict[str, Any] = {
        "case_id": CASE,
        "handoff_id": hid,
        "agency": A.SVB,
        "occurred_at": NOW,
        "reason": "niet onze taak",
        "suggested_agency": A.UWV,
        "declined_by": [A.UWV, A.SVB][:count],
        "decline_count": count,
    }
    base.update(kw)
    return HandoffDeclined(**base)


def escalated(hid: str = "h-2", **kw: Any) -> HandoffEscalated:
    base: dict[str, Any] = {
        "case_id": CASE,
        "handoff_id": hid,
        "agency": A.SVB,
        "occurred_at": NOW,
        "reason": EscalationReason.BOUNCE_LIMIT,
        "escalate_to": A.MAATWERKLOKET,
    }
    base.update(kw)
    return HandoffEscalated(**base)


def recs(*messages: Message) -> list[Rec]:
    out = []
    for offset, m in enumerate(messages):
        r = encode(m, source="urn:nld:loket:service:handoff")
        out.append(Rec(r.key, r.value, list(r.headers), offset))
    return out


def routed(result: BatchResult) -> list[dict[str, Any]]:
    return [
        json.loads(o.record.value)
        for o in result.outgoing
        if o.topic == "loket.handoffs.v1" and o.record.value is not None
    ]


def delivered_to(result: BatchResult) -> list[str]:
    return [o.topic for o in result.outgoing if o.topic.startswith("loket.agency.")]


async def test_second_decline_and_its_escalation_in_one_batch_reach_maatwerkloket() -> None:
    proc, _ = processor()
    result = await proc.process(recs(declined(), escalated()))
    [case_routed] = routed(result)
    assert case_routed["cause"] == "escalation"
    assert case_routed["replaces_handoff_id"] == "h-2"
    assert [a["agency"] for a in case_routed["assignments"]] == ["maatwerkloket"]
    assert delivered_to(result) == ["loket.agency.maatwerkloket.v1"]
    assert result.markers == [proc.marker(escalated())]
    assert result.stats.duplicates == 0
    assert result.stats.rerouted == {"escalation": 1}


async def test_not_acted_decline_marks_nothing_for_a_later_batch() -> None:
    proc, store = processor()
    first = await proc.process(recs(declined()))
    assert first.outgoing == [] and first.markers == []
    store.commit(first)
    second = await proc.process(recs(escalated()))
    assert [r["cause"] for r in routed(second)] == ["escalation"]


async def test_replayed_escalation_in_one_batch_routes_once() -> None:
    proc, _ = processor()
    result = await proc.process(recs(declined(), escalated(), escalated()))
    assert len(routed(result)) == 1
    assert result.stats.duplicates == 1
    assert result.markers == [proc.marker(escalated())]


async def test_replay_after_commit_is_a_duplicate_also_in_a_new_processor() -> None:
    proc, store = processor()
    first = await proc.process(recs(escalated()))
    store.commit(first)
    # a restarted router (new processor, same persisted markers) sees the replay
    again, _ = processor(store)
    result = await again.process(recs(escalated(), declined()))
    assert result.outgoing == [] and result.markers == []
    assert result.stats.duplicates == 1


async def test_first_decline_reroute_replayed_in_the_batch_routes_once() -> None:
    proc, _ = processor(MemoryStore(roles={A.UWV: AgencyRole.LEAD}))
    first = declined("h-1", count=1, agency=A.UWV, suggested_agency=A.SVB, declined_by=[A.UWV])
    result = await proc.process(recs(first, first))
    [case_routed] = routed(result)
    assert (case_routed["cause"], case_routed["assignments"][0]["agency"]) == ("decline", "svb")
    assert result.stats.duplicates == 1
    assert result.markers == [proc.marker(first)]


async def test_decline_and_escalation_of_one_handoff_are_different_actions() -> None:
    proc, store = processor(MemoryStore(roles={A.UWV: AgencyRole.LEAD}))
    decline = declined("h-1", count=1, agency=A.UWV, suggested_agency=A.SVB, declined_by=[A.UWV])
    escalation = escalated("h-1", agency=A.UWV, reason=EscalationReason.SLA)
    assert proc.marker(decline) != proc.marker(escalation)
    first = await proc.process(recs(decline))
    store.commit(first)
    second = await proc.process(recs(escalation))
    assert [(r["cause"], r["assignments"][0]["agency"]) for r in routed(second)] == [
        ("escalation", "maatwerkloket")
    ]


async def test_marker_written_before_the_cause_was_part_of_it_is_honoured() -> None:
    proc, store = processor()
    store.markers.add(proc.legacy_marker(escalated()))
    result = await proc.process(recs(escalated()))
    assert result.outgoing == [] and result.stats.duplicates == 1


async def test_other_handoff_events_are_ignored_and_never_marked() -> None:
    proc, _ = processor()
    accepted = HandoffAccepted(
        case_id=CASE,
        handoff_id="h-2",
        agency=A.SVB,
        occurred_at=NOW,
        contact=ContactPerson(name="R. Smit"),
        resolve_due_at=NOW,
    )
    result = await proc.process(recs(accepted, escalated()))
    assert len(routed(result)) == 1 and result.markers == [proc.marker(escalated())]


async def test_replay_after_an_aborted_attempt_decides_the_same() -> None:
    """Roles are written before the commit; an attempt whose transaction aborted (kill,
    Kafka error) must not make its own target look "already handling" to the retry."""
    proc, store = processor(MemoryStore(roles={A.UWV: AgencyRole.LEAD}))
    decline = declined("h-1", count=1, agency=A.UWV, suggested_agency=A.SVB, declined_by=[A.UWV])
    first = await proc.process(recs(decline))
    store.write(first)  # state written, transaction aborted: no markers
    retry = await proc.process(recs(decline))
    assert [r["assignments"][0]["agency"] for r in routed(retry)] == ["svb"]

    def ids(result: BatchResult) -> list[tuple[str, bytes]]:
        return [(o.topic, dict(o.record.headers)["ce_id"]) for o in result.outgoing]

    assert ids(retry) == ids(first)  # same records, same event ids
    # a later decline suggesting the same agency still sees it handling the case
    store.commit(retry)
    other = declined("h-9", count=1, agency=A.UWV, suggested_agency=A.SVB, declined_by=[A.UWV])
    later = await proc.process(recs(other))
    assert [r["assignments"][0]["agency"] for r in routed(later)] == ["maatwerkloket"]
