"""The operator page in real headless Chromium (Debian's, never a downloaded browser),
against the real handoff app (uvicorn in a thread) on real Kafka and Redis.

Cases are seeded the production way: CaseRouted records on loket.handoffs.v1 and agency
responses over the HTTP API. The SLA clock runs 3600x, so urgent SLAs breach in seconds.
Needs /usr/bin/chromium: ``bash deploy/local/chromium.sh`` installs it (root + apt-get).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from handoff_operator_support import operator_settings

from loket_handoff.app import create_app
from loket_runtime.testing import free_port, repo_root
from loket_schemas import topics
from loket_schemas.events import AgencyAssignment, AgencyRole, CaseRouted
from loket_schemas.kafka import encode, service_source
from loket_schemas.vocabulary import AgencyCode, Urgency

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = os.environ.get("LOKET_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = bool(shutil.which(CHROMIUM)) or os.path.exists(CHROMIUM)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPERATOR = {"X-API-Key": "dev-operator"}


@pytest.fixture
def handoff_url(loket_settings: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    settings = operator_settings(loket_settings, port=port, handoff_timer_interval_s=0.1)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("handoff did not start")
        time.sleep(0.05)  # uvicorn offers no start event across threads
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        pytest.skip(f"{CHROMIUM} missing: run `bash deploy/local/chromium.sh` (as root)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                locale="nl-NL",
                viewport={"width": 1400, "height": 900},
                bypass_csp=True,  # the page's CSP forbids eval; Playwright's waits need it
            )
            yield await context.new_page()
        finally:
            await browser.close()


class Router:
    """Publishes CaseRouted like the router does (acks=all, key = case id)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.topic = topics.prefixed(topics.HANDOFFS, prefix)

    async def route(
        self,
        lead: AgencyCode,
        reference: str,
        *,
        initiative: str = "bibliotheek-utrecht-neude",
        urgency: Urgency = Urgency.NORMAL,
    ) -> str:
        case_id = str(uuid.uuid4())
        routed = CaseRouted(
            case_id=case_id,
            reference=reference,
            initiative_id=initiative,
            lead=lead,
            assignments=[AgencyAssignment(agency=lead, role=AgencyRole.LEAD, confidence=0.9)],
            urgency=urgency,
            routed_at=datetime.now(UTC),
        )
        record = encode(routed, source=service_source("router"))
        await self.producer.send_and_wait(
            self.topic, record.value, key=record.key, headers=list(record.headers)
        )
        return case_id


async def eventually(probe: Any, timeout: float = 30.0, what: str = "condition") -> Any:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def open_handoff(api: httpx.AsyncClient, case_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        response = await api.get(f"/api/v1/cases/{case_id}", headers=OPERATOR)
        if response.status_code != 200 or not response.json()["open_handoffs"]:
            return None
        found: dict[str, Any] = response.json()["open_handoffs"][0]
        return found

    found: dict[str, Any] = await eventually(probe, what=f"handoff of {case_id}")
    return found


async def table_cell(page: Any, table: str, row_header: str, column: int) -> str:
    """Text of cell ``column`` (0 = the row header) of the row whose header is ``row_header``."""
    return str(
        await page.evaluate(
            """([table, header, column]) => {
                for (const row of document.querySelectorAll(`#${table} tbody tr`)) {
                    if (row.cells[0].textContent.trim() === header)
                        return row.cells[column].textContent.trim();
                }
                return null;
            }""",
            [table, row_header, column],
        )
    )


async def test_operator_page_live_refresh_drilldown_and_keyboard(
    handoff_url: str, page: Any, kafka_bootstrap: str, topic_prefix: str
) -> None:
    router = Router(kafka_bootstrap, topic_prefix)
    await router.producer.start()
    try:
        async with httpx.AsyncClient(base_url=handoff_url, timeout=10) as api:
            await _scenario(handoff_url, page, router, api)
    finally:
        await router.producer.stop()


async def _scenario(base: str, page: Any, router: Router, api: httpx.AsyncClient) -> None:
    uwv_case = await router.route(AgencyCode.UWV, "LK-UWV1-TEST")
    mwl_case = await router.route(
        AgencyCode.MAATWERKLOKET, "LK-MWL1-TEST", initiative="online-loket-chat",
        urgency=Urgency.URGENT,
    )  # fmt: skip
    uwv = await open_handoff(api, uwv_case)
    accepted = await api.post(
        f"/api/v1/handoffs/{uwv['handoff_id']}/accept",
        json={"contact": {"name": "Fatima el Amrani"}},
        headers={"X-API-Key": "dev-uwv"},
    )
    assert accepted.status_code == 200, accepted.text
    await open_handoff(api, mwl_case)

    # Not logged in: the login form; log in with the keyboard only.
    await page.goto(f"{base}/operator")
    assert page.url.startswith(f"{base}/operator/login")
    assert await page.get_attribute("html", "lang") == "nl"
    await page.focus("#sleutel")
    await page.keyboard.type("dev-operator")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#tabel-organisaties")
    assert page.url == f"{base}/operator"
    assert await page.title() == "Overdrachten en SLA's - Loket operator"

    # Tables: agency names from the catalog, per initiative, with captions.
    uwv_name = "Uitvoeringsinstituut Werknemersverzekeringen (UWV)"
    assert await table_cell(page, "tabel-organisaties", uwv_name, 1) == "1"
    assert await table_cell(page, "tabel-organisaties", uwv_name, 4) == "1"  # accepted
    assert await table_cell(page, "tabel-initiatieven", "Loket Chat", 2) == "1"
    assert await page.locator("table caption").count() >= 3

    # The urgent maatwerkloket SLA (2 h = 2 s) breaches; a refresh shows it without reload.
    await page.evaluate("window.__sameDocument = true")
    await page.wait_for_function(
        "document.querySelector('#tabel-verlopen') && "
        "document.querySelector('#tabel-verlopen').textContent.includes('LK-MWL1-TEST')",
        timeout=20_000,
    )
    # A new event after the page loaded appears by the fragment refresh, too.
    await router.route(AgencyCode.DUO, "LK-DUO1-TEST", initiative="duo-servicekantoor-groningen")
    duo = "Dienst Uitvoering Onderwijs (DUO)"
    await page.wait_for_function(
        """(name) => [...document.querySelectorAll('#tabel-organisaties tbody tr')].some(
            r => r.cells[0].textContent.trim() === name
                 && r.cells[1].textContent.trim() === '1')""",
        arg=duo,
        timeout=20_000,
    )
    assert await page.evaluate("window.__sameDocument === true")  # no full reload
    live = await page.text_content("#kerncijfers-live")
    assert live and "3 open overdrachten" in live

    # Keyboard: skip link first, then the controls in page order, focus visible.
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    await page.focus("body")
    order: list[str] = []
    for _ in range(7):  # skip link, brand, logout, search field + button, pause, case link
        await page.keyboard.press("Tab")
        name, outline = await page.evaluate(
            """[document.activeElement.id || document.activeElement.textContent.trim(),
                getComputedStyle(document.activeElement).outlineStyle]"""
        )
        assert outline != "none", f"no visible focus on {name}"
        order.append(name)
    assert order[0] == "Naar de inhoud", order
    assert order.index("Uitloggen") < order.index("referentie") < order.index("verversen-pauze")
    assert order[-1].startswith("tabel-verlopen-"), order  # then the tables' case links
    # The pause button works from the keyboard.
    await page.focus("#verversen-pauze")
    await page.keyboard.press("Space")
    assert (await page.text_content("#verversen-pauze")) == "Verversen hervatten"
    assert "gepauzeerd" in (await page.text_content("#verversen-status") or "")
    await page.keyboard.press("Space")
    assert (await page.text_content("#verversen-pauze")) == "Verversen pauzeren"

    screenshots = repo_root() / "var" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(screenshots / "operator-overview.png"), full_page=True)

    # Drill down: the breached case's timeline.
    await page.click("#tabel-verlopen a:text('LK-MWL1-TEST')")
    await page.wait_for_selector("#tabel-tijdlijn")
    assert (await page.text_content("h1")) == "Zaak LK-MWL1-TEST"
    kinds = await page.eval_on_selector_all(
        "#tabel-tijdlijn tbody tr th", "cells => cells.map(c => c.textContent.trim())"
    )
    assert kinds[:2] == ["Gerouteerd", "Aangeboden"] and "SLA verlopen" in kinds
    state = await page.text_content("#tabel-overdrachten tbody tr td:last-child")
    assert state and "Verlopen" in state
    assert "Initiatief: Loket Chat" in (await page.text_content("#eigenaar") or "")
    await page.screenshot(path=str(screenshots / "operator-case.png"), full_page=True)
