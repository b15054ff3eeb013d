"""HTTP API of the handoff service (FastAPI router).

Agencies without a Kafka integration respond here; desk staff read case timelines; the
public reads a plain-Dutch status with a token. Authentication: ``X-API-Key``, stored as
sha256 hashes in settings (see README for the development keys).
"""

from __future__ import annotations

import html
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from loket_handoff.domain import (
    ESCALATION_POINT,
    OPERATOR,
    Handoff,
    HandoffState,
    Rejected,
    RejectionKind,
)
from loket_handoff.handlers import HandoffService
from loket_handoff.settings import hash_key
from loket_handoff.status import PublicStatus, public_status, token_matches
from loket_handoff.store import HandoffStore, TimelineEntry
from loket_schemas.events import (
    AcceptHandoff,
    ContactPerson,
    DeclineHandoff,
    EscalateHandoff,
    HandoffCommand,
    ResolveHandoff,
)
from loket_schemas.tracing import new_trace, parse_traceparent
from loket_schemas.vocabulary import AgencyCode

DESK = "desk"
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
REF_PATTERN = r"^[A-Za-z0-9-]{1,20}$"


class Problem(BaseModel):
    """An error: what went wrong, in one sentence."""

    detail: str


class FieldProblem(BaseModel):
    """One invalid input (FastAPI's request validation)."""

    loc: list[str | int]
    msg: str
    type: str


class InvalidInput(BaseModel):
    """422: a refused command (``detail`` is one sentence) or invalid input (a list)."""

    detail: str | list[FieldProblem]


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body could not be read (e.g. not UTF-8 JSON).",
        401: "Missing or unknown X-API-Key.",
        403: "The handoff is addressed to another agency (or the key may not do this).",
        404: "Unknown handoff, case or reference.",
        409: "Illegal transition (the reason says why); nothing changed.",
        422: "Invalid input (e.g. decline without reason or suggested agency).",
        503: "Temporarily unavailable (projection rebuilding, Kafka or Redis down); retry.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        out[c] = {"model": InvalidInput if c == 422 else Problem, "description": text[c]}
        if c == 503:
            out[c]["headers"] = {
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}
            }
    return out


# --------------------------------------------------------------------------- bodies


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcceptBody(StrictBody):
    contact: ContactPerson = Field(description="The named person who takes the case.")
    expected_by: AwareDatetime | None = Field(default=None, description="Expected resolution.")

    @field_validator("expected_by", mode="before")
    @classmethod
    def _rfc3339_only(cls, value: Any) -> Any:
        # pydantic would read a number as a Unix time; the API documents an RFC 3339 string
        if isinstance(value, int | float):
            raise ValueError("expected_by must be an RFC 3339 date-time string")
        return value


class DeclineBody(StrictBody):
    reason: str = Field(min_length=1, max_length=1000, description="Why declined.")
    suggested_agency: AgencyCode = Field(description="Where the case should go instead.")


class ResolveBody(StrictBody):
    summary: str | None = Field(default=None, max_length=2000, description="Outcome.")


class EscalateBody(StrictBody):
    note: str | None = Field(default=None, max_length=1000, description="Why.")


# --------------------------------------------------------------------------- views


class HandoffView(BaseModel):
    handoff_id: str
    case_id: str
    reference: str
    agency: AgencyCode
    role: str
    state: HandoffState
    urgency: str
    initiative_id: str
    offered_at: datetime
    accept_due_at: datetime
    contact: str | None = None
    accepted_at: datetime | None = None
    expected_by: datetime | None = None
    resolve_due_at: datetime | None = None
    sla_warning: bool = False
    sla_breached: bool = False
    closed_at: datetime | None = None
    reason: str | None = None
    suggested_agency: AgencyCode | None = None
    version: int

    @classmethod
    def of(cls, h: Handoff) -> HandoffView:
        return cls(
            handoff_id=h.handoff_id,
            case_id=h.case_id,
            reference=h.reference,
            agency=h.agency,
            role=h.role.value,
            state=h.state,
            urgency=h.urgency.value,
            initiative_id=h.initiative_id,
            offered_at=h.offered_at,
            accept_due_at=h.accept_due_at,
            contact=h.contact,
            accepted_at=h.accepted_at,
            expected_by=h.expected_by,
            resolve_due_at=h.resolve_due_at,
            sla_warning=h.warned,
            sla_breached=h.breached,
            closed_at=h.closed_at,
            reason=h.reason,
            suggested_agency=h.suggested_agency,
            version=h.version,
        )


class CommandResult(BaseModel):
    duplicate: bool = Field(description="True when the same response was already recorded.")
    events: list[str] = Field(description="CloudEvents types published.")
    handoff: HandoffView


class HandoffList(BaseModel):
    agency: AgencyCode
    state: str | None
    handoffs: list[HandoffView]


class TimelineItem(BaseModel):
    event_id: str
    kind: str
    at: datetime
    agency: str | None = None
    handoff_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, e: TimelineEntry) -> TimelineItem:
        return cls(
            event_id=e.event_id,
            kind=e.kind,
            at=e.at,
            agency=e.agency,
            handoff_id=e.handoff_id,
            detail=e.detail,
        )


class CaseDetail(BaseModel):
    case_id: str
    reference: str
    initiative_id: str
    owner: str = Field(description="initiative:<id> or agency:<code>: exactly one.")
    lead: AgencyCode
    declined_by: list[AgencyCode]
    decline_count: int
    escalations: int
    open_handoffs: list[HandoffView]
    handoffs: list[HandoffView]
    timeline: list[TimelineItem]


# --------------------------------------------------------------------------- deps


def _service(request: Request) -> HandoffService:
    service: HandoffService = request.app.state.handoff_service
    return service


def _store(request: Request) -> HandoffStore:
    return _service(request).store


API_KEY = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="Agency key (sha256 in LOKET_HANDOFF_API_KEYS), operator or desk key; "
    "development keys dev-<agency>, dev-operator, dev-desk (see README).",
    auto_error=False,
)


def principal(
    request: Request,
    x_api_key: Annotated[str | None, Security(API_KEY)] = None,
) -> str:
    """The agency code, ``operator`` or ``desk`` that the API key belongs to."""
    if not x_api_key:
        raise HTTPProblem(401, "X-API-Key header required")
    table: dict[str, str] = request.app.state.handoff_keys
    who = table.get(hash_key(x_api_key))
    if who is None:
        raise HTTPProblem(401, "unknown API key")
    return who


Principal = Annotated[str, Depends(principal)]
HandoffId = Annotated[str, Path(pattern=ID_PATTERN, description="The handoff id.")]

STATUS_PAGE_404: dict[int | str, dict[str, Any]] = {
    404: {"content": {"text/html": {}}, "description": "Unknown reference or bad token."}
}

STATUS_FOR = {
    RejectionKind.NOT_FOUND: 404,
    RejectionKind.FORBIDDEN: 403,
    RejectionKind.CONFLICT: 409,
    RejectionKind.INVALID: 422,
}


def build_router() -> APIRouter:
    router = APIRouter()

    async def run(
        request: Request, handoff_id: str, who: str, make: Any, *, escalate: bool = False
    ) -> CommandResult:
        service = _service(request)
        await service.ensure_ready()
        handoff = await service.store.get_handoff(handoff_id)
        if handoff is None:
            raise HTTPProblem(404, "unknown handoff")
        if who == DESK:
            raise HTTPProblem(403, "desk keys cannot respond to handoffs")
        if who == OPERATOR or (escalate and who == ESCALATION_POINT.value):
            agency = handoff.agency
        else:
            agency = AgencyCode(who)
            if agency != handoff.agency:
                raise HTTPProblem(403, f"handoff is addressed to {handoff.agency.value}")
        command: HandoffCommand = make(handoff.case_id, handoff_id, agency)
        trace = parse_traceparent(request.headers.get("traceparent")) or new_trace()
        outcome = await service.handle_command(
            command, command_id=str(uuid.uuid4()), actor=who, via="http", trace=trace
        )
        if isinstance(outcome.decision, Rejected):
            raise HTTPProblem(STATUS_FOR[outcome.decision.kind], outcome.decision.reason)
        current = await service.store.get_handoff(handoff_id)
        assert current is not None
        return CommandResult(
            duplicate=outcome.decision.duplicate,
            events=[e.EVENT_TYPE for e in outcome.events],
            handoff=HandoffView.of(current),
        )

    common = problem_responses(400, 401, 403, 404, 409, 422, 503)

    @router.post(
        "/api/v1/handoffs/{handoff_id}/accept",
        response_model=CommandResult,
        responses=common,
        tags=["handoffs"],
        summary="Accept a handoff: a named person takes responsibility",
    )
    async def accept(
        request: Request, handoff_id: HandoffId, body: AcceptBody, who: Principal
    ) -> CommandResult:
        return await run(
            request,
            handoff_id,
            who,
            lambda c, h, a: AcceptHandoff(
                case_id=c,
                handoff_id=h,
                agency=a,
                contact=body.contact,
                expected_by=body.expected_by,
            ),
        )

    @router.post(
        "/api/v1/handoffs/{handoff_id}/decline",
        response_model=CommandResult,
        responses=common,
        tags=["handoffs"],
        summary="Decline a handoff, saying why and where it should go instead",
    )
    async def decline(
        request: Request, handoff_id: HandoffId, body: DeclineBody, who: Principal
    ) -> CommandResult:
        return await run(
            request,
            handoff_id,
            who,
            lambda c, h, a: DeclineHandoff(
                case_id=c,
                handoff_id=h,
                agency=a,
                reason=body.reason,
                suggested_agency=body.suggested_agency,
            ),
        )

    @router.post(
        "/api/v1/handoffs/{handoff_id}/resolve",
        response_model=CommandResult,
        responses=common,
        tags=["handoffs"],
        summary="Mark an accepted handoff resolved",
    )
    async def resolve(
        request: Request,
        handoff_id: HandoffId,
        who: Principal,
        body: ResolveBody | None = None,
    ) -> CommandResult:
        summary = body.summary if body else None
        return await run(
            request,
            handoff_id,
            who,
            lambda c, h, a: ResolveHandoff(case_id=c, handoff_id=h, agency=a, summary=summary),
        )

    @router.post(
        "/api/v1/handoffs/{handoff_id}/escalate",
        response_model=CommandResult,
        responses=common,
        tags=["handoffs"],
        summary="Escalate a handoff to maatwerkloket (addressee, maatwerkloket or operator)",
    )
    async def escalate(
        request: Request,
        handoff_id: HandoffId,
        who: Principal,
        body: EscalateBody | None = None,
    ) -> CommandResult:
        note = body.note if body else None
        return await run(
            request,
            handoff_id,
            who,
            lambda c, h, a: EscalateHandoff(case_id=c, handoff_id=h, agency=a, note=note),
            escalate=True,
        )

    @router.get(
        "/api/v1/handoffs",
        response_model=HandoffList,
        responses=problem_responses(401, 403, 503),
        tags=["handoffs"],
        summary="Handoffs of an agency (open ones oldest first; closed ones newest first)",
    )
    async def list_handoffs(
        request: Request,
        who: Principal,
        agency: Annotated[
            AgencyCode | None, Query(description="Defaults to the key's agency.")
        ] = None,
        state: Annotated[HandoffState | None, Query(description="Filter by state.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> HandoffList:
        store = _store(request)
        await _service(request).ensure_ready()
        if who in (OPERATOR,):
            if agency is None:
                raise HTTPProblem(403, "operators must name an agency")
            target = agency
        elif who == DESK:
            raise HTTPProblem(403, "desk keys cannot list agency handoffs")
        else:
            own = AgencyCode(who)
            if agency is not None and agency != own:
                raise HTTPProblem(403, f"this key belongs to {own.value}")
            target = own
        if state in (None, HandoffState.OFFERED, HandoffState.ACCEPTED):
            found = await store.open_handoffs(agency=target, state=state, limit=limit)
        else:
            found = await store.closed_handoffs(target, state=state, limit=limit)
        return HandoffList(
            agency=target,
            state=state.value if state else None,
            handoffs=[HandoffView.of(h) for h in found],
        )

    @router.get(
        "/api/v1/handoffs/{handoff_id}",
        response_model=HandoffView,
        responses=problem_responses(401, 403, 404, 503),
        tags=["handoffs"],
        summary="One handoff (its addressee, operators and desk staff)",
    )
    async def get_handoff(request: Request, handoff_id: HandoffId, who: Principal) -> HandoffView:
        await _service(request).ensure_ready()
        handoff = await _store(request).get_handoff(handoff_id)
        if handoff is None:
            raise HTTPProblem(404, "unknown handoff")
        if who not in (OPERATOR, DESK) and who != handoff.agency.value:
            raise HTTPProblem(403, f"handoff is addressed to {handoff.agency.value}")
        return HandoffView.of(handoff)

    @router.get(
        "/api/v1/cases/{case_id}",
        response_model=CaseDetail,
        responses=problem_responses(401, 403, 404, 503),
        tags=["cases"],
        summary="A case for desk staff: timeline in order, owner, open handoffs",
    )
    async def get_case(
        request: Request,
        case_id: Annotated[str, Path(pattern=ID_PATTERN)],
        who: Principal,
    ) -> CaseDetail:
        if who not in (OPERATOR, DESK):
            raise HTTPProblem(403, "a desk or operator key is required")
        store = _store(request)
        await _service(request).ensure_ready()
        found = await store.case_view(case_id)
        if found is None:
            raise HTTPProblem(404, "unknown case")
        case, handoffs = found
        views = [HandoffView.of(h) for h in sorted(handoffs, key=lambda h: h.offered_at)]
        return CaseDetail(
            case_id=case.case_id,
            reference=case.reference,
            initiative_id=case.initiative_id,
            owner=case.owner,
            lead=case.lead,
            declined_by=list(case.declined_by),
            decline_count=case.decline_count,
            escalations=case.escalations,
            open_handoffs=[
                v for v in views if v.state in (HandoffState.OFFERED, HandoffState.ACCEPTED)
            ],
            handoffs=views,
            timeline=[TimelineItem.of(e) for e in await store.timeline(case_id)],
        )

    async def lookup_status(request: Request, reference: str, token: str | None) -> PublicStatus:
        settings = request.app.state.settings
        key = settings.pseudonym_key.get_secret_value()
        if not token_matches(reference, token, key):
            raise HTTPProblem(404, "onbekende referentie of ongeldige link")
        service = _service(request)
        await service.ensure_ready()
        case_id = await service.store.case_id_for_reference(reference)
        found = await service.store.case_view(case_id) if case_id else None
        if found is None:
            raise HTTPProblem(404, "onbekende referentie of ongeldige link")
        case, handoffs = found
        return public_status(case, handoffs, service.catalog)

    @router.get(
        "/api/v1/status/{reference}",
        response_model=PublicStatus,
        responses=problem_responses(404, 503),
        tags=["status"],
        summary="Public status of a case in plain Dutch (no personal data)",
    )
    async def status_json(
        request: Request,
        reference: Annotated[str, Path(pattern=REF_PATTERN)],
        token: Annotated[str | None, Query(max_length=64)] = None,
    ) -> PublicStatus:
        return await lookup_status(request, reference, token)

    @router.get(
        "/status/{reference}",
        response_class=HTMLResponse,
        responses=problem_responses(503) | STATUS_PAGE_404,
        tags=["status"],
        summary="Public status page (HTML, Dutch)",
    )
    async def status_page(
        request: Request,
        reference: Annotated[str, Path(pattern=REF_PATTERN)],
        token: Annotated[str | None, Query(max_length=64)] = None,
    ) -> HTMLResponse:
        try:
            status = await lookup_status(request, reference, token)
        except HTTPProblem as exc:
            if exc.status != 404:
                raise
            return HTMLResponse(render_status_html(None), status_code=404)
        return HTMLResponse(render_status_html(status))

    return router


def render_status_html(status: PublicStatus | None) -> str:
    """Minimal accessible status page (the full template may replace this)."""
    if status is None:
        body = (
            "<h1>Status van uw vraag</h1>"
            '<p role="alert">We kunnen deze vraag niet vinden. Controleer de link die u '
            "heeft gekregen.</p>"
        )
    else:
        items = "".join(
            f"<li><strong>{html.escape(s.organisatie)}</strong>: {html.escape(s.tekst)}"
            + (
                f" Verwachte afronding: {html.escape(s.verwacht_klaar)}."
                if s.verwacht_klaar
                else ""
            )
            + "</li>"
            for s in status.stappen
        )
        body = (
            f"<h1>Status van uw vraag {html.escape(status.referentie)}</h1>"
            f"<p>{html.escape(status.samenvatting)}</p>"
            f'<h2>Stappen</h2><ol aria-label="Stappen">{items}</ol>'
        )
    return (
        '<!doctype html><html lang="nl"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Status van uw vraag - Loket</title></head>"
        f"<body><main>{body}</main></body></html>"
    )


def problem_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPProblem)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


def unavailable_handler(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"temporarily unavailable: {type(exc).__name__}"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


ActorKind = Literal["agency", "operator", "desk"]
