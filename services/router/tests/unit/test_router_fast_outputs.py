"""The router's fast output path equals the schemas' slow path, byte for byte.

Outputs are built with ``model_construct`` (no second validation) and encoded with
precomputed CloudEvents headers. Here every output of a varied set of questions (real
routing engine, all requester and consent shapes) is checked against the schemas: it
decodes and validates with ``loket_schemas.kafka.decode``, re-validating the model gives
the same model, and ``to_record`` gives exactly what ``loket_schemas.kafka.encode`` gives.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from router_factories import BSN, NOW, business_question, consent, question

from loket_router import domain, handlers
from loket_router.handlers import (
    FAST_JSON,
    QuestionProcessor,
    RecordHeaders,
    RouterContext,
    message_json,
    to_record,
    trace_of,
)
from loket_router.routing import classify
from loket_router.store import CaseState
from loket_schemas.catalog import CategoryPermission, load_agencies
from loket_schemas.events import (
    REGISTRY,
    AgencyAssignment,
    AgencyRole,
    CaseDelivered,
    CaseRouted,
    DataErasureRequested,
    DataShareLogged,
    MessageDeadLettered,
    QuestionReceived,
    SharedCategory,
    SharingManifest,
)
from loket_schemas.kafka import decode, encode, service_source
from loket_schemas.tracing import new_trace, parse_traceparent
from loket_schemas.vocabulary import (
    AgencyCode,
    ContactDetails,
    DataCategory,
    GdprBasis,
    LegalBasis,
    PersonRequester,
)

EVAL = Path(__file__).resolve().parents[4] / "tests" / "data" / "routing_eval_independent.jsonl"


def test_event_id_is_uuid5() -> None:
    rng = random.Random(7)
    for _ in range(300):
        parts = [
            "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 20)))
            for _ in range(rng.randrange(1, 5))
        ]
        expected = str(uuid.uuid5(domain._ID_NAMESPACE, "\x1f".join(parts)))
        assert domain.event_id(*parts) == expected


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    offset: int
    topic: str = "loket.questions.v1"
    partition: int = 0


class Store:
    def done_key(self, kind: str, ident: str) -> str:
        return f"done:{kind}:{ident}"

    async def load(
        self, case_ids: Sequence[str], *, done_keys: Sequence[str] | None = None, full: bool = True
    ) -> dict[str, CaseState]:
        withdrawn = {"c-w": domain.Withdrawal("c-w", frozenset({DataCategory.CONTACT}))}
        return {cid: CaseState(cid, withdrawals=withdrawn) for cid in case_ids}


def texts() -> list[str]:
    lines = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    return [x["text"] for x in lines if "text" in x][:60] or ["Vraag over mijn belastingschuld"]


def variants() -> list[QuestionReceived]:
    shapes: list[dict[str, Any]] = [
        {},
        {"consent": None},
        {"requester": None, "consent": None},
        {"requester": PersonRequester(bsn=BSN)},
        {"requester": PersonRequester(contact=ContactDetails(phone="0612345678"))},
        {"consent": consent(categories=list(DataCategory), explicit=True)},
        {"consent": consent(expires_at=NOW - timedelta(minutes=1))},
        {"consent": consent(recipients=[AgencyCode.DUO, AgencyCode.CJIB])},
        {"consent": consent(consent_id="c-w", categories=list(DataCategory))},
        {"consent": consent(purpose="research")},
        {"urgent": True, "vulnerable": True, "subject_pseudonym": "p" * 80},
    ]
    out: list[QuestionReceived] = []
    for i, text in enumerate(texts()):
        kw = dict(shapes[i % len(shapes)])
        if i % 7 == 3:
            kw.pop("requester", None)
            out.append(business_question(f"case-{i}", text=text, **kw))
        else:
            out.append(question(f"case-{i}", text=text, **kw))
    return out


def test_every_output_validates_and_matches_encode() -> None:
    ctx = RouterContext(
        catalog=load_agencies(),
        classify=classify,
        pseudonym_key="k",
        source=service_source("router"),
        clock=lambda: NOW,
    )
    records = []
    for i, q in enumerate(variants()):
        rec = encode(q, source=service_source("intake"), trace=new_trace())
        records.append(Rec(rec.key, rec.value, list(rec.headers), i))
    result = asyncio.run(QuestionProcessor(ctx, Store()).process(records))  # type: ignore[arg-type]
    assert result.stats.routed == len(records) and not result.stats.dead_lettered
    seen: set[type] = set()
    shared_any = withheld_any = False
    for out in result.outgoing:
        env = decode(out.record.value, out.record.headers)  # validates against the schema
        model = env.data
        seen.add(type(model))
        assert type(model).model_validate_json(out.record.value) == model
        assert model.model_dump_json().encode() == out.record.value
        headers = dict(out.record.headers)
        slow = encode(
            model,
            source=ctx.source,
            trace=env.attributes.trace,
            event_id=headers["ce_id"].decode(),
            time=NOW,
        )
        assert slow == out.record
        if isinstance(model, CaseDelivered):
            shared_any = shared_any or bool(model.manifest.shared)
            withheld_any = withheld_any or bool(model.manifest.withheld)
            if model.requester is not None and model.requester.kind == "person":
                # a BSN only travels with a basis for identity data
                cats = {s.category for s in model.manifest.shared}
                assert (model.requester.bsn is None) or (DataCategory.IDENTITY in cats)
    assert {CaseDelivered, DataShareLogged, CaseRouted} <= seen
    assert shared_any and withheld_any


WEIRD = 'Q "quoted" \\ back\n\ttab \x01\x1f\x7f é ü ß 😀 \u2028 \u2029 \ufeff </script>'


def test_fast_json_equals_pydantic_for_every_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-written JSON of the routing outputs is pydantic's, byte for byte, also for
    strings that need escaping, non-ASCII text, microsecond and non-UTC clocks."""
    assert set(FAST_JSON) == {CaseDelivered, DataShareLogged, CaseRouted}
    written: list[tuple[Any, bytes]] = []

    def recording(message: Any, ident: str, shared: RecordHeaders) -> Any:
        record = to_record(message, ident, shared)
        written.append((message, record.value))
        return record

    monkeypatch.setattr(handlers, "to_record", recording)
    clocks = [NOW.replace(microsecond=123456), NOW.astimezone(timezone(timedelta(hours=2)))]
    weird_contact = ContactDetails(name=WEIRD, email="a@b.nl", postal_address="Straat 1\nStad")
    questions = [
        q.model_copy(update={"text": q.text + " " + WEIRD}) if i % 2 else q
        for i, q in enumerate(variants())
    ]
    questions.append(
        question(
            "case-weird",
            requester=PersonRequester(bsn=BSN, contact=weird_contact),
            consent=consent(categories=list(DataCategory), explicit=True),
            subject_pseudonym='p"\\\u2028',
        )
    )
    seen: set[type] = set()
    for at in clocks:
        ctx = RouterContext(
            catalog=load_agencies(),
            classify=classify,
            pseudonym_key="k",
            source=service_source("router"),
            clock=lambda at=at: at,  # type: ignore[misc]
        )
        records = []
        for i, q in enumerate(questions):
            rec = encode(q, source=service_source("intake"), trace=new_trace())
            records.append(Rec(rec.key, rec.value, list(rec.headers), i))
        result = asyncio.run(QuestionProcessor(ctx, Store()).process(records))  # type: ignore[arg-type]
        assert result.stats.routed == len(records)
        assert len(written) == len(result.outgoing)
        for message, value in written:
            seen.add(type(message))
            assert value == message.__pydantic_serializer__.to_json(message)
            model = type(message).model_validate_json(value)  # decoded: the same JSON again
            assert message_json(model) == value
        written.clear()
    assert seen == {CaseDelivered, DataShareLogged, CaseRouted}


def test_fast_json_of_constructed_outputs() -> None:
    """Outputs as the domain builds them (constructed, shared category objects)."""
    agency = load_agencies().get(AgencyCode.BELASTINGDIENST)
    for q, categories in (
        (question(text=WEIRD), [DataCategory.QUESTION_TEXT]),
        (question(text=WEIRD), list(DataCategory)),
        (question(text=WEIRD, consent=None), list(DataCategory)),
    ):
        manifest = domain.build_manifest(categories, agency, q.consent, NOW)
        assignment = classify("belastingschuld").assignments[0]
        delivery = domain.deliver(q, assignment, AgencyCode.BELASTINGDIENST, manifest,
                                  pseudonym=None, at=NOW)  # fmt: skip
        audit = domain.audit_record(delivery, agency, trace=new_trace(), sender="urn:x", at=NOW)
        routed = domain.case_routed(q, AgencyCode.BELASTINGDIENST, [assignment], at=NOW)
        for message in (delivery, audit, routed):
            assert message_json(message) == message.model_dump_json().encode()


@pytest.mark.parametrize(
    "message",
    [
        DataErasureRequested(
            case_id="c",
            agency=AgencyCode.DUO,
            consent_id="x",
            categories=[DataCategory.CONTACT],
            requested_at=NOW,
        ),
        MessageDeadLettered(
            case_id="unknown",
            service="router",
            original_topic="t",
            partition=0,
            offset=3,
            error_class="X",
            message="bad",
            attempts=1,
            dead_lettered_at=NOW,
        ),
    ],
)
def test_to_record_equals_encode(message: Any) -> None:
    trace = new_trace()
    shared = RecordHeaders(b"urn:x", b"2026-11-02T10:00:00.000Z", trace.traceparent.encode())
    fast = to_record(message, "id-1", shared)
    assert fast == encode(message, source="urn:x", trace=trace, event_id="id-1", time=NOW)
    assert type(message).EVENT_TYPE in REGISTRY


def test_naive_clock_and_empty_routing_are_refused() -> None:
    q = question()
    agency = load_agencies().get(AgencyCode.DUO)
    manifest = domain.build_manifest([DataCategory.QUESTION_TEXT], agency, q.consent, NOW)
    with pytest.raises(ValueError):
        domain.case_routed(q, AgencyCode.DUO, [], at=NOW)
    assignment = classify(q.text).assignments[0]
    with pytest.raises(ValueError):
        domain.deliver(
            q, assignment, AgencyCode.DUO, manifest, pseudonym=None, at=NOW.replace(tzinfo=None)
        )


def test_manifest_tables_decide_like_decide_share() -> None:
    """build_manifest's per-agency tables give what decide_share gives, for every agency,
    category and a range of consents and withdrawals."""
    consents = [
        None,
        consent(),
        consent(categories=list(DataCategory), explicit=True),
        consent(categories=list(DataCategory), recipients=[AgencyCode.DUO]),
        consent(expires_at=NOW - timedelta(minutes=1)),
        consent(purpose="research"),
    ]
    withdrawn = {"c-1": domain.Withdrawal("c-1", frozenset({DataCategory.CONTACT}))}
    agencies = list(load_agencies().agencies)
    # special categories on a basis other than consent still need explicit consent (rule 4)
    public_task = LegalBasis(article=GdprBasis.PUBLIC_TASK)
    agencies.append(
        agencies[0].model_copy(
            update={
                "may_receive": [
                    CategoryPermission(category=c, basis=public_task) for c in DataCategory
                ]
            }
        )
    )
    for agency in agencies:
        for given in consents:
            for withdrawals in (None, withdrawn):
                manifest = domain.build_manifest(
                    list(DataCategory), agency, given, NOW, withdrawals
                )
                decisions = [
                    domain.decide_share(c, agency, given, NOW, withdrawals) for c in DataCategory
                ]
                assert manifest.shared == [d for d in decisions if isinstance(d, SharedCategory)]
                assert manifest.withheld == [
                    d for d in decisions if not isinstance(d, SharedCategory)
                ]
                assert SharingManifest.model_validate(manifest.model_dump()) == manifest


def test_trace_of_is_a_child_span() -> None:
    parent = new_trace()
    rec = encode(question(), source="urn:x", trace=parent)
    env = decode(rec.value, rec.headers)
    spans = {trace_of(Rec(rec.key, rec.value, list(rec.headers), 0), env) for _ in range(2000)}
    assert len(spans) == 2000
    for span in spans:
        assert span.trace_id == parent.trace_id and span.flags == parent.flags
        assert parse_traceparent(span.traceparent) == span
    orphan = trace_of(Rec(b"k", b"{}", [], 0))
    assert parse_traceparent(orphan.traceparent) == orphan


def test_fast_json_floats_and_zero_signs() -> None:
    for confidence in (0.0, -0.0, 1.0, 0.001, 1e-05, 0.551, 0.0, -0.0):
        assignment = AgencyAssignment(
            agency=AgencyCode.DUO, role=AgencyRole.LEAD, reasons=[], confidence=confidence
        )
        routed = domain.case_routed(question(), AgencyCode.DUO, [assignment], at=NOW)
        assert message_json(routed) == routed.model_dump_json().encode()
