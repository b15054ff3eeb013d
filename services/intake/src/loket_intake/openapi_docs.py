"""What the intake API documents in its OpenAPI (``/openapi.json``); no behaviour here.

The write routes read their bodies themselves (content type, size and API key are checked
before parsing, see api.py), so FastAPI cannot infer the request bodies; they are
described here and attached to the routes with ``openapi_extra``. The documented schemas
say exactly what the handlers accept (tests/api/test_api_fuzz_intake.py holds the
implementation to them with schemathesis): unknown fields are rejected, ``initiative``
is one of the catalog's ids, a BSN has the custom ``format: bsn`` (nine digits passing
the eleven-test), ``expires_at`` the custom ``format: future-date-time``.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from loket_intake.domain import QuestionIn
from loket_schemas.catalog import load_initiatives

API_KEY_HEADER: Final = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="API key of a practice initiative (stored as sha256 in LOKET_API_KEYS; "
    "development keys dev-<initiative-id>, see README).",
    auto_error=False,
)
"""The security scheme (documentation only: api.py checks the key itself, after the
content type and the body size)."""


# --------------------------------------------------------------------------- bodies


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of the field, e.g. requester.bsn.")
    code: str = Field(description="Stable code, e.g. required, bsn_elfproef, unknown_field.")
    message: str


class ErrorDetail(BaseModel):
    status: int = Field(description="The HTTP status, repeated.")
    code: str = Field(description="Stable error code, e.g. validation_failed.")
    message: str = Field(description="One sentence for people.")
    fields: list[FieldProblem] | None = Field(
        default=None, description="Field-level problems (400, 422)."
    )


class ErrorBody(BaseModel):
    """Every error of the intake API, ours or the framework's."""

    error: ErrorDetail


class AcceptedBody(BaseModel):
    case_id: str = Field(description="The case id (also the Kafka key).")
    reference: str = Field(description="LK-XXXX-XXXX, for people.")
    status_url: str = Field(description="Public status page of the case (with its token).")


class WithdrawnBody(BaseModel):
    case_id: str
    consent_id: str
    status: str = Field(description="Always withdrawn.")
    withdrawn_at: str = Field(description="RFC 3339 time of the (first) withdrawal.")


ERROR_TEXT: Final = {
    400: "Malformed request: body is not JSON / not an e-mail, bad Idempotency-Key "
    "or Content-Length.",
    401: "Missing or unknown X-API-Key.",
    403: "The key belongs to another initiative than the question (or the case).",
    404: "Unknown case.",
    409: "Idempotency-Key reused with another body or still in progress; or no consent "
    "to withdraw.",
    413: "Body larger than the configured limit.",
    415: "Wrong Content-Type.",
    422: "Fields are invalid (see error.fields).",
    503: "Kafka or Redis did not answer; retry later with the same Idempotency-Key (Retry-After).",
}

RETRY_AFTER: Final = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        response: dict[str, Any] = {"model": ErrorBody, "description": ERROR_TEXT[code]}
        if code == 503:
            response["headers"] = RETRY_AFTER
        out[code] = response
    return out


def accepted_response(description: str) -> dict[int | str, dict[str, Any]]:
    headers = {
        "Location": {"description": "The status_url.", "schema": {"type": "string"}},
        "Idempotent-Replayed": {
            "description": "true when this answers a repeated Idempotency-Key.",
            "schema": {"type": "string", "enum": ["true"]},
        },
    }
    return {202: {"model": AcceptedBody, "description": description, "headers": headers}}


def withdrawn_response() -> dict[int | str, dict[str, Any]]:
    return {202: {"model": WithdrawnBody, "description": "Withdrawn (or already was)."}}


# --------------------------------------------------------------------------- parameters

IDEMPOTENCY_PARAMETER: Final[dict[str, Any]] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Repeating a request with the same key (and body) answers the first "
    "result and publishes nothing new.",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"},
}
TRACEPARENT_PARAMETER: Final[dict[str, Any]] = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "description": "W3C trace context of the caller (ignored when invalid).",
    "schema": {"type": "string"},
}

# --------------------------------------------------------------------------- schemas

#: A string with at least one non-whitespace character (the text is stripped first).
NOT_BLANK: Final = "\\S"
#: What ContactIn accepts as an e-mail address (empty = none).
EMAIL_PATTERN: Final = "^(|[^@ ]+@[^ ]*\\.[^ ]*)$"
#: Eight digits, spaces allowed.
KVK_PATTERN: Final = "^\\s*([0-9] *){8}\\s*$"


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """Replace ``#/$defs/X`` references by their (inlined) definitions."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return _inline(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]), defs) | rest
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _string_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``{"type": "string"}`` part of an optional string field."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            return dict(option)
    raise LookupError("no string branch")


def _set_string(props: dict[str, Any], name: str, **extra: Any) -> None:
    field = props[name]
    if "anyOf" in field:
        field["anyOf"] = [
            _string_branch(field) | extra if o.get("type") == "string" else o
            for o in field["anyOf"]
        ]
    else:
        field.update(extra)


def _contact(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    _set_string(props, "email", pattern=EMAIL_PATTERN)


def question_schema() -> dict[str, Any]:
    """JSON Schema of the body of ``POST /api/v1/questions`` (self-contained)."""
    raw = QuestionIn.model_json_schema(mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    props = schema["properties"]
    props["initiative"] = {
        "type": "string",
        "enum": [i.id for i in load_initiatives().initiatives],
        "description": "The practice initiative (must be the API key's own).",
    }
    props["text"]["pattern"] = NOT_BLANK
    requester = props["requester"]
    for option in requester["anyOf"]:
        if option.get("type") == "null":
            continue
        variants = option.get("oneOf") or option.get("anyOf") or [option]
        for variant in variants:
            vprops = variant["properties"]
            if "bsn" in vprops:
                _set_string(vprops, "bsn", format="bsn")
            if "kvk_number" in vprops:
                vprops["kvk_number"] = {"type": "string", "pattern": KVK_PATTERN}
            contact = vprops.get("contact")
            if contact:
                for c in contact.get("anyOf", [contact]):
                    if c.get("type") == "object":
                        _contact(c)
    consent = props["consent"]
    for option in consent["anyOf"]:
        if option.get("type") != "object":
            continue
        cprops = option["properties"]
        _set_string(cprops, "purpose", pattern=NOT_BLANK)
        _set_string(cprops, "expires_at", format="future-date-time")
        # special categories (GDPR art. 9) need explicit consent
        option["if"] = {"properties": {"categories": {"contains": {"const": "health"}}}}
        option["then"] = {
            "required": ["explicit"],
            "properties": {"explicit": {"const": True}},
        }
    return schema


def question_request_body() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": question_schema()}},
        },
        "parameters": [IDEMPOTENCY_PARAMETER, TRACEPARENT_PARAMETER],
    }


def email_request_body() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "message/rfc822": {
                    "schema": {
                        "type": "string",
                        "format": "rfc822",
                        "description": "A raw RFC 5322 e-mail (MIME allowed). Its From becomes "
                        "the contact; X-Loket-Initiative, if present, must be the key's "
                        "initiative. Without Idempotency-Key the Message-ID deduplicates.",
                    }
                }
            },
        },
        "parameters": [
            IDEMPOTENCY_PARAMETER,
            TRACEPARENT_PARAMETER,
            {
                "name": "X-Loket-Initiative",
                "in": "header",
                "required": False,
                "description": "The initiative the mail is for (must be the key's own).",
                "schema": {"type": "string"},
            },
        ],
    }


def withdraw_extra() -> dict[str, Any]:
    return {"parameters": [TRACEPARENT_PARAMETER]}
