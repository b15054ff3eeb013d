"""Processors with an in-memory store (no Kafka, no Redis): wiring of decode, DLQ, dedupe."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from loket_router import domain
from loket_router.app import create_app
from loket_router.handlers import ConsentProcessor, QuestionProcessor, RouterContext
from loket_router.routing import RoutingDecision
from loket_router.settings import RouterSettings
from loket_router.store import CaseState, Writes
from loket_schemas.catalog import load_agencies
from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    ConsentWithdrawn,
    QuestionReceived,
)
from loket_schemas.kafka import encode
from loket_schemas.vocabulary import AgencyCode, ConsentRecord, DataCategory, PersonRequester

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    offset: int
    topic: str = "loket.questions.v1"
    partition: int = 0


@dataclass
class FakeStore:
    """The RedisStore interface in memory."""

    markers: set[str] = field(default_factory=set)
    withdrawn: dict[str, dict[str, domain.Withdrawal]] = field(default_factory=dict)
    shares: dict[str, list[domain.ConsentShare]] = field(default_factory=dict)

    def done_key(self, kind: str, ident: str) -> str:
        return f"done:{kind}:{ident}"

    async def load(
        self, case_ids: Sequence[str], *, done_keys: Sequence[str] | None = None, full: bool = True
    ) -> dict[str, CaseState]:
        out = {
            cid: CaseState(cid, withdrawals=dict(self.withdrawn.get(cid, {})),
                           shares=list(self.shares.get(cid, [])))
            for cid in case_ids
        }  # fmt: skip
        for cid, marker in zip(case_ids, done_keys or [], strict=False):
            out[cid].done = out[cid].done or marker in self.markers
        return out

    async def done(self, markers: Sequence[str]) -> list[bool]:
        return [m in self.markers for m in markers]

    async def write(self, writes: Writes) -> None:
        for cid, w in writes.withdrawals:
            merged = domain.merge_withdrawals([*self.withdrawn.get(cid, {}).values(), w])
            self.withdrawn[cid] = merged
        for cid, share in writes.shares:
            self.shares.setdefault(cid, []).append(share)


def classify(text: str, *, vulnerable: bool = False) -> RoutingDecision:
    lead = AgencyAssignment(
        agency=AgencyCode.BELASTINGDIENST, role=AgencyRole.LEAD, reasons=["t"], confidence=1.0
    )
    return RoutingDecision(
        lead=AgencyCode.BELASTINGDIENST, assignments=(lead,), reasons={}, unclassified=False
    )


def ctx() -> RouterContext:
    return RouterContext(
        catalog=load_agencies(), classify=classify, pseudonym_key="k", clock=lambda: NOW
    )


def q(case_id: str) -> QuestionReceived:
    return QuestionReceived(
        case_id=case_id,
        reference="LK-AAAA-BBBB",
        channel="web",
        initiative_id="bibliotheek-utrecht-neude",
        text="Vraag over mijn belastingschuld",
        requester=PersonRequester(bsn="111222333"),
        consent=ConsentRecord(
            consent_id="c-1", categories=[DataCategory.QUESTION_TEXT], given_at=NOW
        ),
        received_at=NOW,
    )


def rec(message: Any, offset: int) -> Rec:
    r = encode(message, source="urn:test")
    return Rec(r.key, r.value, list(r.headers), offset)


async def test_question_batch_poison_duplicates_and_markers() -> None:
    store = FakeStore(markers={"done:routed:old"})
    proc = QuestionProcessor(ctx(), store)  # type: ignore[arg-type]
    result = await proc.process(
        [
            rec(q("a"), 0),
            Rec(b"b", b"{oops", [("ce_specversion", b"1.0")], 1),
            rec(q("a"), 2),  # same case again in the batch
            rec(q("old"), 3),  # routed before
            rec(q("c"), 4),
        ]
    )
    topics = [o.topic for o in result.outgoing]
    assert topics.count("loket.agency.belastingdienst.v1") == 2
    assert topics.count("loket.audit.v1") == 2 and topics.count("loket.handoffs.v1") == 2
    assert topics.count("loket.dlq.v1") == 1
    assert result.stats.routed == 2 and result.stats.duplicates == 2
    assert result.markers == ["done:routed:a", "done:routed:c"]
    dlq = json.loads(next(o for o in result.outgoing if o.topic == "loket.dlq.v1").record.value)
    assert (dlq["offset"], dlq["error_class"], dlq["case_id"]) == (1, "MissingAttribute", "b")
    # consent-based share recorded, and flagged for the withdrawal re-check
    assert [s.categories for _, s in result.writes.shares] == [
        frozenset({DataCategory.QUESTION_TEXT})
    ] * 2
    assert set(result.recheck) == {"a", "c"}


async def test_recorded_withdrawal_withholds_and_erasure_is_requested() -> None:
    store = FakeStore(
        shares={"a": [domain.ConsentShare(AgencyCode.BELASTINGDIENST, "c-1",
                                          frozenset({DataCategory.QUESTION_TEXT}))]}
    )  # fmt: skip
    consent = ConsentProcessor(ctx(), store)  # type: ignore[arg-type]
    withdrawn = ConsentWithdrawn(case_id="a", consent_id="c-1", withdrawn_at=NOW)
    result = await consent.process([rec(withdrawn, 0)])
    assert [o.topic for o in result.outgoing] == ["loket.agency.belastingdienst.v1"]
    assert store.withdrawn["a"]["c-1"].categories == frozenset()
    # a later routing of the same case no longer shares on that consent
    proc = QuestionProcessor(ctx(), store)  # type: ignore[arg-type]
    routed = await proc.process([rec(q("a"), 1)])
    delivered = json.loads(routed.outgoing[0].record.value)
    assert delivered["text"] is None
    assert delivered["manifest"]["withheld"][0]["reason"] == "consent_withdrawn"


async def test_create_app_connects_nothing_and_serves_health() -> None:
    app = create_app(
        RouterSettings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0")
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert "loket_router_questions_routed_total" in (await client.get("/metrics")).text
    assert len(app.state.router.loops) == 3
