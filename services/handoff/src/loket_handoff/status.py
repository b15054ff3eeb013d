"""The public status of a case in plain Dutch, without personal data (pure).

The status page shows where a case stands: which organisations have it and what they
are doing, never names, contact details, question text or decline reasons.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from loket_handoff.businesshours import AMSTERDAM
from loket_handoff.domain import ESCALATION_POINT, Case, Handoff, HandoffState
from loket_schemas.catalog import AgencyCatalog
from loket_schemas.pseudonym import pseudonymise


def status_token(reference: str, pseudonym_key: str) -> str:
    """The status token of a reference (protocol item 6): 24 hex chars."""
    return pseudonymise(reference, pseudonym_key, domain="status-token")[4:28]


def token_matches(reference: str, token: str | None, pseudonym_key: str) -> bool:
    """Constant-time check of a status token."""
    if not token or not reference:
        return False
    expected = status_token(reference, pseudonym_key)
    return hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace"))


Overall = Literal["ontvangen", "doorgestuurd", "in_behandeling", "afgerond"]


class StatusStep(BaseModel):
    organisatie: str = Field(description="Organisation name (public).")
    status: Literal[
        "doorgestuurd", "in_behandeling", "afgerond", "doorgezet", "niet_van_toepassing"
    ]
    tekst: str = Field(description="Plain Dutch explanation.")
    sinds: datetime = Field(description="Since when (UTC).")
    verwacht_klaar: str | None = Field(default=None, description="Expected date, if known.")


class PublicStatus(BaseModel):
    referentie: str
    status: Overall
    samenvatting: str = Field(description="One sentence in plain Dutch.")
    stappen: list[StatusStep]
    bijgewerkt: datetime | None = None


def _date_nl(moment: datetime) -> str:
    months = [
        "januari", "februari", "maart", "april", "mei", "juni", "juli",
        "augustus", "september", "oktober", "november", "december",
    ]  # fmt: skip
    local = moment.astimezone(AMSTERDAM)
    return f"{local.day} {months[local.month - 1]} {local.year}"


def public_status(case: Case, handoffs: list[Handoff], catalog: AgencyCatalog) -> PublicStatus:
    steps: list[StatusStep] = []
    updated: datetime | None = None
    for h in sorted(handoffs, key=lambda x: x.offered_at):
        name = catalog.get(h.agency).name
        since = h.closed_at or h.accepted_at or h.offered_at
        updated = max(updated, since) if updated else since
        if h.state is HandoffState.OFFERED:
            step = StatusStep(
                organisatie=name,
                status="doorgestuurd",
                tekst=f"Uw vraag is doorgestuurd naar {name}. Een medewerker pakt de vraag op.",
                sinds=since,
            )
        elif h.state is HandoffState.ACCEPTED:
            step = StatusStep(
                organisatie=name,
                status="in_behandeling",
                tekst=f"Een medewerker van {name} behandelt uw vraag.",
                sinds=since,
                verwacht_klaar=_date_nl(h.expected_by) if h.expected_by else None,
            )
        elif h.state is HandoffState.RESOLVED:
            step = StatusStep(
                organisatie=name,
                status="afgerond",
                tekst=f"{name} heeft uw vraag afgehandeld.",
                sinds=since,
            )
        elif h.state is HandoffState.ESCALATED:
            step = StatusStep(
                organisatie=name,
                status="doorgezet",
                tekst=(
                    "Uw vraag is doorgezet naar het Maatwerkloket, dat zorgt dat de juiste "
                    "organisatie u helpt."
                ),
                sinds=since,
            )
        else:
            step = StatusStep(
                organisatie=name,
                status="niet_van_toepassing",
                tekst=f"{name} heeft uw vraag doorgestuurd naar een andere organisatie.",
                sinds=since,
            )
        steps.append(step)
    open_steps = [h for h in handoffs if h.is_open]
    if not handoffs:
        overall: Overall = "ontvangen"
        summary = "Uw vraag is ontvangen. We zoeken uit welke organisatie u kan helpen."
    elif open_steps:
        if any(h.state is HandoffState.ACCEPTED for h in open_steps):
            overall = "in_behandeling"
            summary = "Uw vraag is in behandeling."
        else:
            overall = "doorgestuurd"
            summary = "Uw vraag is doorgestuurd. Een medewerker pakt de vraag binnenkort op."
        if any(h.agency is ESCALATION_POINT for h in open_steps):
            summary += " Het Maatwerkloket houdt de regie over uw vraag."
    else:
        overall = "afgerond"
        summary = "Uw vraag is afgehandeld."
    return PublicStatus(
        referentie=case.reference,
        status=overall,
        samenvatting=summary,
        stappen=steps,
        bijgewerkt=updated,
    )
