"""The operator view over a real Redis projection, filled through the handoff use cases.

FastAPI in-process (httpx ASGITransport, no Kafka: the publisher records), a fake clock
and a 3600x SLA clock so SLA warnings and breaches can be produced in a few fake seconds.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from handoff_operator_support import (
    T0,
    RecordingPublisher,
    Seeder,
    operator_settings,
    rows_by_first_cell,
    tables,
)
from prometheus_client import generate_latest

from loket_handoff.app import create_app
from loket_handoff.clock import FakeClock
from loket_handoff.operator import COOKIE, gather_overview, operator_state
from loket_handoff.store import HandoffStore
from loket_schemas.catalog import load_agencies, load_initiatives
from loket_schemas.vocabulary import AgencyCode, Urgency

pytestmark = pytest.mark.integration  # real Redis

OPERATOR = {"X-API-Key": "dev-operator"}


@dataclass
class World:
    app: FastAPI
    store: HandoffStore
    seeder: Seeder
    client: httpx.AsyncClient
    cases: dict[str, str]


async def seed(seeder: Seeder) -> dict[str, str]:
    """Five cases covering every figure on the page (see the assertions)."""
    cases: dict[str, str] = {}
    # C: CJIB never answers -> accept SLA (16 h = 16 s) breached -> escalated (sla)
    cases["C"] = await seeder.route(
        AgencyCode.CJIB, initiative="online-loket-chat", reference="LK-CCCC-0003"
    )
    # D: straight to maatwerkloket, no answer -> breached and stays open (no escalation)
    cases["D"] = await seeder.route(
        AgencyCode.MAATWERKLOKET,
        initiative="buurtteam-utrecht-overvecht",
        reference="LK-DDDD-0004",
        urgency=Urgency.URGENT,
    )
    await seeder.advance(17)  # C and D (urgent: 2 h = 2 s) breached
    # A: UWV (lead) accepts after 10 s (before the 12 s warning); SVB (supporting) declines
    cases["A"] = await seeder.route(
        AgencyCode.UWV, supporting=(AgencyCode.SVB,), reference="LK-AAAA-0001"
    )
    await seeder.advance(3)
    await seeder.decline(
        cases["A"], AgencyCode.SVB, "Geen AOW of kinderbijslag in deze vraag.", AgencyCode.GEMEENTE
    )
    await seeder.advance(7)
    await seeder.accept(cases["A"], AgencyCode.UWV, "Fatima el Amrani")
    # E: DUO accepts in 4 s and resolves
    cases["E"] = await seeder.route(
        AgencyCode.DUO, initiative="duo-servicekantoor-groningen", reference="LK-EEEE-0005"
    )
    await seeder.advance(4)
    await seeder.accept(cases["E"], AgencyCode.DUO, "Joost de Vries")
    await seeder.resolve(cases["E"], AgencyCode.DUO)
    # B: DUO offered, 13 of 16 s pass -> SLA warning (at risk), not breached
    cases["B"] = await seeder.route(
        AgencyCode.DUO, initiative="gemeente-den-haag-servicepunt", reference="LK-BBBB-0002"
    )
    await seeder.advance(13)
    return cases


@pytest.fixture
async def world(loket_settings: dict[str, Any]) -> AsyncIterator[World]:
    clock = FakeClock(T0)
    app = create_app(operator_settings(loket_settings), clock=clock)
    store: HandoffStore = app.state.handoff_store
    await store.mark_ready()  # no rebuild from Kafka in this tier
    service = app.state.handoff_service
    service.publisher = RecordingPublisher()
    seeder = Seeder(service, clock)
    cases = await seed(seeder)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://handoff"
    ) as client:
        yield World(app, store, seeder, client, cases)
    await app.state.redis.aclose()


async def test_overview_figures_match_the_store(world: World) -> None:
    o = await gather_overview(world.store, time_scale=3600)
    by = {a.code: a for a in o.agencies}
    assert by["uwv"].open == 1 and by["duo"].open == 1 and by["maatwerkloket"].open == 1
    assert by["svb"].open == 0 and by["cjib"].open == 0
    assert o.open_total == 3 == sum((await world.store.open_counts_by_agency()).values())
    assert [h.reference for h in o.at_risk] == ["LK-BBBB-0002"] and o.at_risk_total == 1
    assert [h.reference for h in o.breached] == ["LK-DDDD-0004"] and o.breached_total == 1
    assert by["duo"].at_risk == 1 and by["maatwerkloket"].breached == 1
    # accept latencies: UWV 10 s, DUO 4 s -> median 7 s overall
    assert o.median_accept_s == 7 == await world.store.median_time_to_accept()
    assert by["uwv"].median_accept_s == 10 and by["duo"].median_accept_s == 4
    # 1 decline, 2 accepts
    assert o.decline_rate == pytest.approx(1 / 3)
    assert o.decline_rate == pytest.approx(await world.store.decline_rate())
    assert by["svb"].decline_rate == 1.0 and by["uwv"].decline_rate == 0.0
    assert o.escalations_by_reason == {"sla": 1, "bounce_limit": 0, "manual": 0}
    [esc] = o.escalations
    assert (esc.agency, esc.reason, esc.reference) == ("cjib", "sla", "LK-CCCC-0003")
    assert esc.reason_label == "SLA verlopen"
    opened = {i.id: i.open for i in o.initiatives}
    assert len(opened) == len(load_initiatives().initiatives) == 25
    assert opened["bibliotheek-rotterdam-centrale"] == 1  # A: UWV accepted, SVB declined
    assert opened["gemeente-den-haag-servicepunt"] == 1
    assert opened["buurtteam-utrecht-overvecht"] == 1
    assert opened["online-loket-chat"] == 0 and opened["duo-servicekantoor-groningen"] == 0


async def test_accept_latencies_of_every_agency_in_one_round_trip(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = world.store
    by_agency = await store.accept_latencies_by_agency()
    assert by_agency == {"uwv": [10.0], "duo": [4.0]}
    for code in AgencyCode:  # the same lists, in the same order, as one read per agency
        assert by_agency.get(code.value, []) == await store.accept_latencies(code)
    reads: list[str] = []
    lrange = store.redis.lrange

    async def counting(key: Any, *args: Any) -> Any:
        reads.append(key if isinstance(key, str) else key.decode())
        return await lrange(key, *args)

    monkeypatch.setattr(store.redis, "lrange", counting)
    o = await gather_overview(store, time_scale=3600)
    assert reads.count(store.k("lat")) == 1, reads  # was one LRANGE per agency (17)
    assert o.median_accept_s == 7
    assert o.sla_breaches.get("accept") == 2 and o.sla_warnings.get("accept", 0) >= 1


async def test_operator_page_shows_tables_with_catalog_names(world: World) -> None:
    response = await world.client.get("/operator", headers=OPERATOR)
    assert response.status_code == 200
    html = response.text
    assert '<html lang="nl">' in html
    assert response.headers["cache-control"] == "no-store"
    assert "script-src" not in response.headers["content-security-policy"]  # default-src self
    t = tables(html)
    agencies = rows_by_first_cell(t["tabel-organisaties"])
    catalog = load_agencies()
    assert len(agencies) == 17
    assert agencies[catalog.get("uwv").name][:3] == ["1", "0", "0"]  # open, at risk, breached
    assert agencies[catalog.get("duo").name][:3] == ["1", "1", "0"]
    assert agencies[catalog.get("maatwerkloket").name][:3] == ["1", "0", "1"]
    assert agencies[catalog.get("svb").name][5] == "100%"
    assert agencies[catalog.get("uwv").name][6] == "10 s"
    initiatives = rows_by_first_cell(t["tabel-initiatieven"])
    assert len(initiatives) == 25
    assert initiatives["Servicepunt Stadhuis Spui"] == ["Den Haag", "1"]
    assert rows_by_first_cell(t["tabel-dreigend"])["LK-BBBB-0002"][:3] == [
        catalog.get("duo").name,
        "Aangeboden",
        "acceptatie",
    ]
    assert "LK-DDDD-0004" in rows_by_first_cell(t["tabel-verlopen"])
    assert rows_by_first_cell(t["tabel-escalaties"])["LK-CCCC-0003"][:2] == [
        catalog.get("cjib").name,
        "SLA verlopen",
    ]
    # accessibility basics: captions, scoped headers, live region, pause button, skip link
    assert html.count("<caption>") >= 6
    assert 'scope="col"' in html and 'scope="row"' in html
    assert 'aria-live="polite"' in html and 'id="verversen-pauze"' in html
    assert 'href="#inhoud"' in html
    assert "Demo: de SLA-klok loopt 3600&times; sneller" in html
    for level in ("<h1>", "<h2 "):
        assert level in html
    # key figures
    assert re.search(r'id="kc-open">3<', html) and re.search(r'id="kc-afwijzing">33%<', html)
    assert re.search(r'id="kc-mediaan">7 s<', html)


async def test_fragment_follows_new_events(world: World) -> None:
    first = await world.client.get("/operator/fragment", headers=OPERATOR)
    assert first.status_code == 200 and "<html" not in first.text
    assert 'id="overzicht-inhoud"' in first.text
    await world.seeder.accept(world.cases["B"], AgencyCode.DUO, "Sanne Bakker")
    operator_state(world.app)._cached = None  # the cache lives 1 s; do not wait for it
    second = await world.client.get("/operator/fragment", headers=OPERATOR)
    assert "LK-BBBB-0002" not in rows_by_first_cell(tables(second.text).get("tabel-dreigend", [[]]))
    assert "Geen overdrachten die de SLA dreigen te overschrijden." in second.text
    assert 'data-samenvatting="3 open overdrachten, 0 dreigen' in second.text


async def test_case_timeline_in_order_with_owner_and_deadlines(world: World) -> None:
    case_id = world.cases["A"]
    response = await world.client.get(f"/operator/cases/{case_id}", headers=OPERATOR)
    assert response.status_code == 200
    html = response.text
    assert "Zaak LK-AAAA-0001" in html
    assert 'id="eigenaar">Organisatie: Uitvoeringsinstituut Werknemersverzekeringen (UWV)<' in html
    t = tables(html)
    handoffs = t["tabel-overdrachten"][1:]
    assert [(r[1], r[2], r[3].split(" ")[0]) for r in handoffs] == [
        ("Uitvoeringsinstituut Werknemersverzekeringen (UWV)", "hoofdbehandelaar", "Geaccepteerd"),
        ("Sociale Verzekeringsbank (SVB)", "ondersteunend", "Afgewezen"),
    ]
    assert handoffs[0][4] == "Fatima el Amrani"
    assert handoffs[0][6] and handoffs[0][7] != "–"  # accept deadline, resolve deadline
    kinds = [row[1] for row in t["tabel-tijdlijn"][1:]]
    assert kinds == ["Gerouteerd", "Aangeboden", "Aangeboden", "Afgewezen", "Geaccepteerd"]
    declined = t["tabel-tijdlijn"][4]
    assert "Geen AOW of kinderbijslag" in declined[4] and "Gemeente" in declined[4]
    # escalated case: owner stays with the initiative
    other = await world.client.get(f"/operator/cases/{world.cases['C']}", headers=OPERATOR)
    assert 'id="eigenaar">Initiatief: Loket Chat<' in other.text
    kinds = [row[1] for row in tables(other.text)["tabel-tijdlijn"][1:]]
    assert kinds[-2:] == ["SLA verlopen", "Geëscaleerd"]
    # lookup by reference; unknown case
    found = await world.client.get("/operator/zoek?referentie=lk-aaaa-0001", headers=OPERATOR)
    assert found.status_code == 303 and found.headers["location"] == f"/operator/cases/{case_id}"
    missing = await world.client.get("/operator/cases/nope", headers=OPERATOR)
    assert missing.status_code == 404 and 'lang="nl"' in missing.text


async def test_login_cookie_and_keys(world: World) -> None:
    c = world.client
    anonymous = await c.get("/operator")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/operator/login?volgende=/operator"
    assert (await c.get("/operator/fragment")).status_code == 401
    # an agency key is not an operator key
    assert (await c.get("/operator", headers={"X-API-Key": "dev-uwv"})).status_code == 303
    form = await c.get("/operator/login")
    assert form.status_code == 200 and 'for="sleutel"' in form.text
    wrong = await c.post("/operator/login", data={"sleutel": "dev-uwv", "volgende": "/operator"})
    assert wrong.status_code == 401 and 'role="alert"' in wrong.text
    assert 'aria-invalid="true"' in wrong.text
    empty = await c.post("/operator/login", data={"sleutel": ""})
    assert empty.status_code == 422
    ok = await c.post(
        "/operator/login", data={"sleutel": "dev-operator", "volgende": "https://evil.example/"}
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/operator"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/operator" in cookie
    assert "dev-operator" not in cookie
    token = ok.cookies[COOKIE]
    c.cookies.clear()
    page = await c.get("/operator", headers={"Cookie": f"{COOKIE}={token}"})
    assert page.status_code == 200
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    refused = await c.get("/operator/fragment", headers={"Cookie": f"{COOKIE}={forged}"})
    assert refused.status_code == 401
    out = await c.post("/operator/logout", headers={"Cookie": f"{COOKIE}={token}"})
    assert out.status_code == 303 and 'loket_operator=""' in out.headers["set-cookie"]
    js = await c.get("/operator/static/operator.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert (await c.get("/operator/static/../app.py")).status_code == 404


async def test_operator_gauges_in_the_service_registry(world: World) -> None:
    await operator_state(world.app).overview(max_age=0)
    text = generate_latest(world.app.state.runtime.registry).decode()
    expected = [
        'loket_handoff_at_risk{agency="duo"} 1.0',
        'loket_handoff_breached_open{agency="maatwerkloket"} 1.0',
        "loket_handoff_at_risk_total_open 1.0",
        "loket_handoff_breached_total_open 1.0",
        "loket_handoff_median_accept_seconds 7.0",
        'loket_handoff_agency_median_accept_seconds{agency="uwv"} 10.0',
        'loket_handoff_escalations_by_reason{reason="sla"} 1.0',
        'loket_handoff_open_by_initiative{initiative="gemeente-den-haag-servicepunt"} 1.0',
        'loket_handoff_outcomes{agency="svb",outcome="declined"} 1.0',
        'loket_handoff_sla_events{kind="breach",sla="accept"} 2.0',
        "loket_handoff_time_scale 3600.0",
    ]
    for line in expected:
        assert line in text, line
    ratio = re.search(r"^loket_handoff_decline_ratio (\S+)$", text, re.M)
    assert ratio and float(ratio.group(1)) == pytest.approx(1 / 3)
