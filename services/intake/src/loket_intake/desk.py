"""The desk page (balie) for front-desk staff: server-rendered Jinja2, Dutch, accessible.

- ``GET /`` and ``GET /balie``: the form;
- ``POST /balie``: a plain form post, handled server-side with the same use case as the
  API (``handlers.submit_question``), so no API key ever reaches the browser. With
  dev keys enabled (development) the handler uses the dev key of the chosen initiative;
  otherwise the form asks for the initiative's API key (a password field) and checks it;
- ``GET /balie/status/{reference}?token=...``: the live status panel's data. intake asks
  handoff (``{handoff}/api/v1/status/{reference}?token=...``) server-side, so the page
  needs no CORS; when handoff does not answer (yet) it says "Ontvangen";
- ``GET /balie/balie.js``: a few lines of plain JS (focus, remembered initiative, status
  polling). No build step, no external assets: the page works offline.

Every form post carries a hidden ``form_id`` used as Idempotency-Key: a double click or a
refresh never files a question twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from loket_intake import domain, handlers
from loket_intake.api import ApiKeys, start_trace
from loket_intake.domain import FieldError
from loket_intake.errors import IntakeError, Retryable, Unauthorized
from loket_intake.settings import IntakeSettings
from loket_runtime.logging import get_logger
from loket_schemas.catalog import load_agencies, load_initiatives
from loket_schemas.vocabulary import Channel, DataCategory

log = get_logger("loket.intake.desk")

INITIATIVE_COOKIE = "loket_initiative"
MAX_FORM_BYTES = 64 * 1024

CHANNEL_LABELS: dict[str, str] = {
    Channel.BALIE.value: "Balie (persoonlijk)",
    Channel.TELEFOON.value: "Telefoon",
    Channel.WEB.value: "Webformulier",
    Channel.EMAIL.value: "E-mail",
    Channel.CHAT.value: "Chat",
    Channel.BRIEF.value: "Brief",
}

#: Plain Dutch per data category: what it is, and why an organisation would need it.
CATEGORY_TEXT: dict[str, tuple[str, str]] = {
    DataCategory.IDENTITY.value: (
        "Identiteit (BSN of KvK-nummer)",
        "Zo weet de organisatie over wie het gaat en hoeft u het niet opnieuw te vertellen.",
    ),
    DataCategory.CONTACT.value: (
        "Contactgegevens (naam, telefoon, e-mail)",
        "Zo kan een medewerker u direct bellen of mailen.",
    ),
    DataCategory.QUESTION_TEXT.value: (
        "Uw vraag zoals u die vertelde",
        "Zo begrijpt de organisatie uw situatie zonder dat u alles opnieuw uitlegt.",
    ),
    DataCategory.INCOME.value: (
        "Inkomen",
        "Nodig om bijvoorbeeld toeslagen, uitkeringen of een betalingsregeling te beoordelen.",
    ),
    DataCategory.DEBTS.value: (
        "Schulden en betalingsachterstanden",
        "Nodig om schulden samen op te lossen, bijvoorbeeld met een regeling.",
    ),
    DataCategory.BENEFITS.value: (
        "Uitkeringen en toeslagen",
        "Nodig om te zien welke uitkeringen of toeslagen u al krijgt.",
    ),
    DataCategory.HOUSEHOLD.value: (
        "Huishouden (partner, kinderen)",
        "Nodig omdat veel regelingen afhangen van wie er in uw huishouden woont.",
    ),
    DataCategory.HEALTH.value: (
        "Gezondheid",
        "Bijzonder persoonsgegeven: wordt alleen gedeeld met uw uitdrukkelijke toestemming.",
    ),
    DataCategory.RESIDENCE_STATUS.value: (
        "Verblijfsstatus",
        "Nodig bij vragen over verblijf in Nederland of rechten die daarvan afhangen.",
    ),
    DataCategory.BUSINESS.value: (
        "Bedrijfsgegevens",
        "Nodig bij vragen over uw onderneming.",
    ),
}

CONSENT_PERIODS: list[tuple[str, str]] = [
    ("90", "3 maanden"),
    ("365", "1 jaar"),
    ("730", "2 jaar"),
]

#: handoff's overall statuses (loket_handoff.status.PublicStatus.status) in plain Dutch.
STATUS_LABELS: dict[str, str] = {
    "ontvangen": "Ontvangen",
    "doorgestuurd": "Doorgestuurd",
    "in_behandeling": "In behandeling",
    "afgerond": "Afgerond",
}


@dataclass(frozen=True)
class PageError:
    """An error as shown on the page: the field's id (for the link) and a Dutch message."""

    field_id: str | None
    message: str


# --------------------------------------------------------------------------- errors


def _dutch_error(err: FieldError) -> PageError:
    f, code = err.field, err.code
    if f == "text":
        if code == "too_long":
            return PageError("text", "De vraag is te lang: gebruik maximaal 5000 tekens.")
        return PageError("text", "Vul de vraag in.")
    if f == "requester.bsn":
        if code == "bsn_elfproef":
            return PageError(
                "bsn",
                "Dit BSN klopt niet: het voldoet niet aan de elfproef. Controleer de cijfers.",
            )
        return PageError("bsn", "Een BSN bestaat uit 9 cijfers.")
    if f == "requester.kvk_number":
        return PageError("kvk", "Een KvK-nummer bestaat uit 8 cijfers.")
    if f == "requester.contact.email":
        return PageError("contact_email", "Vul een geldig e-mailadres in, zoals naam@voorbeeld.nl.")
    if f.startswith("requester.contact."):
        return PageError("contact_" + f.rsplit(".", 1)[-1], "Dit contactgegeven is te lang.")
    if f == "consent.explicit":
        return PageError(
            "consent_explicit",
            "Voor gezondheidsgegevens is uitdrukkelijke toestemming nodig. "
            "Vink die aan, of vink Gezondheid uit.",
        )
    if f == "initiative":
        return PageError("initiative", "Kies het loket waar u werkt.")
    if f == "channel":
        return PageError("channel", "Kies hoe de vraag binnenkwam.")
    if f.startswith("consent"):
        return PageError("consent-legend", "Controleer de toestemming.")
    return PageError(None, f"Controleer het veld {f}.")


# --------------------------------------------------------------------------- form


def _form_payload(
    form: dict[str, Any], categories: list[str]
) -> tuple[dict[str, Any], list[PageError]]:
    """The API payload for a submitted desk form, plus errors only the form can have."""
    errors: list[PageError] = []
    payload: dict[str, Any] = {
        "channel": form.get("channel") or "balie",
        "initiative": form.get("initiative") or "",
        "text": form.get("text") or "",
        "vulnerable": form.get("vulnerable") == "ja",
        "urgent": form.get("urgent") == "ja",
        "language": "nl",
    }
    contact = {
        "name": (form.get("contact_name") or "").strip() or None,
        "email": (form.get("contact_email") or "").strip() or None,
        "phone": (form.get("contact_phone") or "").strip() or None,
    }
    contact = {k: v for k, v in contact.items() if v}
    kind = form.get("id_kind") or "geen"
    if kind == "bsn":
        bsn = (form.get("bsn") or "").strip()
        if not bsn:
            errors.append(PageError("bsn", "Vul het BSN in, of kies Geen identificatie."))
        payload["requester"] = {"kind": "person", "bsn": bsn or None, "contact": contact or None}
    elif kind == "kvk":
        kvk = (form.get("kvk") or "").strip()
        if not kvk:
            errors.append(PageError("kvk", "Vul het KvK-nummer in, of kies Geen identificatie."))
            kvk = "0"
        payload["requester"] = {"kind": "business", "kvk_number": kvk, "contact": contact or None}
    elif contact:
        payload["requester"] = {"kind": "person", "contact": contact}
    if categories:
        days = int(form.get("consent_days") or "365")
        days = days if days in (90, 365, 730) else 365
        payload["consent"] = {
            "categories": categories,
            "purpose": "case_handling",
            "explicit": form.get("consent_explicit") == "ja",
            "expires_at": (datetime.now(UTC) + timedelta(days=days)).isoformat(),
        }
    return payload, errors


def _recipients_by_category() -> dict[str, dict[str, list[str]]]:
    """Per category: agencies that need consent, and agencies with a legal basis."""
    out: dict[str, dict[str, list[str]]] = {}
    for agency in load_agencies().agencies:
        for perm in agency.may_receive:
            slot = out.setdefault(perm.category.value, {"consent": [], "law": []})
            slot["consent" if perm.needs_consent else "law"].append(agency.name)
    return out


class DeskPage:
    def __init__(self, settings: IntakeSettings, keys: ApiKeys) -> None:
        self.settings = settings
        self.keys = keys
        self.env = Environment(
            loader=PackageLoader("loket_intake", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.template = self.env.get_template("balie.html")
        self.recipients = _recipients_by_category()
        self.client: httpx.AsyncClient | None = None

    def render(
        self,
        request: Request,
        *,
        form: dict[str, Any] | None = None,
        categories: list[str] | None = None,
        errors: list[PageError] | None = None,
        result: dict[str, Any] | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        form = form or {}
        if "initiative" not in form:
            form["initiative"] = request.cookies.get(INITIATIVE_COOKIE, "")
        html = self.template.render(
            form=form,
            categories=categories or [],
            errors=errors or [],
            error_fields={e.field_id: e.message for e in errors or [] if e.field_id},
            result=result,
            initiatives=load_initiatives().initiatives,
            channels=CHANNEL_LABELS,
            category_text=CATEGORY_TEXT,
            recipients=self.recipients,
            consent_periods=CONSENT_PERIODS,
            dev_keys=self.settings.dev_keys_enabled,
            form_id=uuid.uuid4().hex if result or not form.get("form_id") else form["form_id"],
        )
        return HTMLResponse(html, status_code=status_code)

    async def submit(self, request: Request) -> HTMLResponse:
        trace = start_trace(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            errors = [PageError("text", "De vraag is te lang: gebruik maximaal 5000 tekens.")]
            return self.render(request, errors=errors, status_code=413)
        data = await request.form()
        form = {k: v for k, v in data.items() if isinstance(v, str) and k != "consent"}
        categories = [
            v for v in data.getlist("consent") if isinstance(v, str) and v in CATEGORY_TEXT
        ]
        payload, errors = _form_payload(form, categories)
        initiative = payload["initiative"]
        try:
            if self.settings.dev_keys_enabled:
                key = domain.dev_api_key(initiative) if initiative else ""
            else:
                key = form.get("api_key", "")
            try:
                key_initiative = self.keys.initiative_for(key) if initiative else None
            except Unauthorized:
                key_initiative = None
                if not self.settings.dev_keys_enabled:
                    errors.append(PageError("api_key", "Deze API-sleutel is onbekend."))
            if key_initiative is not None and key_initiative != initiative:
                errors.append(PageError("api_key", "Deze API-sleutel hoort bij een ander loket."))
            parsed = domain.parse_question(payload)
            if isinstance(parsed, list):
                errors.extend(_dutch_error(e) for e in parsed)
            if errors or isinstance(parsed, list):
                errors = _dedupe(_order(errors))
                log.info("desk_form_invalid", fields=[e.field_id for e in errors])
                return self.render(
                    request, form=form, categories=categories, errors=errors, status_code=422
                )
            form_id = form.get("form_id", "")
            idem = (
                handlers.Idempotency(
                    initiative, f"desk:{form_id}"[:200], _form_hash(form, categories)
                )
                if form_id
                else None
            )
            deps: handlers.Deps = request.app.state.deps
            submitted = await handlers.submit_question(parsed, deps, trace=trace, idempotency=idem)
        except Retryable:
            errors = [
                PageError(
                    None,
                    # a timed-out publish may still land: "nothing was sent" would be
                    # untrue; the kept form_id makes the resubmission resume the same case
                    "De vraag is nog niet bevestigd. Verstuur het formulier over enkele "
                    "seconden opnieuw, ongewijzigd: de vraag wordt niet dubbel opgeslagen.",
                )
            ]
            return self.render(
                request, form=form, categories=categories, errors=errors, status_code=503
            )
        except IntakeError as exc:
            errors = [PageError(None, f"De vraag is niet verstuurd: {exc.message}")]
            return self.render(
                request, form=form, categories=categories, errors=errors, status_code=exc.status
            )
        accepted = submitted.accepted
        token = domain.status_token(accepted.reference, deps.pseudonym_key)
        result = {
            "reference": accepted.reference,
            "status_url": accepted.status_url,
            "poll_url": f"/balie/status/{accepted.reference}?token={token}",
            "initiative": initiative,
        }
        response = self.render(request, form={"initiative": initiative}, result=result)
        response.set_cookie(
            INITIATIVE_COOKIE,
            initiative,
            max_age=365 * 24 * 3600,
            httponly=True,
            samesite="strict",
        )
        return response

    async def status(self, reference: str, token: str) -> JSONResponse:
        ref = domain.normalise_reference(reference)
        key = self.settings.pseudonym_key.get_secret_value()
        if ref is None or not token or not domain.status_token_matches(ref, token, key):
            return JSONResponse({"error": "onbekende referentie"}, status_code=404)
        fallback = {"reference": ref, "status": "ontvangen", "label": "Ontvangen", "details": []}
        url = f"{self.settings.status_base_url}/api/v1/status/{ref}"
        try:
            if self.client is None:
                self.client = httpx.AsyncClient(timeout=1.5)
            resp = await self.client.get(url, params={"token": token})
            if resp.status_code != 200:
                return JSONResponse(fallback)
            data = resp.json()
        except (httpx.HTTPError, ValueError):
            return JSONResponse(fallback)
        return JSONResponse(summarise_status(ref, data) if isinstance(data, dict) else fallback)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


def summarise_status(reference: str, data: dict[str, Any]) -> dict[str, Any]:
    """Reduce handoff's public status (``PublicStatus``: status, samenvatting, stappen) to
    what the panel shows: one label and one line per organisation."""
    status = str(data.get("status") or "ontvangen")
    label = data.get("samenvatting") or STATUS_LABELS.get(status.lower(), status)
    details: list[str] = []
    for step in data.get("stappen") or []:
        if isinstance(step, dict):
            text = step.get("tekst") or ""
            name = step.get("organisatie") or ""
            details.append(str(text or name))
    return {"reference": reference, "status": status, "label": str(label), "details": details}


def _form_hash(form: dict[str, Any], categories: list[str]) -> str:
    """Hash of what the desk typed (not of the payload: that holds a computed expiry)."""
    typed = {k: v for k, v in form.items() if k != "api_key"}
    return domain.body_hash({"form": typed, "consent": sorted(categories)})


def _order(errors: list[PageError]) -> list[PageError]:
    """Errors in the order the fields appear on the page."""
    order = [
        "initiative",
        "api_key",
        "channel",
        "text",
        "bsn",
        "kvk",
        "contact_name",
        "contact_email",
        "contact_phone",
        "consent-legend",
        "consent_explicit",
    ]
    return sorted(errors, key=lambda e: order.index(e.field_id) if e.field_id in order else 99)


def _dedupe(errors: list[PageError]) -> list[PageError]:
    seen: set[str | None] = set()
    out: list[PageError] = []
    for e in errors:
        if e.field_id is not None and e.field_id in seen:
            continue
        seen.add(e.field_id)
        out.append(e)
    return out


def install(app: FastAPI, settings: IntakeSettings, keys: ApiKeys) -> DeskPage:
    page = DeskPage(settings, keys)
    js = resources.files("loket_intake").joinpath("static", "balie.js").read_text("utf-8")
    app.state.desk = page

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/balie", response_class=HTMLResponse, include_in_schema=False)
    async def get_desk(request: Request) -> HTMLResponse:
        return page.render(request)

    @app.post("/balie", response_class=HTMLResponse, include_in_schema=False)
    async def post_desk(request: Request) -> HTMLResponse:
        return await page.submit(request)

    @app.get("/balie/status/{reference}", include_in_schema=False)
    async def get_status(reference: str, token: str = "") -> JSONResponse:
        return await page.status(reference, token)

    @app.get("/balie/balie.js", include_in_schema=False)
    async def get_js() -> Response:
        return Response(
            js,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300"},
        )

    runtime = getattr(app.state, "runtime", None)
    if runtime is not None:
        runtime.on_shutdown(page.close)
    return page
