"""Subscriber wiring with FastStream's TestKafkaBroker (in-memory Kafka; Redis is real).

Checks decode -> handler -> named publisher, poison -> DLQ, invalid command -> rejection,
and the OpenAPI description of the HTTP API.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from faststream.kafka import TestKafkaBroker

from loket_handoff.app import create_app
from loket_handoff.domain import handoff_id_for
from loket_handoff.settings import HandoffSettings
from loket_schemas import topics
from loket_schemas.events import AgencyAssignment, AgencyRole, CaseRouted
from loket_schemas.kafka import decode, encode, service_source
from loket_schemas.vocabulary import AgencyCode


def make_app(redis_url: str, prefix: str) -> Any:
    settings = HandoffSettings(
        redis_url=redis_url, redis_key_prefix=prefix, topic_prefix="", handoff_dev_keys=True
    )
    return create_app(settings)


def published(mock: Any) -> list[Any]:
    out = []
    for call in mock.call_args_list:
        body = call.args[0]
        if isinstance(body, bytes | str):
            try:
                body = json.loads(body)
            except ValueError:
                continue
        out.append(body)
    return out


async def test_case_routed_offers_and_poison_is_dead_lettered(
    redis_url: str, redis_prefix: str
) -> None:
    app = make_app(redis_url, redis_prefix)
    store = app.state.handoff_store
    await store.mark_ready()  # no rebuild from (in-memory) Kafka in this tier
    broker = app.state.broker
    pubs = app.state.handoff_publishers
    case_id = str(uuid.uuid4())
    routed = CaseRouted(
        case_id=case_id,
        reference="LK-COMP-0001",
        initiative_id="bibliotheek-rotterdam-centrale",
        lead=AgencyCode.DUO,
        assignments=[AgencyAssignment(agency=AgencyCode.DUO, role=AgencyRole.LEAD, confidence=1)],
        routed_at=datetime.now(UTC),
    )
    record = encode(routed, source=service_source("router"))
    try:
        async with TestKafkaBroker(broker) as br:
            await br.publish(
                record.value, topics.HANDOFFS, key=record.key, headers=record.headers_dict()
            )
            bodies = [b for b in published(pubs.handoffs.mock) if "accept_due_at" in b]
            assert [b["handoff_id"] for b in bodies] == [handoff_id_for(case_id, AgencyCode.DUO, 0)]
            assert bodies[0]["agency"] == "duo" and bodies[0]["from_office"].startswith(
                "initiative:"
            )
            # poison: not a CloudEvent at all
            await br.publish(b"\xff garbage", topics.HANDOFFS, key=b"x")
            dead = published(pubs.dlq.mock)
            assert dead and dead[-1]["original_topic"] == topics.HANDOFFS
            assert dead[-1]["error_class"] == "MissingAttribute"
            # invalid decline (no reason) on Kafka -> HandoffResponseRejected, not the DLQ
            hid = bodies[0]["handoff_id"]
            bad = {"case_id": case_id, "handoff_id": hid, "agency": "duo"}
            headers = {
                "ce_specversion": "1.0",
                "ce_id": str(uuid.uuid4()),
                "ce_source": "urn:agency:duo",
                "ce_type": "nl.loket.handoff.decline.v1",
                "content-type": "application/json",
            }
            await br.publish(
                json.dumps(bad).encode(), topics.HANDOFF_RESPONSES, key=case_id.encode(),
                headers=headers,
            )  # fmt: skip
            rejected = [b for b in published(pubs.handoffs.mock) if "command_id" in b]
            assert rejected and rejected[-1]["command_id"] == headers["ce_id"]
            assert "invalid" in rejected[-1]["reason"]
    finally:
        await app.state.redis.aclose()


def test_openapi_describes_error_responses() -> None:
    app = create_app(HandoffSettings(handoff_dev_keys=False))
    spec = app.openapi()
    decline = spec["paths"]["/api/v1/handoffs/{handoff_id}/decline"]["post"]
    assert {"200", "401", "403", "404", "409", "422", "503"} <= set(decline["responses"])
    assert "/api/v1/status/{reference}" in spec["paths"]
    assert "/api/v1/cases/{case_id}" in spec["paths"]


def test_encode_roundtrip_of_published_event_headers() -> None:
    """What the KafkaPublisher sends decodes with the shared binding."""
    routed = CaseRouted(
        case_id="c1",
        reference="LK-AAAA-BBBB",
        initiative_id="x",
        lead=AgencyCode.UWV,
        assignments=[AgencyAssignment(agency=AgencyCode.UWV, role=AgencyRole.LEAD, confidence=1)],
        routed_at=datetime.now(UTC),
    )
    record = encode(routed, source=service_source("handoff"), event_id="e1")
    env = decode(record.value, record.headers)
    assert env.attributes.id == "e1" and env.data == routed
