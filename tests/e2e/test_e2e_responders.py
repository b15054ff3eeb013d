"""The agency responders of the end-to-end traffic (no stack: HTTP is mocked).

A retried accept whose first attempt went through although its answer was lost gets a
409 once the case has moved on (e.g. the responder's own resolve). That is success only
when the case timeline proves the accept was ours; any other 409 is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from e2e_traffic import DESK_KEY, AgencyResponders, agency_key

from loket_schemas.events import AgencyRole, HandoffOffered
from loket_schemas.vocabulary import AgencyCode, Urgency

CASE = "139bb360-e339-4c67-9823-938635ffe6eb"
HANDOFF = "9ee461ed-1cc8-5b90-aaa9-b02ee241bbb8"


def offer() -> HandoffOffered:
    now = datetime.now(UTC)
    return HandoffOffered(
        case_id=CASE,
        handoff_id=HANDOFF,
        agency=AgencyCode.GEMEENTE,
        occurred_at=now,
        role=AgencyRole.LEAD,
        initiative_id="bibliotheek-rotterdam-centrale",
        reference="LK-1VV4-M0AP",
        from_office="initiative:bibliotheek-rotterdam-centrale",
        urgency=Urgency.NORMAL,
        accept_due_at=now + timedelta(days=2),
    )


def responders_with(
    answers: list[Any], timeline_contact: Callable[[AgencyResponders], str] | None
) -> tuple[AgencyResponders, list[str]]:
    """Responders whose accept POSTs get ``answers`` in turn (an int: that status; an
    exception: raised after the request reached the server); the case timeline shows the
    handoff accepted by ``timeline_contact(responders)`` (None: not accepted)."""
    responders = AgencyResponders("127.0.0.1:1", "http://handoff", retry_deadline_s=5)
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "GET":
            assert request.headers["X-API-Key"] == DESK_KEY
            timeline: list[dict[str, Any]] = [{"kind": "offered", "handoff_id": HANDOFF}]
            if timeline_contact is not None:
                timeline.append(
                    {
                        "kind": "accepted",
                        "handoff_id": HANDOFF,
                        "detail": {"contact": timeline_contact(responders)},
                    }
                )
            timeline.append({"kind": "resolved", "handoff_id": HANDOFF, "detail": {}})
            return httpx.Response(200, json={"case_id": CASE, "timeline": timeline})
        assert request.headers["X-API-Key"] == agency_key(AgencyCode.GEMEENTE)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"detail": "cannot accept a handoff that is resolved"})

    responders.client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return responders, calls


async def test_accept_retried_after_lost_answer_is_success_when_the_timeline_shows_ours() -> None:
    lost = httpx.ReadTimeout("answer lost")
    responders, calls = responders_with(
        [lost, 409], lambda r: r.contact_for(AgencyCode.GEMEENTE).name
    )
    await responders._respond(offer(), "accept_http", None)
    await responders.client.aclose()
    assert responders.errors == []
    assert responders.confirmed_after_retry == [f"/api/v1/handoffs/{HANDOFF}/accept"]
    assert calls[-1] == f"GET /api/v1/cases/{CASE}"


async def test_accept_retried_is_an_error_when_someone_else_accepted() -> None:
    responders, _ = responders_with([503, 409], lambda _r: "Medewerker gemeente (iemand anders)")
    await responders._respond(offer(), "accept_http", None)
    await responders.client.aclose()
    assert responders.confirmed_after_retry == []
    assert len(responders.errors) == 1 and "-> 409" in responders.errors[0]


async def test_first_attempt_409_is_an_error_without_looking_at_the_timeline() -> None:
    responders, calls = responders_with([409], lambda r: r.contact_for(AgencyCode.GEMEENTE).name)
    await responders._respond(offer(), "accept_http", None)
    await responders.client.aclose()
    assert len(responders.errors) == 1
    assert calls == [f"POST /api/v1/handoffs/{HANDOFF}/accept"]


async def test_contact_names_differ_between_responders() -> None:
    a = AgencyResponders("127.0.0.1:1", "http://handoff")
    b = AgencyResponders("127.0.0.1:1", "http://handoff")
    try:
        assert a.contact_for(AgencyCode.UWV).name != b.contact_for(AgencyCode.UWV).name
    finally:
        await a.client.aclose()
        await b.client.aclose()
