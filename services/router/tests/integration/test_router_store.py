"""RedisStore on REAL Redis: the batch scripts read back what they wrote."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from loket_router import domain
from loket_router.store import RedisStore, Writes
from loket_schemas.events import AgencyRole, QuestionReceived
from loket_schemas.vocabulary import AgencyCode, DataCategory

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def question(cid: str) -> QuestionReceived:
    return QuestionReceived(
        case_id=cid,
        reference="LK-AAAA-BBBB",
        channel="web",
        initiative_id="bibliotheek-utrecht-neude",
        text="Vraag",
        received_at=NOW,
    )


async def test_write_load_markers_and_withdrawals(redis_client: Any, redis_prefix: str) -> None:
    store = RedisStore(redis_client, redis_prefix, 600)
    writes = Writes(
        questions=[question("a"), question("b")],
        leads={"a": AgencyCode.DUO},
        roles=[
            ("a", AgencyCode.DUO, AgencyRole.LEAD),
            ("a", AgencyCode.CJIB, AgencyRole.SUPPORTING),
        ],
        via=[("a", AgencyCode.CJIB, "decline:h-1")],
        shares=[
            (
                "a",
                domain.ConsentShare(
                    AgencyCode.CJIB,
                    "c-1",
                    frozenset({DataCategory.CONTACT, DataCategory.QUESTION_TEXT}),
                ),
            )
        ],
        withdrawals=[
            ("b", domain.Withdrawal("c-2")),
            ("a", domain.Withdrawal("c-1", frozenset({DataCategory.CONTACT}))),
        ],
    )
    await store.write(writes)
    await store.write(writes)  # idempotent
    marker = store.done_key("routed", "a")
    states = await store.load(
        ["a", "b", "c"],
        done_keys=[marker, store.done_key("routed", "b"), store.done_key("routed", "c")],
        full=True,
    )
    assert not any(s.done for s in states.values())
    a, b, c = states["a"], states["b"], states["c"]
    assert a.question == question("a") and b.question == question("b") and c.question is None
    assert a.lead == AgencyCode.DUO and b.lead is None
    assert a.roles == {AgencyCode.DUO: AgencyRole.LEAD, AgencyCode.CJIB: AgencyRole.SUPPORTING}
    assert a.via == {AgencyCode.CJIB: "decline:h-1"} and b.via == {}
    assert a.shares == [
        domain.ConsentShare(
            AgencyCode.CJIB, "c-1", frozenset({DataCategory.CONTACT, DataCategory.QUESTION_TEXT})
        )
    ]
    assert a.withdrawals == {"c-1": domain.Withdrawal("c-1", frozenset({DataCategory.CONTACT}))}
    assert b.withdrawals == {"c-2": domain.Withdrawal("c-2")} and c.withdrawals == {}
    assert 0 < await redis_client.ttl(store.key("case", "a")) <= 600

    await store.mark_done([marker])
    assert await store.done([marker, store.done_key("routed", "b")]) == [True, False]
    assert 0 < await redis_client.ttl(marker) <= 600
    light = await store.load(["a", "a", "b"], done_keys=[marker, marker, "x"], full=False)
    assert light["a"].done and not light["b"].done and light["a"].question is None
    assert await store.withdrawals(["b", "c"]) == {"b": {"c-2": domain.Withdrawal("c-2")}, "c": {}}
    assert await store.done([]) == [] and await store.withdrawals([]) == {}
    await store.write(Writes())
    await store.mark_done([])


async def test_fields_travel_to_redis_unchanged(redis_client: Any, redis_prefix: str) -> None:
    """The write script gets the fields as one JSON text (cjson in Redis): quotes,
    backslashes, control characters, non-ASCII and line separators arrive byte for byte."""
    store = RedisStore(redis_client, redis_prefix, 600)
    odd = 'Q "quoted" \\ back\n\ttab \x00\x01\x1f\x7f é ü ß 😀 \u2028 \u2029 \ufeff ' + "x" * 3000
    q = question("odd").model_copy(update={"text": odd})
    writes = Writes(
        questions=[q],
        leads={"odd": AgencyCode.UWV},
        roles=[("odd", AgencyCode.UWV, AgencyRole.LEAD)],
        via=[("odd", AgencyCode.UWV, 'escalation:h-"1"\\é')],
        shares=[("odd", domain.ConsentShare(AgencyCode.UWV, "c-é😀", frozenset(DataCategory)))],
        withdrawals=[("odd", domain.Withdrawal("c-\n1"))],
    )
    await store.write(writes)
    raw = await redis_client.hgetall(store.key("case", "odd"))
    assert raw[b"question"] == q.model_dump_json().encode()
    assert raw[f"via|{AgencyCode.UWV.value}".encode()] == 'escalation:h-"1"\\é'.encode()
    state = (await store.load(["odd"], full=True))["odd"]
    assert state.question == q and state.question.text == odd
    assert state.via == {AgencyCode.UWV: 'escalation:h-"1"\\é'}
    assert state.shares == [domain.ConsentShare(AgencyCode.UWV, "c-é😀", frozenset(DataCategory))]
    assert state.withdrawals == {"c-\n1": domain.Withdrawal("c-\n1")}
