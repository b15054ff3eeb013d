"""End to end: a question walks through intake, router and handoff as separate processes.

One stack (own Kafka, own Redis, three service processes) per module. Every test
waits on events (read_committed consumers), never on sleeps.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from e2e_invariants import (
    check_all,
    check_deliveries,
    expected_owners,
    of_case,
    settle,
    snapshot,
    wait_events,
)
from e2e_stack import Stack
from e2e_traffic import TrafficDriver, agency_key, make_question

from loket_schemas.events import (
    AcceptHandoff,
    AgencyRole,
    CaseDelivered,
    CaseRouted,
    ContactPerson,
    DataErasureRequested,
    DeclineHandoff,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    HandoffResolved,
    ResolveHandoff,
    RouteCause,
)
from loket_schemas.kafka import encode
from loket_schemas.topics import HANDOFF_RESPONSES, HANDOFFS, QUESTIONS, agency_topic
from loket_schemas.vocabulary import AgencyCode

pytestmark = [pytest.mark.e2e]

DESK_KEY = "dev-desk"
WAIT = 60.0


async def post_question(stack: Stack, body: dict[str, Any] | None = None) -> dict[str, Any]:
    driver = TrafficDriver(stack.url("intake"), retry_deadline_s=30)
    try:
        sub = driver.new_submission(body)
        await driver.submit(sub)
        assert sub.case_id, f"intake did not accept: {sub.final_error} {sub.statuses}"
        return {"case_id": sub.case_id, "reference": sub.reference, "status_url": sub.status_url}
    finally:
        await driver.aclose()


async def send_command(stack: Stack, command: Any) -> None:
    from aiokafka import AIOKafkaProducer

    rec = encode(command, source=f"urn:nld:loket:agency:{command.agency.value}")
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            stack.topic(HANDOFF_RESPONSES), rec.value, key=rec.key, headers=list(rec.headers)
        )
    finally:
        await producer.stop()


async def offered(stack: Stack, case_id: str, count: int = 1, **fields: Any) -> list[Any]:
    recs = await wait_events(
        stack.bootstrap,
        stack.topic(HANDOFFS),
        of_case(case_id, HandoffOffered, **fields),
        count=count,
        within=WAIT,
    )
    return [r.data for r in recs]


def question(text: str, **extra: Any) -> dict[str, Any]:
    _, body = make_question(random.Random(7), "fixed")
    body.update(
        {
            "channel": "balie",
            "initiative": "bibliotheek-rotterdam-centrale",
            "text": text,
            "urgent": False,
            "vulnerable": False,
        }
    )
    body.update(extra)
    return body


MULTI = (
    "Ik heb een studieschuld bij DUO en kan niet aflossen; mijn WW-uitkering van het UWV "
    "is gestopt en ik heb een boete van het CJIB."
)


async def test_question_reaches_every_chosen_agency_topic(shared_stack: Stack) -> None:
    stack = shared_stack
    body = question(
        MULTI,
        requester={"kind": "person", "bsn": "111222333", "contact": {"name": "A. Jansen"}},
        consent={"categories": ["question_text", "contact"], "purpose": "case_handling"},
    )
    accepted = await post_question(stack, body)
    case_id = accepted["case_id"]
    await wait_events(
        stack.bootstrap, stack.topic(QUESTIONS), of_case(case_id, (object,)), within=WAIT
    )
    [routed_rec] = await wait_events(
        stack.bootstrap,
        stack.topic(HANDOFFS),
        of_case(case_id, CaseRouted, cause=RouteCause.INITIAL),
        within=WAIT,
    )
    routed: CaseRouted = routed_rec.data  # type: ignore[assignment]
    assert routed.lead in {a.agency for a in routed.assignments}
    assert [a.role for a in routed.assignments].count(AgencyRole.LEAD) == 1
    for a in routed.assignments:
        [delivered] = await wait_events(
            stack.bootstrap,
            stack.topic(agency_topic(a.agency)),
            of_case(case_id, CaseDelivered),
            within=WAIT,
        )
        d: CaseDelivered = delivered.data  # type: ignore[assignment]
        assert d.agency == a.agency and d.role == a.role and d.lead == routed.lead
        assert delivered.key == case_id.encode()
    # one handoff offered per assignment
    offers = await offered(stack, case_id, count=len(routed.assignments))
    assert {o.agency for o in offers} == {a.agency for a in routed.assignments}
    snap = await snapshot(stack.bootstrap, stack.topic_prefix)
    assert check_deliveries(snap) == []


async def test_accept_over_http_and_resolve_over_kafka(shared_stack: Stack) -> None:
    stack = shared_stack
    case_id = (await post_question(stack, question(MULTI)))["case_id"]
    lead = next(o for o in await offered(stack, case_id) if o.role == AgencyRole.LEAD)
    async with httpx.AsyncClient(base_url=stack.url("handoff"), timeout=10) as http:
        # the owner stays the initiative until a named person at the lead accepts
        case = (await http.get(f"/api/v1/cases/{case_id}", headers={"X-API-Key": DESK_KEY})).json()
        assert case["owner"] == "initiative:bibliotheek-rotterdam-centrale"
        # another agency may not accept it
        other = AgencyCode.RDW if lead.agency != AgencyCode.RDW else AgencyCode.KVK
        r = await http.post(
            f"/api/v1/handoffs/{lead.handoff_id}/accept",
            json={"contact": {"name": "P. de Boer"}},
            headers={"X-API-Key": agency_key(other)},
        )
        assert r.status_code == 403
        r = await http.post(
            f"/api/v1/handoffs/{lead.handoff_id}/accept",
            json={"contact": {"name": "P. de Boer", "email": "p.deboer@example.nl"}},
            headers={"X-API-Key": agency_key(lead.agency)},
        )
        assert r.status_code == 200, r.text
        await wait_events(
            stack.bootstrap,
            stack.topic(HANDOFFS),
            of_case(case_id, HandoffAccepted, handoff_id=lead.handoff_id),
            within=WAIT,
        )
        case = (await http.get(f"/api/v1/cases/{case_id}", headers={"X-API-Key": DESK_KEY})).json()
        assert case["owner"] == f"agency:{lead.agency.value}"
        await send_command(
            stack,
            ResolveHandoff(
                case_id=case_id,
                handoff_id=lead.handoff_id,
                agency=lead.agency,
                summary="Betalingsregeling getroffen.",
            ),
        )
        await wait_events(
            stack.bootstrap,
            stack.topic(HANDOFFS),
            of_case(case_id, HandoffResolved, handoff_id=lead.handoff_id),
            within=WAIT,
        )
        case = (await http.get(f"/api/v1/cases/{case_id}", headers={"X-API-Key": DESK_KEY})).json()
        kinds = [item["kind"] for item in case["timeline"]]
        assert len(kinds) >= 3, kinds
        states = {h["handoff_id"]: h["state"] for h in case["handoffs"]}
        assert states[lead.handoff_id] == "resolved"


async def test_two_declines_escalate_to_maatwerkloket_never_back(shared_stack: Stack) -> None:
    stack = shared_stack
    text = "Mijn WW-uitkering van het UWV is gestopt en ik weet niet waarom."
    case_id = (await post_question(stack, question(text)))["case_id"]
    first = next(o for o in await offered(stack, case_id) if o.role == AgencyRole.LEAD)
    suggested = AgencyCode.GEMEENTE if first.agency != AgencyCode.GEMEENTE else AgencyCode.SVB
    # 1st decline over Kafka: re-routed to the suggested agency
    await send_command(
        stack,
        DeclineHandoff(
            case_id=case_id,
            handoff_id=first.handoff_id,
            agency=first.agency,
            reason="Geen taak van ons: dit is bijstand.",
            suggested_agency=suggested,
        ),
    )
    [second] = await offered(stack, case_id, agency=suggested)
    [reroute] = await wait_events(
        stack.bootstrap,
        stack.topic(HANDOFFS),
        of_case(case_id, CaseRouted, cause=RouteCause.DECLINE),
        within=WAIT,
    )
    assert reroute.data.replaces_handoff_id == first.handoff_id  # type: ignore[union-attr]
    await wait_events(
        stack.bootstrap,
        stack.topic(agency_topic(suggested)),
        of_case(case_id, CaseDelivered, cause=RouteCause.DECLINE),
        within=WAIT,
    )
    # 2nd decline over HTTP, suggesting the agency that declined first: escalation instead
    async with httpx.AsyncClient(base_url=stack.url("handoff"), timeout=10) as http:
        r = await http.post(
            f"/api/v1/handoffs/{second.handoff_id}/decline",
            json={"reason": "Ook niet van ons.", "suggested_agency": first.agency.value},
            headers={"X-API-Key": agency_key(suggested)},
        )
        assert r.status_code == 200, r.text
        [declined] = await wait_events(
            stack.bootstrap,
            stack.topic(HANDOFFS),
            of_case(case_id, HandoffDeclined, handoff_id=second.handoff_id),
            within=WAIT,
        )
        assert declined.data.decline_count == 2  # type: ignore[union-attr]
        await wait_events(
            stack.bootstrap,
            stack.topic(HANDOFFS),
            of_case(case_id, HandoffEscalated, escalate_to=AgencyCode.MAATWERKLOKET),
            within=WAIT,
        )
        [mwl] = await offered(stack, case_id, agency=AgencyCode.MAATWERKLOKET)
        # maatwerkloket cannot decline: it escalates manually
        r = await http.post(
            f"/api/v1/handoffs/{mwl.handoff_id}/decline",
            json={"reason": "Niet van ons.", "suggested_agency": "uwv"},
            headers={"X-API-Key": agency_key(AgencyCode.MAATWERKLOKET)},
        )
        assert r.status_code == 409, r.text
        await send_command(
            stack,
            AcceptHandoff(
                case_id=case_id,
                handoff_id=mwl.handoff_id,
                agency=AgencyCode.MAATWERKLOKET,
                contact=ContactPerson(name="Regievoerder R. Smit"),
            ),
        )
        await wait_events(
            stack.bootstrap,
            stack.topic(HANDOFFS),
            of_case(case_id, HandoffAccepted, handoff_id=mwl.handoff_id),
            within=WAIT,
        )
        case = (await http.get(f"/api/v1/cases/{case_id}", headers={"X-API-Key": DESK_KEY})).json()
        assert case["decline_count"] == 2
        assert set(case["declined_by"]) == {first.agency.value, suggested.value}
    snap = await snapshot(stack.bootstrap, stack.topic_prefix)
    offers = [o for o in snap.events(HANDOFFS, HandoffOffered) if o.case_id == case_id]
    assert [o.agency for o in offers].count(first.agency) == 1  # never offered back


async def test_timeline_and_public_status_page(shared_stack: Stack) -> None:
    stack = shared_stack
    accepted = await post_question(stack, question(MULTI))
    case_id, reference, status_url = (
        accepted["case_id"],
        accepted["reference"],
        accepted["status_url"],
    )
    assert status_url.startswith(stack.handoff_public_url + f"/status/{reference}?token=")
    await offered(stack, case_id)
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(status_url)
        assert page.status_code == 200
        assert 'lang="nl"' in page.text and reference in page.text
        bad = await http.get(status_url[:-4] + "0000")
        assert bad.status_code == 404
        case = await http.get(
            f"{stack.url('handoff')}/api/v1/cases/{case_id}", headers={"X-API-Key": DESK_KEY}
        )
        assert case.status_code == 200
        detail = case.json()
        assert detail["reference"] == reference
        assert detail["open_handoffs"], detail
        assert detail["timeline"], detail
        # no personal data in the public status
        token = status_url.split("token=")[1]
        public = await http.get(
            f"{stack.url('handoff')}/api/v1/status/{reference}", params={"token": token}
        )
        assert public.status_code == 200
        assert "111222333" not in public.text


async def test_consent_withdrawal_requests_erasure(shared_stack: Stack) -> None:
    stack = shared_stack
    body = question(
        MULTI,
        requester={"kind": "person", "bsn": "123456782", "contact": {"name": "B. Bakker"}},
        consent={"categories": ["identity", "contact", "question_text", "debts"]},
    )
    accepted = await post_question(stack, body)
    case_id = accepted["case_id"]
    [routed] = await wait_events(
        stack.bootstrap, stack.topic(HANDOFFS), of_case(case_id, CaseRouted), within=WAIT
    )
    async with httpx.AsyncClient(base_url=stack.url("intake"), timeout=10) as http:
        r = await http.post(
            f"/api/v1/cases/{case_id}/consent/withdraw",
            headers={"X-API-Key": "dev-bibliotheek-rotterdam-centrale"},
        )
        assert r.status_code == 202, r.text
    snap = await snapshot(stack.bootstrap, stack.topic_prefix)
    consent_recipients = {
        d.agency
        for d in snap.deliveries
        if d.case_id == case_id and d.manifest.consent_reference is not None
    }
    for agency in consent_recipients:
        await wait_events(
            stack.bootstrap,
            stack.topic(agency_topic(agency)),
            of_case(case_id, DataErasureRequested),
            within=WAIT,
        )
    assert routed.data is not None


async def test_mixed_traffic_keeps_all_invariants(shared_stack: Stack) -> None:
    """200 questions from all initiatives with agency responders; then every invariant."""
    from e2e_traffic import AgencyResponders

    stack = shared_stack
    responders = AgencyResponders(stack.bootstrap, stack.url("handoff"))
    await responders.start()
    driver = TrafficDriver(stack.url("intake"), seed=42)
    try:
        subs = await driver.run(200, rate=100)
        assert not driver.failed, [s.final_error for s in driver.failed][:5]
        cases = {s.case_id for s in subs if s.case_id}
        await wait_events(
            stack.bootstrap,
            stack.topic(HANDOFFS),
            lambda r: isinstance(r.data, CaseRouted) and r.data.case_id in cases,
            count=len(cases),
            within=120,
        )
        await responders.idle(60)
        await settle(stack.bootstrap, stack.topic_prefix)
    finally:
        await responders.stop()
        await driver.aclose()
    assert not responders.errors, responders.errors[:5]
    # every policy path ran, on this test's cases only (the stack holds earlier tests' cases)
    assert {"accept_http", "accept_kafka", "decline", "resolve", "ignore"} <= set(
        responders.actions
    ), responders.actions
    assert responders.own_cases == cases
    snap = await snapshot(stack.bootstrap, stack.topic_prefix)
    assert check_all(snap, driver.accepted) == []
    owners = expected_owners(snap)
    async with httpx.AsyncClient(base_url=stack.url("handoff"), timeout=10) as http:
        for case_id in list(cases)[:40]:
            r = await http.get(f"/api/v1/cases/{case_id}", headers={"X-API-Key": DESK_KEY})
            assert r.status_code == 200
            assert r.json()["owner"] == owners[case_id]


async def test_router_escalates_when_decline_and_escalation_share_a_batch(
    shared_stack: Stack,
) -> None:
    """handoff publishes the 2nd HandoffDeclined and its HandoffEscalated back to back; the
    router's re-route loop often reads both in one batch. The escalation must still be
    routed to maatwerkloket (regression: both used one done-marker per handoff id)."""
    from datetime import UTC, datetime

    from aiokafka import AIOKafkaProducer

    from loket_schemas.events import EscalationReason

    stack = shared_stack
    case_id = (await post_question(stack, question("Mijn WW-uitkering van het UWV is gestopt.")))[
        "case_id"
    ]
    [first] = await offered(stack, case_id)
    now = datetime.now(UTC)
    hid = first.handoff_id
    declined = HandoffDeclined(
        case_id=case_id,
        handoff_id=hid,
        agency=first.agency,
        occurred_at=now,
        reason="Niet van ons.",
        suggested_agency=AgencyCode.GEMEENTE,
        declined_by=[AgencyCode.GEMEENTE, first.agency],
        decline_count=2,
    )
    escalated = HandoffEscalated(
        case_id=case_id,
        handoff_id=hid,
        agency=first.agency,
        occurred_at=now,
        reason=EscalationReason.BOUNCE_LIMIT,
        escalate_to=AgencyCode.MAATWERKLOKET,
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=50)
    await producer.start()
    try:
        futures = []
        for ev in (declined, escalated):
            rec = encode(ev, source="urn:nld:loket:service:handoff")
            futures.append(
                await producer.send(
                    stack.topic(HANDOFFS), rec.value, key=rec.key, headers=list(rec.headers)
                )
            )
        for f in futures:
            await f
    finally:
        await producer.stop()
    [routed] = await wait_events(
        stack.bootstrap,
        stack.topic(HANDOFFS),
        of_case(case_id, CaseRouted, cause=RouteCause.ESCALATION),
        within=30,
    )
    assert routed.data.assignments[0].agency == AgencyCode.MAATWERKLOKET  # type: ignore[union-attr]
