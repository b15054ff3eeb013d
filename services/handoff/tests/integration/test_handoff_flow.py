"""Offer -> accept -> resolve through Kafka and through HTTP, on real Kafka and Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from handoff_itkit import (
    Producer,
    case_routed,
    client,
    eventually,
    handoff_events,
    running,
    settings_for,
    store_of,
)

from loket_handoff.domain import HandoffState, agency_owner, handoff_id_for
from loket_handoff.status import status_token
from loket_schemas import topics
from loket_schemas.events import (
    AcceptHandoff,
    ContactPerson,
    DeclineHandoff,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    HandoffResolved,
    HandoffResponseRejected,
    ResolveHandoff,
    RouteCause,
)
from loket_schemas.vocabulary import AgencyCode

pytestmark = pytest.mark.integration


async def test_offer_accept_resolve_through_kafka(loket_settings: dict[str, Any]) -> None:
    settings = settings_for(loket_settings)
    case_id = str(uuid.uuid4())
    async with (
        running(settings) as app,
        Producer(settings.kafka_bootstrap, settings.topic_prefix) as producer,
    ):
        store = store_of(app)
        await producer.send(topics.HANDOFFS, case_routed(case_id, supporting=(AgencyCode.SVB,)))
        hid = handoff_id_for(case_id, AgencyCode.UWV, 0)
        offered = await eventually(lambda: store.get_handoff(hid), what="offer")
        assert offered.state is HandoffState.OFFERED
        await producer.send(
            topics.HANDOFF_RESPONSES,
            AcceptHandoff(
                case_id=case_id,
                handoff_id=hid,
                agency=AgencyCode.UWV,
                contact=ContactPerson(name="Anna de Vries"),
            ),
            source="agency:uwv",
        )

        async def accepted() -> Any:
            h = await store.get_handoff(hid)
            return h if h and h.state is HandoffState.ACCEPTED else None

        await eventually(accepted, what="accepted")
        case = await store.get_case(case_id)
        assert case is not None and case.owner == agency_owner(AgencyCode.UWV)
        await producer.send(
            topics.HANDOFF_RESPONSES,
            ResolveHandoff(case_id=case_id, handoff_id=hid, agency=AgencyCode.UWV, summary="ok"),
            source="agency:uwv",
        )
        # an agency answering for another agency's handoff is rejected on Kafka
        await producer.send(
            topics.HANDOFF_RESPONSES,
            ResolveHandoff(case_id=case_id, handoff_id=hid, agency=AgencyCode.SVB),
            source="agency:svb",
        )
        events = await handoff_events(
            settings.kafka_bootstrap,
            settings.topic_prefix,
            lambda e: (
                e.data.case_id == case_id
                and isinstance(
                    e.data,
                    HandoffOffered | HandoffAccepted | HandoffResolved | HandoffResponseRejected,
                )
            ),
            count=5,
        )
        kinds = [type(e.data).__name__ for e in events]
        assert kinds.count("HandoffOffered") == 2
        assert "HandoffAccepted" in kinds and "HandoffResolved" in kinds
        assert "HandoffResponseRejected" in kinds
        assert all(e.attributes.subject == case_id for e in events)
        timeline = await store.timeline(case_id)
        assert [t.kind for t in timeline][:3] == ["routed", "offered", "offered"]
        # every event applied exactly once although it came back through the consumer
        assert len({t.event_id for t in timeline}) == len(timeline)


async def test_http_flow_isolation_and_illegal_transitions(loket_settings: dict[str, Any]) -> None:
    settings = settings_for(loket_settings)
    case_id = str(uuid.uuid4())
    async with (
        running(settings) as app,
        Producer(settings.kafka_bootstrap, settings.topic_prefix) as producer,
        client(app) as http,
    ):
        store = store_of(app)
        await producer.send(topics.HANDOFFS, case_routed(case_id, reference="LK-HTTP-0001"))
        hid = handoff_id_for(case_id, AgencyCode.UWV, 0)
        await eventually(lambda: store.get_handoff(hid), what="offer")
        uwv = {"X-API-Key": "dev-uwv"}
        svb = {"X-API-Key": "dev-svb"}
        # auth and isolation
        r = await http.post(f"/api/v1/handoffs/{hid}/accept", json={"contact": {"name": "A"}})
        assert r.status_code == 401
        r = await http.post(
            f"/api/v1/handoffs/{hid}/accept", json={"contact": {"name": "A"}}, headers=svb
        )
        assert r.status_code == 403
        r = await http.get("/api/v1/handoffs?agency=uwv", headers=svb)
        assert r.status_code == 403
        r = await http.post(
            "/api/v1/handoffs/unknown/accept", json={"contact": {"name": "A"}}, headers=uwv
        )
        assert r.status_code == 404
        # 409 before acceptance, 422 for a decline without reason
        r = await http.post(f"/api/v1/handoffs/{hid}/resolve", json={}, headers=uwv)
        assert r.status_code == 409 and "offered" in r.json()["detail"]
        r = await http.post(f"/api/v1/handoffs/{hid}/decline", json={"reason": "x"}, headers=uwv)
        assert r.status_code == 422
        # list, accept, duplicate accept, resolve
        r = await http.get("/api/v1/handoffs?state=offered", headers=uwv)
        assert r.status_code == 200 and [h["handoff_id"] for h in r.json()["handoffs"]] == [hid]
        body = {"contact": {"name": "Anna de Vries"}}
        r = await http.post(f"/api/v1/handoffs/{hid}/accept", json=body, headers=uwv)
        assert r.status_code == 200, r.text
        assert r.json()["handoff"]["state"] == "accepted" and not r.json()["duplicate"]
        r = await http.post(f"/api/v1/handoffs/{hid}/accept", json=body, headers=uwv)
        assert r.status_code == 200 and r.json()["duplicate"]
        r = await http.post(
            f"/api/v1/handoffs/{hid}/decline",
            json={"reason": "no", "suggested_agency": "svb"},
            headers=uwv,
        )
        assert r.status_code == 409
        # public status: plain Dutch, no personal data; bad token 404
        token = status_token("LK-HTTP-0001", settings.pseudonym_key.get_secret_value())
        r = await http.get(f"/api/v1/status/LK-HTTP-0001?token={token}")
        assert r.status_code == 200 and r.json()["status"] == "in_behandeling"
        assert "Anna" not in r.text
        r = await http.get("/api/v1/status/LK-HTTP-0001?token=000000000000000000000000")
        assert r.status_code == 404
        r = await http.get(f"/status/LK-HTTP-0001?token={token}")
        assert r.status_code == 200 and 'lang="nl"' in r.text
        r = await http.post(f"/api/v1/handoffs/{hid}/resolve", json={"summary": "ok"}, headers=uwv)
        assert r.status_code == 200 and r.json()["handoff"]["state"] == "resolved"
        # desk view: timeline in order, owner
        r = await http.get(f"/api/v1/cases/{case_id}", headers={"X-API-Key": "dev-desk"})
        assert r.status_code == 200
        case = r.json()
        assert case["owner"] == "agency:uwv"
        assert [t["kind"] for t in case["timeline"]] == [
            "routed",
            "offered",
            "accepted",
            "resolved",
        ]
        r = await http.get(f"/api/v1/cases/{case_id}", headers=uwv)
        assert r.status_code == 403


async def test_decline_twice_escalates_to_maatwerkloket(loket_settings: dict[str, Any]) -> None:
    settings = settings_for(loket_settings)
    case_id = str(uuid.uuid4())
    async with (
        running(settings) as app,
        Producer(settings.kafka_bootstrap, settings.topic_prefix) as producer,
        client(app) as http,
    ):
        store = store_of(app)
        await producer.send(topics.HANDOFFS, case_routed(case_id))
        first = handoff_id_for(case_id, AgencyCode.UWV, 0)
        await eventually(lambda: store.get_handoff(first), what="offer")
        r = await http.post(
            f"/api/v1/handoffs/{first}/decline",
            json={"reason": "niet onze taak", "suggested_agency": "svb"},
            headers={"X-API-Key": "dev-uwv"},
        )
        assert r.status_code == 200, r.text
        # the router would re-route to svb: simulate its CaseRouted(cause=decline)
        reroute = case_routed(case_id, lead=AgencyCode.SVB).model_copy(
            update={"cause": RouteCause.DECLINE, "replaces_handoff_id": first}
        )
        await producer.send(topics.HANDOFFS, reroute)
        second = handoff_id_for(case_id, AgencyCode.SVB, 1)
        await eventually(lambda: store.get_handoff(second), what="second offer")
        await producer.send(
            topics.HANDOFF_RESPONSES,
            DeclineHandoff(
                case_id=case_id,
                handoff_id=second,
                agency=AgencyCode.SVB,
                reason="ook niet",
                suggested_agency=AgencyCode.UWV,
            ),
            source="agency:svb",
        )
        events = await handoff_events(
            settings.kafka_bootstrap,
            settings.topic_prefix,
            lambda e: (
                e.data.case_id == case_id and isinstance(e.data, HandoffDeclined | HandoffEscalated)
            ),
            count=3,
        )
        declined = [e.data for e in events if isinstance(e.data, HandoffDeclined)]
        assert [d.decline_count for d in declined] == [1, 2]
        assert declined[1].declined_by == [AgencyCode.UWV, AgencyCode.SVB]
        escalated = [e.data for e in events if isinstance(e.data, HandoffEscalated)]
        assert escalated[0].reason.value == "bounce_limit"
        assert escalated[0].escalate_to is AgencyCode.MAATWERKLOKET
