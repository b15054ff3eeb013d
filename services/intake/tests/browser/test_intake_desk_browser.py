"""The desk page in real headless Chromium (Debian's, never a downloaded browser), against
a real intake (uvicorn in a thread) on real Kafka and Redis.

Needs /usr/bin/chromium: ``bash deploy/local/chromium.sh`` installs it (root + apt-get).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from intake_support import records_before_markers

from loket_intake.app import create_app
from loket_intake.settings import IntakeSettings
from loket_runtime.testing import consume_until, free_port
from loket_schemas import topics
from loket_schemas.events import QuestionReceived
from loket_schemas.kafka import decode

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
INITIATIVE = "bibliotheek-utrecht-neude"
REFERENCE = re.compile(r"^LK-[0-9A-Z]{4}-[0-9A-Z]{4}$")


@pytest.fixture
def intake_url(loket_settings: dict[str, Any]) -> Iterator[tuple[str, IntakeSettings]]:
    """intake served by uvicorn in a thread on a free port (handoff deliberately absent)."""
    port = free_port()
    settings = IntakeSettings(
        **loket_settings,
        port=port,
        handoff_internal_url=f"http://127.0.0.1:{free_port()}",  # nobody answers there
    )
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
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("intake did not start")
        time.sleep(0.05)  # uvicorn offers no start event across threads
    try:
        yield f"http://127.0.0.1:{port}", settings
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
            context = await browser.new_context(locale="nl-NL")
            yield await context.new_page()
        finally:
            await browser.close()


async def focused_id(page: Any) -> str:
    return str(await page.evaluate("document.activeElement && document.activeElement.id"))


async def test_desk_question_by_keyboard_shows_reference_and_reaches_kafka(
    intake_url: tuple[str, IntakeSettings], page: Any, kafka_bootstrap: str
) -> None:
    base, settings = intake_url
    await page.goto(f"{base}/balie")
    assert await page.get_attribute("html", "lang") == "nl"

    # Every control is reachable with Tab, in page order.
    seen: list[str] = []
    for _ in range(60):
        await page.keyboard.press("Tab")
        seen.append(await focused_id(page))
    controls = ["initiative", "channel", "text", "id_kind_geen", "bsn", "consent_identity"]
    controls += ["consent_health", "consent_explicit", "vulnerable", "urgent", "versturen"]
    for control in controls:
        assert control in seen, (control, seen)
    assert seen.index("initiative") < seen.index("text") < seen.index("versturen")

    # Fill in with the keyboard only.
    await page.focus("#initiative")
    await page.select_option("#initiative", INITIATIVE)
    await page.focus("#text")
    await page.keyboard.type("Mijn toeslag is stopgezet en ik heb een schuld bij de gemeente.")
    await page.focus("#id_kind_bsn")
    await page.keyboard.press("Space")
    await page.focus("#bsn")
    await page.keyboard.type("111222333")
    await page.focus("#consent_identity")
    await page.keyboard.press("Space")
    await page.focus("#consent_debts")
    await page.keyboard.press("Space")
    await page.focus("#urgent")
    await page.keyboard.press("Space")
    await page.focus("#versturen")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#referentie")

    reference = (await page.text_content("#referentie") or "").strip()
    assert REFERENCE.fullmatch(reference), reference
    assert await focused_id(page) == "resultaat-kop"
    # handoff does not answer: the live panel says "Ontvangen"
    await page.wait_for_function(
        "document.getElementById('status').textContent.includes('Ontvangen')"
    )
    status_link = await page.get_attribute(".resultaat a", "href")
    assert status_link and f"/status/{reference}?token=" in status_link

    [record] = await consume_until(
        kafka_bootstrap,
        settings.topic(topics.QUESTIONS),
        predicate=lambda r: reference.encode() in (r.value or b""),
        timeout=20,
    )
    event = decode(record.value, record.headers, expect=(QuestionReceived,)).data
    assert isinstance(event, QuestionReceived)
    assert event.initiative_id == INITIATIVE and event.urgent
    assert event.consent is not None
    assert {c.value for c in event.consent.categories} == {"identity", "debts"}

    # the chosen initiative is remembered
    await page.goto(f"{base}/balie")
    assert await page.eval_on_selector("#initiative", "e => e.value") == INITIATIVE


async def test_empty_question_shows_error_summary_with_focus(
    intake_url: tuple[str, IntakeSettings], page: Any, kafka_bootstrap: str
) -> None:
    base, settings = intake_url
    await page.goto(f"{base}/balie")
    await page.select_option("#initiative", INITIATIVE)
    await page.focus("#versturen")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#foutsamenvatting")

    assert await focused_id(page) == "foutsamenvatting"
    assert await page.get_attribute("#foutsamenvatting", "role") == "alert"
    assert (await page.title()).startswith("Fout:")
    link = page.locator("#foutsamenvatting a[href='#text']")
    assert (await link.text_content() or "").strip() == "Vul de vraag in."
    assert await page.get_attribute("#text", "aria-invalid") == "true"
    assert "text-fout" in (await page.get_attribute("#text", "aria-describedby") or "")
    # following the link with the keyboard puts the cursor in the field
    await link.focus()
    await page.keyboard.press("Enter")
    assert await focused_id(page) == "text"
    # and nothing was published
    assert await records_before_markers(kafka_bootstrap, settings.topic(topics.QUESTIONS)) == []
