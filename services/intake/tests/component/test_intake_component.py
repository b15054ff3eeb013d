"""Component tests: the FastAPI app over httpx ASGITransport, Kafka replaced by FastStream's
TestKafkaBroker (the named publishers are asserted on), Redis real (unique key prefix).

These prove the wiring (which publisher gets which message, which status code); delivery
to a real broker is proven by the integration tests.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from faststream.kafka import TestKafkaBroker

from loket_intake.app import create_app
from loket_intake.settings import IntakeSettings

INITIATIVE = "bibliotheek-rotterdam-centrale"
OTHER = "bibliotheek-amsterdam-oosterdok"
KEY = {"X-API-Key": f"dev-{INITIATIVE}"}


def question(**extra: Any) -> dict[str, Any]:
    return {"channel": "balie", "initiative": INITIATIVE, "text": "Ik heb een vraag", **extra}


@pytest.fixture
async def app_client(
    redis_url: str, redis_prefix: str, topic_prefix: str
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = IntakeSettings(
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        topic_prefix=topic_prefix,
        kafka_bootstrap="127.0.0.1:1",  # never used: TestKafkaBroker
    )
    app = create_app(settings)
    async with TestKafkaBroker(app.state.broker):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            yield app, client
    await app.state.redis.aclose()


async def test_question_goes_to_the_questions_publisher(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = app_client
    resp = await client.post(
        "/api/v1/questions", json=question(requester={"bsn": "111222333"}), headers=KEY
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    pubs = app.state.publishers
    pubs.questions.mock.assert_called_once()
    pubs.consent.mock.assert_not_called()
    [sent] = pubs.questions.mock.call_args.args
    sent = json.loads(sent) if isinstance(sent, bytes | str) else sent
    assert sent["case_id"] == body["case_id"]
    assert sent["reference"] == body["reference"]
    assert sent["initiative_id"] == INITIATIVE
    assert sent["requester"]["bsn"] == "111222333"
    assert sent["subject_pseudonym"].startswith("ps1:")
    assert body["status_url"].startswith("http://127.0.0.1:8002/status/" + body["reference"])


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{", "headers": {**KEY, "content-type": "application/json"}}, 400, None),
        ({"content": b"x", "headers": {**KEY, "content-type": "text/plain"}}, 415, None),
        ({"json": question(text=""), "headers": KEY}, 422, "text"),
        ({"json": question(initiative="nergens"), "headers": KEY}, 422, "initiative"),
        ({"json": question(requester={"bsn": "123456789"}), "headers": KEY}, 422, "requester.bsn"),
        ({"json": question()}, 401, None),
        ({"json": question(), "headers": {"X-API-Key": "nope"}}, 401, None),
        ({"json": question(initiative=OTHER), "headers": KEY}, 403, None),
        ({"json": {"text": "x" * 70_000}, "headers": KEY}, 413, None),
    ],
)
async def test_bad_input_publishes_nothing(
    app_client: tuple[Any, httpx.AsyncClient],
    kwargs: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    app, client = app_client
    resp = await client.post("/api/v1/questions", **kwargs)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["status"] == status and err["code"] and err["message"]
    if code is not None:
        assert code in [f["field"] for f in err["fields"]]
    app.state.publishers.questions.mock.assert_not_called()


async def test_email_goes_to_the_questions_publisher(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = app_client
    mail = (
        b"From: Jan <jan@example.nl>\r\nSubject: Toeslag\r\n"
        b"Message-ID: <m1@example.nl>\r\n\r\nKan ik in delen betalen?\r\n"
    )
    resp = await client.post(
        "/api/v1/inbound/email", content=mail, headers={**KEY, "content-type": "message/rfc822"}
    )
    assert resp.status_code == 202, resp.text
    [sent] = app.state.publishers.questions.mock.call_args.args
    sent = json.loads(sent) if isinstance(sent, bytes | str) else sent
    assert sent["channel"] == "email"
    assert sent["text"] == "Toeslag\n\nKan ik in delen betalen?"
    assert sent["requester"]["contact"]["email"] == "jan@example.nl"
    assert sent["consent"] is None
    # the same Message-ID again: same answer, nothing new published
    again = await client.post(
        "/api/v1/inbound/email", content=mail, headers={**KEY, "content-type": "message/rfc822"}
    )
    assert again.json() == resp.json()
    assert app.state.publishers.questions.mock.call_count == 1


async def test_email_for_another_initiative_is_forbidden(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = app_client
    mail = b"From: a@example.nl\r\nSubject: x\r\n\r\ny\r\n"
    resp = await client.post(
        "/api/v1/inbound/email",
        content=mail,
        headers={**KEY, "content-type": "message/rfc822", "X-Loket-Initiative": OTHER},
    )
    assert resp.status_code == 403
    app.state.publishers.questions.mock.assert_not_called()


async def test_withdraw_goes_to_the_consent_publisher(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = app_client
    resp = await client.post(
        "/api/v1/questions", json=question(consent={"categories": ["income"]}), headers=KEY
    )
    case_id = resp.json()["case_id"]
    url = f"/api/v1/cases/{case_id}/consent/withdraw"
    other = await client.post(url, headers={"X-API-Key": f"dev-{OTHER}"})
    assert other.status_code == 403
    first = await client.post(url, headers=KEY)
    assert first.status_code == 202, first.text
    second = await client.post(url, headers=KEY)
    assert second.json() == first.json()
    pubs = app.state.publishers
    pubs.consent.mock.assert_called_once()
    [sent] = pubs.consent.mock.call_args.args
    sent = json.loads(sent) if isinstance(sent, bytes | str) else sent
    assert sent["case_id"] == case_id
    assert sent["consent_id"] == first.json()["consent_id"]
    missing = await client.post("/api/v1/cases/nope/consent/withdraw", headers=KEY)
    assert missing.status_code == 404


async def test_withdraw_without_consent_is_409(app_client: tuple[Any, httpx.AsyncClient]) -> None:
    _app, client = app_client
    resp = await client.post("/api/v1/questions", json=question(), headers=KEY)
    case_id = resp.json()["case_id"]
    out = await client.post(f"/api/v1/cases/{case_id}/consent/withdraw", headers=KEY)
    assert out.status_code == 409 and out.json()["error"]["code"] == "no_consent"


async def test_catalogs(app_client: tuple[Any, httpx.AsyncClient]) -> None:
    _app, client = app_client
    initiatives = (await client.get("/api/v1/initiatives")).json()
    agencies = (await client.get("/api/v1/agencies")).json()
    assert len(initiatives) >= 25 and any(i["id"] == INITIATIVE for i in initiatives)
    assert {a["code"] for a in agencies} >= {"duo", "maatwerkloket"}


async def test_desk_page_renders_in_dutch(app_client: tuple[Any, httpx.AsyncClient]) -> None:
    _app, client = app_client
    for path in ("/", "/balie"):
        resp = await client.get(path)
        assert resp.status_code == 200
        assert '<html lang="nl">' in resp.text
        assert '<label for="text">' in resp.text


async def test_desk_form_post_publishes_and_shows_reference(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = app_client
    form = {
        "form_id": "f1",
        "initiative": INITIATIVE,
        "channel": "telefoon",
        "text": "Mijn uitkering is gestopt",
        "id_kind": "bsn",
        "bsn": "111222333",
        "consent": ["identity", "benefits"],
        "vulnerable": "ja",
    }
    resp = await client.post("/balie", data=form)
    assert resp.status_code == 200, resp.text
    [sent] = app.state.publishers.questions.mock.call_args.args
    sent = json.loads(sent) if isinstance(sent, bytes | str) else sent
    assert sent["reference"] in resp.text
    assert sent["channel"] == "telefoon" and sent["vulnerable"] is True
    assert [c for c in sent["consent"]["categories"]] == ["identity", "benefits"]
    assert resp.cookies.get("loket_initiative") == INITIATIVE
    # a refresh (same form_id) files nothing new
    again = await client.post("/balie", data=form)
    assert sent["reference"] in again.text
    assert app.state.publishers.questions.mock.call_count == 1


async def test_desk_form_errors_are_summarised(app_client: tuple[Any, httpx.AsyncClient]) -> None:
    app, client = app_client
    resp = await client.post(
        "/balie",
        data={
            "form_id": "f2",
            "initiative": INITIATIVE,
            "text": " ",
            "id_kind": "bsn",
            "bsn": "123456789",
        },
    )
    assert resp.status_code == 422
    assert 'id="foutsamenvatting"' in resp.text
    assert '<a href="#text">Vul de vraag in.</a>' in resp.text
    assert 'href="#bsn"' in resp.text and "elfproef" in resp.text
    assert 'aria-invalid="true"' in resp.text
    app.state.publishers.questions.mock.assert_not_called()


async def test_status_panel_asks_handoff_and_checks_the_token(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = app_client
    from loket_intake import domain

    key = app.state.settings.pseudonym_key.get_secret_value()
    ref = "LK-7F3K-92QD"
    token = domain.status_token(ref, key)
    asked: list[str] = []

    def handoff(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(
            200, json={"status": "in_behandeling", "samenvatting": "In behandeling.", "stappen": []}
        )

    app.state.desk.client = httpx.AsyncClient(transport=httpx.MockTransport(handoff))
    ok = await client.get(f"/balie/status/{ref}", params={"token": token})
    assert ok.status_code == 200 and ok.json()["label"] == "In behandeling."
    assert asked == [f"http://127.0.0.1:8002/api/v1/status/{ref}?token={token}"]
    bad = await client.get(f"/balie/status/{ref}", params={"token": "0" * 24})
    assert bad.status_code == 404 and len(asked) == 1

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    app.state.desk.client = httpx.AsyncClient(transport=httpx.MockTransport(down))
    fallback = await client.get(f"/balie/status/{ref}", params={"token": token})
    assert fallback.json()["label"] == "Ontvangen"


async def test_questions_path_other_methods_keep_the_framework_errors(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    """POST /api/v1/questions skips FastAPI's routing (api.QuestionFastPath); every other
    method or path still gets the framework's answer in the one error body."""
    app, client = app_client
    resp = await client.get("/api/v1/questions", headers=KEY)
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"
    resp = await client.post("/api/v1/questionsx", json=question(), headers=KEY)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    app.state.publishers.questions.mock.assert_not_called()


async def test_questions_fast_path_maps_a_raw_redis_error_to_503(
    app_client: tuple[Any, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RedisError that escapes the store gets the same 503 as the app's handler."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    app, client = app_client

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RedisConnectionError("down")

    monkeypatch.setattr(app.state.deps.store, "claim", broken)
    resp = await client.post(
        "/api/v1/questions", json=question(), headers={**KEY, "Idempotency-Key": "k-1"}
    )
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "redis_unavailable"
    assert resp.headers["Retry-After"]
    app.state.publishers.questions.mock.assert_not_called()
