# ruff: noqa: E501
"""Router on REAL Kafka and Redis: routing, DLQ, re-routing, consent withdrawal."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from router_kafka_helpers import Rec, fixed_classifier, publish, publish_raw, snapshot, wait_for

from loket_router.app import create_app
from loket_router.settings import RouterSettings
from loket_schemas import topics
from loket_schemas.events import (
    CaseDelivered,
    CaseRouted,
    ConsentWithdrawn,
    DataErasureRequested,
    DataShareLogged,
    EscalationReason,
    HandoffDeclined,
    HandoffEscalated,
    MessageDeadLettered,
    QuestionReceived,
)
from loket_schemas.tracing import new_trace
from loket_schemas.vocabulary import (
    AgencyCode,
    ConsentRecord,
    ContactDetails,
    DataCategory,
    PersonRequester,
)

pytestmark = pytest.mark.integration

A = AgencyCode
BSN = "111222333"


class Router:
    def __init__(self, app: Any, settings: RouterSettings) -> None:
        self.app = app
        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap

    def t(self, name: str) -> str:
        return self.settings.topic(name)

    @property
    def outputs(self) -> list[str]:
        return [
            self.t(n) for n in (topics.HANDOFFS, topics.AUDIT, topics.DLQ, *topics.AGENCY_TOPICS)
        ]


@pytest.fixture
async def router(loket_settings: dict[str, Any], make_topics: Any) -> AsyncIterator[Router]:
    await make_topics(*topics.ALL_TOPICS)
    settings = RouterSettings(**loket_settings, poll_timeout_ms=100, batch_max_records=100)
    app = create_app(settings)
    service = app.state.router
    service.ctx.classify = fixed_classifier(A.BELASTINGDIENST, A.UWV)
    async with app.router.lifespan_context(app):
        for loop in service.loops:
            await loop.wait_running()
        yield Router(app, settings)


def question(case_id: str | None = None, **kw: Any) -> QuestionReceived:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "case_id": case_id or str(uuid.uuid4()),
        "reference": "LK-AAAA-BBBB",
        "channel": "balie",
        "initiative_id": "bibliotheek-utrecht-neude",
        "text": "Ik heb een belastingschuld en ben mijn baan kwijt.",
        "requester": PersonRequester(bsn=BSN, contact=ContactDetails(email="a@example.nl")),
        "consent": ConsentRecord(
            consent_id="c-" + uuid.uuid4().hex[:8],
            categories=[DataCategory.QUESTION_TEXT, DataCategory.CONTACT],
            given_at=now - timedelta(minutes=5),
        ),
        "received_at": now,
    }
    base.update(kw)
    return QuestionReceived(**base)


def of_case(recs: list[Rec], case_id: str, ce_type: str | None = None) -> list[Rec]:
    return [r for r in recs if r.key == case_id and (ce_type is None or r.type == ce_type)]


async def test_routed_question_produces_deliveries_audit_and_case_routed(router: Router) -> None:
    q = question()
    trace = new_trace()
    from loket_schemas.kafka import encode

    rec = encode(q, source="urn:nld:loket:service:intake", trace=trace)
    await publish_raw(
        router.bootstrap, router.t(topics.QUESTIONS), [(rec.key, rec.value, list(rec.headers))]
    )
    recs = await wait_for(
        router.bootstrap, router.outputs,
        lambda rs: len(of_case(rs, q.case_id, CaseRouted.EVENT_TYPE)) == 1,
    )  # fmt: skip
    mine = of_case(recs, q.case_id)
    deliveries = [r for r in mine if r.type == CaseDelivered.EVENT_TYPE]
    audits = [r for r in mine if r.type == DataShareLogged.EVENT_TYPE]
    routed = [r for r in mine if r.type == CaseRouted.EVENT_TYPE]
    assert sorted(r.topic for r in deliveries) == sorted(
        [router.t(topics.agency_topic(A.BELASTINGDIENST)), router.t(topics.agency_topic(A.UWV))]
    )
    assert len(audits) == 2 and len(routed) == 1
    assert all(r.topic == router.t(topics.AUDIT) for r in audits)
    assert routed[0].topic == router.t(topics.HANDOFFS)
    for r in mine:  # CloudEvents binary mode + the same trace
        for h in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject"):
            assert r.headers.get(h), h
        assert r.headers["ce_source"] == "urn:nld:loket:service:router"
        assert r.headers["ce_subject"] == q.case_id
        assert r.headers["content-type"] == "application/json"
        assert r.headers["traceparent"].split("-")[1] == trace.trace_id
    cr = CaseRouted.model_validate(routed[0].data)
    assert cr.lead == A.BELASTINGDIENST and [a.agency for a in cr.assignments] == [
        A.BELASTINGDIENST,
        A.UWV,
    ]
    by_agency = {
        CaseDelivered.model_validate(r.data).agency: CaseDelivered.model_validate(r.data)
        for r in deliveries
    }
    # belastingdienst: text on consent (given), BSN on public task
    bd = by_agency[A.BELASTINGDIENST]
    assert bd.text == q.text and isinstance(bd.requester, PersonRequester)
    assert bd.requester.bsn == BSN
    assert bd.manifest.consent_reference == q.consent.consent_id  # type: ignore[union-attr]
    # audit: pseudonym, never the BSN; processing activity from the catalog
    for r in audits:
        assert BSN.encode() not in (r.value or b"")
        log = DataShareLogged.model_validate(r.data)
        assert log.trace_id == trace.trace_id
        assert log.data_subject_pseudonym and log.data_subject_pseudonym.startswith("ps1:")
        assert log.processing_activity_id == f"va-loket-doorverwijzing-{log.receiver.value}"


async def test_poison_goes_to_dlq_and_the_partition_keeps_flowing(router: Router) -> None:
    good = question()
    key = good.case_id.encode()
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", b"x-1"), ("ce_source", b"urn:test"),
        ("ce_type", QuestionReceived.EVENT_TYPE.encode()), ("content-type", b"application/json"),
    ]  # fmt: skip
    from loket_schemas.kafka import encode

    ok = encode(good, source="urn:nld:loket:service:intake")
    metas = await publish_raw(
        router.bootstrap,
        router.t(topics.QUESTIONS),
        [
            (key, b"{not json", headers),  # bad JSON
            (key, b"{}", []),  # missing headers
            (key, b"{}", [*headers[:3], ("ce_type", b"nl.loket.question.received.v9")]),
            (key, b'{"case_id": "x"}', headers),  # fails validation
            (key, ok.value, list(ok.headers)),  # the valid one, same partition, after them
        ],
    )
    recs = await wait_for(
        router.bootstrap, router.outputs,
        lambda rs: len(of_case(rs, good.case_id, CaseRouted.EVENT_TYPE)) == 1
        and len([r for r in rs if r.type == MessageDeadLettered.EVENT_TYPE]) >= 4,
    )  # fmt: skip
    dlq = [
        MessageDeadLettered.model_validate(r.data) for r in recs if r.topic == router.t(topics.DLQ)
    ]
    assert len(dlq) == 4
    assert {(d.original_topic, d.partition, d.offset) for d in dlq} == {
        (m.topic, m.partition, m.offset) for m in metas[:4]
    }
    assert {d.error_class for d in dlq} == {
        "InvalidPayload",
        "MissingAttribute",
        "UnknownEventType",
    }
    assert all(d.service == "router" and d.case_id == good.case_id for d in dlq)
    assert base64.b64decode(dlq[0].original_value_b64 or "") in {
        b"{not json",
        b"{}",
        b'{"case_id": "x"}',
    }


async def test_same_case_published_twice_is_routed_once(router: Router) -> None:
    q = question()
    await publish(router.bootstrap, router.t(topics.QUESTIONS), [q])
    await wait_for(
        router.bootstrap, [router.t(topics.HANDOFFS)], lambda rs: len(of_case(rs, q.case_id)) == 1
    )
    await publish(router.bootstrap, router.t(topics.QUESTIONS), [q, question(text="marker")])
    marker_routed = lambda rs: len([r for r in rs if r.type == CaseRouted.EVENT_TYPE]) == 2  # noqa: E731
    recs = await wait_for(router.bootstrap, router.outputs, marker_routed)
    assert len(of_case(recs, q.case_id, CaseRouted.EVENT_TYPE)) == 1
    assert len(of_case(recs, q.case_id, CaseDelivered.EVENT_TYPE)) == 2


async def test_reroute_on_decline_and_on_escalation(router: Router) -> None:
    q = question()
    await publish(router.bootstrap, router.t(topics.QUESTIONS), [q])
    await wait_for(
        router.bootstrap, [router.t(topics.HANDOFFS)], lambda rs: len(of_case(rs, q.case_id)) == 1
    )
    now = datetime.now(UTC)
    declined = HandoffDeclined(
        case_id=q.case_id, handoff_id="h-bd", agency=A.BELASTINGDIENST, occurred_at=now,
        reason="geen belastingzaak", suggested_agency=A.UWV,  # UWV already handles it
        declined_by=[A.BELASTINGDIENST], decline_count=1,
    )  # fmt: skip
    escalated = HandoffEscalated(
        case_id=q.case_id, handoff_id="h-uwv", agency=A.UWV, occurred_at=now,
        reason=EscalationReason.SLA, escalate_to=A.MAATWERKLOKET,
    )  # fmt: skip
    await publish(
        router.bootstrap,
        router.t(topics.HANDOFFS),
        [declined],
        source="urn:nld:loket:service:handoff",
    )
    recs = await wait_for(
        router.bootstrap, router.outputs,
        lambda rs: len(of_case(rs, q.case_id, CaseRouted.EVENT_TYPE)) == 2,
    )  # fmt: skip
    routed = [
        CaseRouted.model_validate(r.data) for r in of_case(recs, q.case_id, CaseRouted.EVENT_TYPE)
    ]
    rr = next(r for r in routed if r.cause.value == "decline")
    assert rr.replaces_handoff_id == "h-bd"
    assert [(a.agency, a.role.value) for a in rr.assignments] == [(A.MAATWERKLOKET, "lead")]
    mw = [r for r in of_case(recs, q.case_id, CaseDelivered.EVENT_TYPE)
          if r.topic == router.t(topics.agency_topic(A.MAATWERKLOKET))]  # fmt: skip
    assert len(mw) == 1
    d = CaseDelivered.model_validate(mw[0].data)
    assert d.cause.value == "decline" and d.text == q.text  # question_text on public task
    # escalation of the supporting agency: maatwerkloket takes the supporting role
    await publish(
        router.bootstrap,
        router.t(topics.HANDOFFS),
        [escalated],
        source="urn:nld:loket:service:handoff",
    )
    recs = await wait_for(
        router.bootstrap, router.outputs,
        lambda rs: len(of_case(rs, q.case_id, CaseRouted.EVENT_TYPE)) == 3,
    )  # fmt: skip
    routed = [
        CaseRouted.model_validate(r.data) for r in of_case(recs, q.case_id, CaseRouted.EVENT_TYPE)
    ]
    esc = next(r for r in routed if r.cause.value == "escalation")
    assert esc.replaces_handoff_id == "h-uwv"
    assert [(a.agency, a.role.value) for a in esc.assignments] == [(A.MAATWERKLOKET, "supporting")]
    assert len(of_case(recs, q.case_id, DataShareLogged.EVENT_TYPE)) == 4


async def test_reroute_of_unknown_case_withholds_everything(router: Router) -> None:
    cid = str(uuid.uuid4())
    declined = HandoffDeclined(
        case_id=cid, handoff_id="h-x", agency=A.DUO, occurred_at=datetime.now(UTC),
        reason="niet bij ons", suggested_agency=A.SVB, declined_by=[A.DUO], decline_count=1,
    )  # fmt: skip
    await publish(
        router.bootstrap,
        router.t(topics.HANDOFFS),
        [declined],
        source="urn:nld:loket:service:handoff",
    )
    recs = await wait_for(
        router.bootstrap, router.outputs,
        lambda rs: len(of_case(rs, cid, CaseDelivered.EVENT_TYPE)) == 1,
    )  # fmt: skip
    d = CaseDelivered.model_validate(of_case(recs, cid, CaseDelivered.EVENT_TYPE)[0].data)
    assert d.agency == A.SVB and d.manifest.shared == []
    assert {w.reason.value for w in d.manifest.withheld} == {"not_provided"}
    assert d.text is None and d.requester is None


async def test_consent_withdrawal_requests_erasure(router: Router) -> None:
    q = question()
    assert q.consent is not None
    await publish(router.bootstrap, router.t(topics.QUESTIONS), [q])
    await wait_for(
        router.bootstrap, [router.t(topics.HANDOFFS)], lambda rs: len(of_case(rs, q.case_id)) == 1
    )
    withdrawn = ConsentWithdrawn(
        case_id=q.case_id, consent_id=q.consent.consent_id, withdrawn_at=datetime.now(UTC)
    )
    await publish(router.bootstrap, router.t(topics.CONSENT), [withdrawn])
    recs = await wait_for(
        router.bootstrap, router.outputs,
        lambda rs: len(of_case(rs, q.case_id, DataErasureRequested.EVENT_TYPE)) == 1,
    )  # fmt: skip
    [er] = of_case(recs, q.case_id, DataErasureRequested.EVENT_TYPE)
    req = DataErasureRequested.model_validate(er.data)
    # only belastingdienst received data on consent (question_text); uwv on public task
    assert er.topic == router.t(topics.agency_topic(A.BELASTINGDIENST))
    assert req.agency == A.BELASTINGDIENST and req.categories == [DataCategory.QUESTION_TEXT]
    # future shares of this case no longer rest on the withdrawn consent
    declined = HandoffDeclined(
        case_id=q.case_id, handoff_id="h-uwv", agency=A.UWV, occurred_at=datetime.now(UTC),
        reason="niet bij ons", suggested_agency=A.DUO, declined_by=[A.UWV], decline_count=1,
    )  # fmt: skip
    await publish(
        router.bootstrap,
        router.t(topics.HANDOFFS),
        [declined],
        source="urn:nld:loket:service:handoff",
    )
    recs = await wait_for(
        router.bootstrap, router.outputs,
        lambda rs: any(r.topic == router.t(topics.agency_topic(A.DUO)) for r in of_case(rs, q.case_id)),
    )  # fmt: skip
    [duo] = [r for r in of_case(recs, q.case_id) if r.topic == router.t(topics.agency_topic(A.DUO))]
    d = CaseDelivered.model_validate(duo.data)
    assert {w.category: w.reason.value for w in d.manifest.withheld}[
        DataCategory.QUESTION_TEXT
    ] == "consent_withdrawn"
    assert d.text is None
    assert json.loads(duo.value or b"{}")["manifest"]["consent_reference"] is None


async def test_metrics_and_health(router: Router) -> None:
    import httpx

    q = question()
    await publish(router.bootstrap, router.t(topics.QUESTIONS), [q])
    await wait_for(
        router.bootstrap, [router.t(topics.HANDOFFS)], lambda rs: len(of_case(rs, q.case_id)) == 1
    )
    transport = httpx.ASGITransport(app=router.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        text = (await client.get("/metrics")).text
    assert "loket_router_questions_routed_total 1.0" in text
    assert 'loket_router_deliveries_total{agency="uwv"} 1.0' in text
    assert "loket_router_transaction_seconds_bucket" in text
    _ = snapshot  # imported for symmetry with other tests
