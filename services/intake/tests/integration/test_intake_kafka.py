"""Integration tests on REAL Kafka and Redis: 202 means the event is on loket.questions.v1."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from intake_support import (
    INITIATIVE,
    KEY,
    OTHER,
    header,
    question,
    records_before_markers,
    running_app,
)

from loket_intake.settings import IntakeSettings
from loket_runtime.testing import consume_until
from loket_schemas import topics
from loket_schemas.events import ConsentWithdrawn, QuestionReceived
from loket_schemas.kafka import decode
from loket_schemas.tracing import new_trace

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(loket_settings: dict[str, Any]) -> IntakeSettings:
    return IntakeSettings(**loket_settings)


async def test_202_means_the_event_is_on_kafka_with_cloudevents_headers(
    settings: IntakeSettings, kafka_bootstrap: str
) -> None:
    caller = new_trace()
    async with running_app(settings) as (_app, client):
        resp = await client.post(
            "/api/v1/questions",
            json=question(requester={"bsn": "111222333"}, consent={"categories": ["identity"]}),
            headers={**KEY, "traceparent": caller.traceparent},
        )
        assert resp.status_code == 202, resp.text
    body = resp.json()
    case_id = body["case_id"]
    [record] = await consume_until(
        kafka_bootstrap,
        settings.topic(topics.QUESTIONS),
        predicate=lambda r: r.key == case_id.encode(),
        timeout=20,
    )
    assert header(record, "ce_type") == "nl.loket.question.received.v1"
    assert header(record, "ce_source") == "urn:nld:loket:service:intake"
    assert header(record, "ce_specversion") == "1.0"
    assert header(record, "ce_id")
    ce_time = header(record, "ce_time")
    assert ce_time is not None and datetime.fromisoformat(ce_time.replace("Z", "+00:00")) <= (
        datetime.now(UTC)
    )
    assert header(record, "ce_subject") == record.key.decode() == case_id
    traceparent = header(record, "traceparent")
    assert traceparent is not None and traceparent.split("-")[1] == caller.trace_id
    envelope = decode(record.value, record.headers, expect=(QuestionReceived,))
    event = envelope.data
    assert isinstance(event, QuestionReceived)
    assert event.reference == body["reference"]
    assert event.initiative_id == INITIATIVE
    assert event.consent is not None and event.subject_pseudonym is not None


async def test_idempotent_retry_publishes_exactly_one_event(
    settings: IntakeSettings, kafka_bootstrap: str, redis_client: Any
) -> None:
    headers = {**KEY, "Idempotency-Key": "retry-1"}
    async with running_app(settings) as (_app, client):
        first = await client.post("/api/v1/questions", json=question(), headers=headers)
        second = await client.post("/api/v1/questions", json=question(), headers=headers)
        other = await client.post(
            "/api/v1/questions", json=question(text="iets anders"), headers=headers
        )
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    records = await records_before_markers(kafka_bootstrap, settings.topic(topics.QUESTIONS))
    assert [r.key.decode() for r in records] == [first.json()["case_id"]]
    ttl = await redis_client.ttl(f"{settings.redis_key_prefix}idem:{INITIATIVE}:retry-1")
    assert 23 * 3600 < ttl <= 24 * 3600


async def test_concurrent_requests_with_one_key_publish_once(
    settings: IntakeSettings, kafka_bootstrap: str
) -> None:
    headers = {**KEY, "Idempotency-Key": "concurrent-1"}
    async with running_app(settings) as (_app, client):
        responses = await asyncio.gather(
            *(client.post("/api/v1/questions", json=question(), headers=headers) for _ in range(8))
        )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 409} and 202 in statuses
    bodies = {json.dumps(r.json(), sort_keys=True) for r in responses if r.status_code == 202}
    assert len(bodies) == 1
    records = await records_before_markers(kafka_bootstrap, settings.topic(topics.QUESTIONS))
    assert len(records) == 1


JSON = {**KEY, "content-type": "application/json"}
FORM = {**KEY, "content-type": "application/x-www-form-urlencoded"}
BAD_INPUTS: list[tuple[str, dict[str, Any], int]] = [
    ("malformed", {"content": b'{"channel": ', "headers": JSON}, 400),
    ("too large", {"content": b"{" + b" " * 70_000 + b"}", "headers": JSON}, 413),
    ("wrong type", {"content": b"text=hoi", "headers": FORM}, 415),
    ("empty text", {"json": question(text=""), "headers": KEY}, 422),
    ("unknown initiative", {"json": question(initiative="nergens"), "headers": KEY}, 422),
    ("bad bsn", {"json": question(requester={"bsn": "123456789"}), "headers": KEY}, 422),
    ("no explicit", {"json": question(consent={"categories": ["health"]}), "headers": KEY}, 422),
    ("no key", {"json": question()}, 401),
    ("other initiative", {"json": question(initiative=OTHER), "headers": KEY}, 403),
]


async def test_each_bad_input_class_publishes_nothing(
    settings: IntakeSettings, kafka_bootstrap: str
) -> None:
    async with running_app(settings) as (_app, client):
        for name, kwargs, status in BAD_INPUTS:
            resp = await client.post("/api/v1/questions", **kwargs)
            assert resp.status_code == status, (name, resp.text)
            assert resp.json()["error"]["status"] == status, name
        email = await client.post(
            "/api/v1/inbound/email",
            content=b"",
            headers={**KEY, "content-type": "message/rfc822"},
        )
        assert email.status_code == 400
        big = await client.post(
            "/api/v1/inbound/email",
            content=b"Subject: x\r\n\r\n" + b"a" * (1024 * 1024 + 1),
            headers={**KEY, "content-type": "message/rfc822"},
        )
        assert big.status_code == 413
    assert await records_before_markers(kafka_bootstrap, settings.topic(topics.QUESTIONS)) == []


async def test_email_with_attachments_becomes_a_question(
    settings: IntakeSettings, kafka_bootstrap: str
) -> None:
    msg = EmailMessage()
    msg["From"] = "Anna Jansen <anna@example.nl>"
    msg["Subject"] = "Aanmaning CJIB"
    msg["Message-ID"] = "<cjib-1@example.nl>"
    msg.set_content("Ik heb een aanmaning gekregen en kan niet betalen.")
    msg.add_alternative("<p>Ik heb een <b>aanmaning</b> gekregen.</p>", subtype="html")
    msg.add_attachment(b"%PDF" + b"0" * 2000, maintype="application", subtype="pdf",
                       filename="aanmaning.pdf")  # fmt: skip
    async with running_app(settings) as (_app, client):
        resp = await client.post(
            "/api/v1/inbound/email",
            content=msg.as_bytes(),
            headers={**KEY, "content-type": "message/rfc822"},
        )
    assert resp.status_code == 202, resp.text
    case_id = resp.json()["case_id"]
    [record] = await consume_until(
        kafka_bootstrap,
        settings.topic(topics.QUESTIONS),
        predicate=lambda r: r.key == case_id.encode(),
        timeout=20,
    )
    event = decode(record.value, record.headers, expect=(QuestionReceived,)).data
    assert isinstance(event, QuestionReceived)
    assert event.channel.value == "email"
    assert event.text.startswith("Aanmaning CJIB\n\nIk heb een aanmaning")
    assert [(a.filename, a.size_bytes) for a in event.attachments] == [("aanmaning.pdf", 2004)]
    assert event.consent is None


async def test_consent_withdrawal_is_published_once(
    settings: IntakeSettings, kafka_bootstrap: str
) -> None:
    async with running_app(settings) as (_app, client):
        resp = await client.post(
            "/api/v1/questions", json=question(consent={"categories": ["income"]}), headers=KEY
        )
        case_id = resp.json()["case_id"]
        url = f"/api/v1/cases/{case_id}/consent/withdraw"
        first = await client.post(url, headers=KEY)
        second = await client.post(url, headers=KEY)
        forbidden = await client.post(url, headers={"X-API-Key": f"dev-{OTHER}"})
    assert first.status_code == 202 and second.json() == first.json()
    assert forbidden.status_code == 403
    records = await records_before_markers(kafka_bootstrap, settings.topic(topics.CONSENT))
    assert len(records) == 1
    event = decode(records[0].value, records[0].headers, expect=(ConsentWithdrawn,)).data
    assert isinstance(event, ConsentWithdrawn)
    assert records[0].key.decode() == case_id == header(records[0], "ce_subject")
    assert event.consent_id == first.json()["consent_id"]
