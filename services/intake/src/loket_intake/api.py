"""HTTP API of the intake service (``/api/v1``): thin adapters over handlers.py.

Order of checks on a write: content type (415) -> size while reading (413) -> API key
(401/403) -> JSON syntax (400) -> fields (422) -> Redis/Kafka (409/503). Nothing is
published unless every check passed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from loket_intake import domain, handlers
from loket_intake import openapi_docs as docs
from loket_intake.domain import FieldError
from loket_intake.email_intake import INITIATIVE_HEADER, EmailParseError, parse_email
from loket_intake.errors import (
    BadRequest,
    Forbidden,
    IntakeError,
    PayloadTooLarge,
    Retryable,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)
from loket_intake.settings import IntakeSettings
from loket_runtime.logging import bind_trace, clear_context, get_logger
from loket_schemas.catalog import Agency, Initiative, load_agencies, load_initiatives
from loket_schemas.tracing import TraceContext, new_trace, parse_traceparent

log = get_logger("loket.intake.api")

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
CASE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"

Endpoint = Callable[[Request], Awaitable[JSONResponse]]


# --------------------------------------------------------------------------- helpers


def start_trace(request: Request) -> TraceContext:
    """Start a span for this request (a child of the caller's ``traceparent`` if valid)."""
    parent = parse_traceparent(request.headers.get("traceparent"))
    trace = parent.child() if parent else new_trace()
    clear_context()
    bind_trace(trace.trace_id)
    return trace


class ApiKeys:
    """sha256(key) -> initiative id, from settings (and the dev keys when enabled)."""

    def __init__(self, settings: IntakeSettings) -> None:
        self.by_hash: dict[str, str] = {}
        if settings.dev_keys_enabled:
            self.by_hash.update(domain.dev_key_hashes())
        self.by_hash.update({h.lower(): i for h, i in settings.api_keys.items()})

    def initiative_for(self, key: str | None) -> str:
        if not key:
            raise Unauthorized("missing X-API-Key header")
        initiative = self.by_hash.get(domain.hash_api_key(key))
        if initiative is None:
            raise Unauthorized("unknown API key")
        return initiative


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it all (413)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body larger than {limit} bytes")
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest(
            "Idempotency-Key must be 1..200 visible ASCII characters",
            fields=[FieldError(IDEMPOTENCY_HEADER, "invalid_format", "1..200 visible ASCII")],
        )
    return key


def error_response(exc: IntakeError, settings: IntakeSettings | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": exc.status, "code": exc.code, "message": exc.message}
    if exc.fields:
        body["fields"] = [f.as_dict() for f in exc.fields]
    headers: dict[str, str] = {}
    if isinstance(exc, Retryable):
        headers["Retry-After"] = str(settings.retry_after_s if settings else 5)
    return JSONResponse({"error": body}, status_code=exc.status, headers=headers)


def accepted_response(body: Mapping[str, Any], replayed: bool = False) -> JSONResponse:
    headers = {"Location": str(body.get("status_url", ""))}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(dict(body), status_code=202, headers=headers)


def intake_error_response(exc: IntakeError, settings: IntakeSettings) -> JSONResponse:
    if exc.status >= 500:
        log.warning("request_failed", code=exc.code, status=exc.status, error=str(exc)[:300])
    return error_response(exc, settings)


def redis_error_response(exc: RedisError, settings: IntakeSettings) -> JSONResponse:
    log.warning("redis_unavailable", error=type(exc).__name__)
    err = Retryable("Redis is unavailable; retry later")
    err.code = "redis_unavailable"
    return error_response(err, settings)


def install_error_handlers(app: FastAPI, settings: IntakeSettings) -> None:
    """Every error, ours or the framework's, in the same body format."""

    @app.exception_handler(IntakeError)
    async def _intake_error(_request: Request, exc: IntakeError) -> JSONResponse:
        return intake_error_response(exc, settings)

    @app.exception_handler(RedisError)
    async def _redis_error(_request: Request, exc: RedisError) -> JSONResponse:
        return redis_error_response(exc, settings)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = IntakeError(str(exc.detail))
        err.status = exc.status_code
        err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = error_response(err, settings)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            FieldError(
                ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
                str(e.get("type", "invalid")),
                str(e.get("msg", "invalid")),
            )
            for e in exc.errors()
        ]
        return error_response(Unprocessable("invalid request", fields=fields), settings)


def route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` without the ``root_path`` mount."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


class QuestionFastPath:
    """ASGI middleware: ``POST /api/v1/questions`` straight to its endpoint.

    The hot path of intake. FastAPI's route machinery (route matching over every route,
    dependency solving, the exception and exit-stack layers) cost ~15 % of intake's CPU
    per question and add nothing here: the endpoint takes the raw ``Request`` and does
    its own checks in the documented order. The FastAPI route stays registered (OpenAPI,
    schemathesis) and runs the very same endpoint function; errors map to the same
    bodies as the app's exception handlers (IntakeError, RedisError). Anything else
    propagates to Starlette's ServerErrorMiddleware (500), as before.
    """

    PATH = "/api/v1/questions"

    def __init__(self, app: ASGIApp, endpoint: Endpoint, settings: IntakeSettings) -> None:
        self.app = app
        self.endpoint = endpoint
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) != self.PATH:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except IntakeError as exc:
            response = intake_error_response(exc, self.settings)
        except RedisError as exc:
            response = redis_error_response(exc, self.settings)
        await response(scope, receive, send)


# --------------------------------------------------------------------------- routes


def build_router(settings: IntakeSettings, keys: ApiKeys) -> tuple[APIRouter, Endpoint]:
    """The ``/api/v1`` routes, and the ``POST /questions`` endpoint for QuestionFastPath."""
    router = APIRouter(prefix="/api/v1", tags=["intake"])
    # The key is checked in the handlers (after content type and size); this documents it.
    api_key = [Security(docs.API_KEY_HEADER)]

    def deps(request: Request) -> handlers.Deps:
        deps_: handlers.Deps = request.app.state.deps
        return deps_

    @router.post(
        "/questions",
        status_code=202,
        summary="Submit a question (any channel)",
        response_class=JSONResponse,
        dependencies=api_key,
        responses=docs.accepted_response("Accepted: the question is on Kafka.")
        | docs.error_responses(400, 401, 403, 409, 413, 415, 422, 503),
        openapi_extra=docs.question_request_body(),
    )
    async def post_question(request: Request) -> JSONResponse:
        trace = start_trace(request)
        if media_type(request) != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")
        raw = await read_body(request, settings.max_json_bytes)
        initiative = keys.initiative_for(request.headers.get("x-api-key"))
        key = idempotency_key(request)
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("the body is not valid JSON") from None
        parsed = domain.parse_question(payload)
        if isinstance(parsed, list):
            raise Unprocessable("the question has invalid fields", fields=parsed)
        if parsed.initiative != initiative:
            raise Forbidden("this API key may only submit questions for its own initiative")
        idem = (
            handlers.Idempotency(initiative, key, domain.body_hash(payload))
            if key is not None
            else None
        )
        result = await handlers.submit_question(
            parsed, deps(request), trace=trace, idempotency=idem
        )
        return accepted_response(result.accepted.body(), result.replayed)

    @router.post(
        "/inbound/email",
        status_code=202,
        summary="Submit a raw e-mail (message/rfc822)",
        response_class=JSONResponse,
        dependencies=api_key,
        responses=docs.accepted_response("Accepted: the question is on Kafka.")
        | docs.error_responses(400, 401, 403, 409, 413, 415, 422, 503),
        openapi_extra=docs.email_request_body(),
    )
    async def post_email(request: Request) -> JSONResponse:
        trace = start_trace(request)
        if media_type(request) != "message/rfc822":
            raise UnsupportedMediaType("Content-Type must be message/rfc822")
        raw = await read_body(request, settings.max_email_bytes)
        initiative = keys.initiative_for(request.headers.get("x-api-key"))
        key = idempotency_key(request)
        try:
            mail = parse_email(raw)
        except EmailParseError as exc:
            raise BadRequest(f"not a usable e-mail message: {exc}") from None
        wanted = request.headers.get(INITIATIVE_HEADER) or mail.initiative or initiative
        if wanted != initiative:
            raise Forbidden("this API key may only submit questions for its own initiative")
        payload: dict[str, Any] = {
            "channel": "email",
            "initiative": initiative,
            "text": mail.text,
        }
        if mail.sender_email or mail.sender_name:
            contact = {"name": mail.sender_name, "email": mail.sender_email}
            payload["requester"] = {"kind": "person", "contact": contact}
        parsed = domain.parse_question(payload)
        if isinstance(parsed, list) and mail.sender_email:
            # a sender address we cannot use is no reason to lose the question
            payload.pop("requester", None)
            parsed = domain.parse_question(payload)
        if isinstance(parsed, list):
            raise Unprocessable("the e-mail holds no usable question", fields=parsed)
        # Idempotency: the explicit header, else the Message-ID (re-delivered mail).
        idem_key = key or (f"message-id:{mail.message_id}"[:200] if mail.message_id else None)
        idem = (
            handlers.Idempotency(initiative, idem_key, domain.body_hash(raw.decode("latin-1")))
            if idem_key
            else None
        )
        result = await handlers.submit_question(
            parsed, deps(request), trace=trace, idempotency=idem, attachments=mail.attachments
        )
        return accepted_response(result.accepted.body(), result.replayed)

    @router.get(
        "/initiatives",
        summary="The practice initiatives (catalog)",
        responses={200: {"model": list[Initiative], "description": "Every initiative."}},
    )
    async def get_initiatives() -> list[dict[str, Any]]:
        return [i.model_dump(mode="json") for i in load_initiatives().initiatives]

    @router.get(
        "/agencies",
        summary="The agencies (catalog)",
        responses={200: {"model": list[Agency], "description": "Every agency."}},
    )
    async def get_agencies() -> list[dict[str, Any]]:
        return [a.model_dump(mode="json") for a in load_agencies().agencies]

    @router.post(
        "/cases/{case_id}/consent/withdraw",
        status_code=202,
        summary="Withdraw the consent of a case",
        response_class=JSONResponse,
        dependencies=api_key,
        responses=docs.withdrawn_response() | docs.error_responses(401, 403, 404, 409, 422, 503),
        openapi_extra=docs.withdraw_extra(),
    )
    async def post_withdraw(
        case_id: Annotated[str, Path(description="The case id.", pattern=CASE_ID_PATTERN)],
        request: Request,
    ) -> JSONResponse:
        trace = start_trace(request)
        initiative = keys.initiative_for(request.headers.get("x-api-key"))
        if not re.fullmatch(CASE_ID_PATTERN, case_id):
            raise Unprocessable(
                "invalid case id", fields=[FieldError("case_id", "invalid_format", "not a case id")]
            )
        body = await handlers.withdraw_consent(case_id, initiative, deps(request), trace=trace)
        return JSONResponse(body, status_code=202)

    return router, post_question
