"""Domain logic of the intake service (pure, no I/O).

- references (``LK-XXXX-XXXX``) and status tokens (protocol item 6);
- the API input model (:class:`QuestionIn`) and its field-level validation;
- turning accepted input into a :class:`~loket_schemas.events.QuestionReceived`;
- API keys (sha256 hashes; dev keys ``dev-<initiative-id>``);
- canonical body hashes for idempotency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from loket_schemas.catalog import load_initiatives
from loket_schemas.events import Attachment, QuestionReceived
from loket_schemas.pseudonym import pseudonymise
from loket_schemas.vocabulary import (
    SPECIAL_CATEGORIES,
    AgencyCode,
    BusinessRequester,
    Channel,
    ConsentRecord,
    ContactDetails,
    DataCategory,
    PersonRequester,
    bsn_is_valid,
)

# --------------------------------------------------------------------------- references

#: Crockford base32: digits and capitals without I, L, O and U (no 1/I/L or 0/O confusion).
REFERENCE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REFERENCE_PREFIX = "LK-"
_CROCKFORD_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_reference() -> str:
    """A random reference ``LK-XXXX-XXXX`` (40 bits; uniqueness is enforced in Redis).

    One draw of 40 random bits, 5 bits per character (32 characters: uniform, no bias).
    """
    bits = int.from_bytes(secrets.token_bytes(5), "big")
    chars = "".join(REFERENCE_ALPHABET[(bits >> shift) & 31] for shift in range(35, -1, -5))
    return f"{REFERENCE_PREFIX}{chars[:4]}-{chars[4:]}"


def normalise_reference(value: str) -> str | None:
    """Read a reference as a person might type it (lower case, spaces, O for 0, I/L for 1).

    Returns the canonical ``LK-XXXX-XXXX`` or None when it cannot be a reference.
    """
    cleaned = "".join(ch for ch in value.upper() if ch.isalnum())
    if cleaned.startswith("LK"):
        cleaned = cleaned[2:]
    cleaned = cleaned.translate(_CROCKFORD_ALIASES)
    if len(cleaned) != 8 or any(ch not in REFERENCE_ALPHABET for ch in cleaned):
        return None
    return f"{REFERENCE_PREFIX}{cleaned[:4]}-{cleaned[4:]}"


def status_token(reference: str, key: str) -> str:
    """The public status-page token of a reference (protocol item 6): 24 hex chars."""
    return pseudonymise(reference, key, domain="status-token")[4:28]


def status_token_matches(reference: str, token: str, key: str) -> bool:
    """Constant-time check of a status token."""
    return hmac.compare_digest(status_token(reference, key), token)


def status_url(public_base: str, reference: str, token: str) -> str:
    return f"{public_base.rstrip('/')}/status/{reference}?token={token}"


# --------------------------------------------------------------------------- API keys


def hash_api_key(key: str) -> str:
    """How API keys are stored: lowercase hex sha256 of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def dev_api_key(initiative_id: str) -> str:
    """The development key of an initiative (``make up`` only, never production)."""
    return f"dev-{initiative_id}"


def dev_key_hashes() -> dict[str, str]:
    """sha256(dev key) -> initiative id, for every initiative in the catalog."""
    return {hash_api_key(dev_api_key(i.id)): i.id for i in load_initiatives().initiatives}


def known_initiative(initiative_id: str) -> bool:
    return load_initiatives().get(initiative_id) is not None


# --------------------------------------------------------------------------- input model

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=5000)]


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=32)
    postal_address: str | None = Field(default=None, max_length=500)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        local, _, domain = value.partition("@")
        if not local or "." not in domain or " " in value:
            raise ValueError("email: not a valid e-mail address")
        return value

    def to_contact(self) -> ContactDetails | None:
        data = {k: v for k, v in self.model_dump().items() if v}
        return ContactDetails(**data) if data else None


class PersonIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: Literal["person"] = "person"
    bsn: str | None = Field(default=None, description="BSN; must pass the eleven-test.")
    contact: ContactIn | None = None

    @field_validator("bsn")
    @classmethod
    def _bsn(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.replace(" ", "").replace(".", "")
        if not value.isascii() or not value.isdigit() or len(value) != 9:
            raise ValueError("bsn_format: a BSN has exactly 9 digits")
        if not bsn_is_valid(value):
            raise ValueError("bsn_elfproef: this BSN does not pass the eleven-test (elfproef)")
        return value


class BusinessIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: Literal["business"]
    kvk_number: str
    trade_name: str | None = Field(default=None, max_length=200)
    contact: ContactIn | None = None

    @field_validator("kvk_number")
    @classmethod
    def _kvk(cls, value: str) -> str:
        value = value.replace(" ", "")
        if not value.isascii() or not value.isdigit() or len(value) != 8:
            raise ValueError("kvk_format: a KvK number has exactly 8 digits")
        return value


def _requester_tag(value: Any) -> str:
    """A requester without ``kind`` is a person (as in loket_schemas)."""
    if isinstance(value, dict):
        return str(value.get("kind", "person"))
    return str(getattr(value, "kind", "person"))


RequesterIn = Annotated[
    Annotated[PersonIn, Tag("person")] | Annotated[BusinessIn, Tag("business")],
    Discriminator(_requester_tag),
]


class ConsentIn(BaseModel):
    """The person's consent choices as the desk records them."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    categories: list[DataCategory] = Field(min_length=1)
    recipients: list[AgencyCode] = Field(default_factory=list)
    purpose: str = Field(default="case_handling", min_length=1, max_length=100)
    expires_at: AwareDatetime | None = None
    # strict: JSON true/false only (0, 1, "yes" are refused, not guessed)
    explicit: StrictBool = False

    @field_validator("expires_at", mode="before")
    @classmethod
    def _rfc3339_only(cls, value: Any) -> Any:
        # pydantic would read a number as a Unix time; the API documents an RFC 3339 string
        if isinstance(value, int | float):
            raise ValueError("invalid_datetime: expires_at must be an RFC 3339 date-time")
        return value

    @model_validator(mode="after")
    def _explicit_for_special(self) -> ConsentIn:
        special = [c.value for c in self.categories if c in SPECIAL_CATEGORIES]
        if special and not self.explicit:
            raise ValueError(
                "consent_explicit: sharing "
                + ", ".join(special)
                + " needs explicit consent (explicit: true)"
            )
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            raise ValueError("consent_expired: expires_at must be in the future")
        return self


class QuestionIn(BaseModel):
    """Body of ``POST /api/v1/questions`` (unknown fields are rejected)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Channel
    initiative: str = Field(min_length=1, max_length=64)
    text: Text
    language: str = Field(default="nl", min_length=2, max_length=8, pattern=r"^[A-Za-z-]+$")
    requester: RequesterIn | None = None
    consent: ConsentIn | None = None
    vulnerable: StrictBool = False
    urgent: StrictBool = False

    @field_validator("initiative")
    @classmethod
    def _initiative(cls, value: str) -> str:
        if not known_initiative(value):
            raise ValueError("initiative_unknown: no practice initiative with this id")
        return value


@dataclass(frozen=True)
class FieldError:
    """One field-level problem, for API clients and for the desk page."""

    field: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


_PYDANTIC_CODES = {
    "missing": "required",
    "string_too_short": "too_short",
    "string_too_long": "too_long",
    "too_short": "too_short",
    "extra_forbidden": "unknown_field",
    "enum": "invalid_choice",
    "literal_error": "invalid_choice",
    "bool_type": "invalid_type",
    "bool_parsing": "invalid_type",
    "string_type": "invalid_type",
    "list_type": "invalid_type",
    "model_type": "invalid_type",
    "dict_type": "invalid_type",
    "datetime_parsing": "invalid_datetime",
    "datetime_from_date_parsing": "invalid_datetime",
    "timezone_aware": "invalid_datetime",
    "string_pattern_mismatch": "invalid_format",
    "union_tag_invalid": "invalid_choice",
}

#: Errors raised by model validators belong to one field of that model.
_CODE_FIELDS = {"consent_explicit": "explicit", "consent_expired": "expires_at"}


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic errors as :class:`FieldError` with dotted field paths and stable codes.

    Our own validators raise ``ValueError("<code>: <message>")``; that code is used as is.
    """
    out: list[FieldError] = []
    for err in exc.errors(include_url=False, include_input=False):
        raw = [str(p) for p in err["loc"]]
        # drop the union tag after "requester" ("requester.person.bsn" -> "requester.bsn")
        loc = [
            p
            for i, p in enumerate(raw)
            if not (i > 0 and raw[i - 1] == "requester" and p in {"person", "business"})
        ]
        field = ".".join(loc)
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        message = str(err["msg"])
        code = _PYDANTIC_CODES.get(str(err["type"]), str(err["type"]))
        if err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
            head, sep, rest = message.partition(": ")
            if sep and head.replace("_", "").isalpha() and head.islower():
                code, message = head, rest
                if code in _CODE_FIELDS:
                    field = f"{field}.{_CODE_FIELDS[code]}" if field else _CODE_FIELDS[code]
        elif err["type"] == "string_too_short" and field.endswith("text"):
            code, message = "empty", "text must not be empty"
        out.append(FieldError(field=field or "body", code=code, message=message))
    return out


def parse_question(payload: Any) -> QuestionIn | list[FieldError]:
    """Validate a decoded JSON body; field errors instead of an exception."""
    if not isinstance(payload, dict):
        return [FieldError("body", "invalid_type", "the body must be a JSON object")]
    try:
        return QuestionIn.model_validate(payload)
    except ValidationError as exc:
        return field_errors(exc)


# --------------------------------------------------------------------------- the event


def body_hash(payload: Any) -> str:
    """A stable hash of a request body (key order and whitespace do not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_case_id() -> str:
    return str(uuid.uuid4())


def consent_id_for(case_id: str) -> str:
    """The consent id of a case's consent (deterministic, so retries agree)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"loket:consent:{case_id}"))


def subject_identifier(question: QuestionIn) -> str | None:
    req = question.requester
    if isinstance(req, PersonIn):
        return req.bsn
    if isinstance(req, BusinessIn):
        return req.kvk_number
    return None


@dataclass(frozen=True)
class Accepted:
    """What intake tells the caller once the event is on Kafka."""

    case_id: str
    reference: str
    status_url: str

    def body(self) -> dict[str, str]:
        return {
            "case_id": self.case_id,
            "reference": self.reference,
            "status_url": self.status_url,
        }


def build_event(
    question: QuestionIn,
    *,
    case_id: str,
    reference: str,
    received_at: datetime,
    pseudonym_key: str,
    attachments: list[Attachment] | None = None,
) -> QuestionReceived:
    """The ``QuestionReceived`` event for an accepted question."""
    requester: PersonRequester | BusinessRequester | None = None
    req = question.requester
    if isinstance(req, PersonIn):
        contact = req.contact.to_contact() if req.contact else None
        if req.bsn or contact:
            requester = PersonRequester(bsn=req.bsn, contact=contact)
    elif isinstance(req, BusinessIn):
        requester = BusinessRequester(
            kvk_number=req.kvk_number,
            trade_name=req.trade_name,
            contact=req.contact.to_contact() if req.contact else None,
        )
    identifier = subject_identifier(question)
    consent = None
    if question.consent is not None:
        c = question.consent
        consent = ConsentRecord(
            consent_id=consent_id_for(case_id),
            categories=list(dict.fromkeys(c.categories)),
            recipients=list(dict.fromkeys(c.recipients)),
            purpose=c.purpose,
            given_at=received_at,
            expires_at=c.expires_at,
            explicit=c.explicit,
        )
    return QuestionReceived(
        case_id=case_id,
        reference=reference,
        channel=question.channel,
        initiative_id=question.initiative,
        text=question.text,
        language=question.language,
        requester=requester,
        subject_pseudonym=pseudonymise(identifier, pseudonym_key) if identifier else None,
        consent=consent,
        vulnerable=question.vulnerable,
        urgent=question.urgent,
        attachments=attachments or [],
        received_at=received_at,
    )
