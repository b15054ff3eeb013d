"""Every event and command that travels over Kafka.

Naming: events are past facts (``QuestionReceived``, ``HandoffAccepted``); commands are
imperatives (``AcceptHandoff``). Each class carries its CloudEvents ``type`` (reverse
DNS with a version suffix) in ``EVENT_TYPE``; the CloudEvents envelope itself (id,
source, time, traceparent) lives in Kafka headers, see :mod:`loket_schemas.kafka`.

Compatibility rule ("strict producers, tolerant consumers"):

* Consumers tolerate unknown fields: every model ignores fields it does not know, so a
  producer may add optional fields within a version (additive evolution).
* Producers are strict: they build models in code (mypy with the pydantic plugin
  rejects unknown keyword arguments) or, for outside input, validate with
  :func:`validate_strict`, which rejects unknown fields.
* A breaking change is a new type suffix (``.v2``) and a new topic version.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, TypeVar, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from loket_schemas.vocabulary import (
    AgencyCode,
    Channel,
    ConsentRecord,
    DataCategory,
    LegalBasis,
    Requester,
    Urgency,
)

CASE_ID_FIELD = Field(
    min_length=1,
    max_length=64,
    pattern=r"^[A-Za-z0-9_.:-]+$",
    description="Case id (a UUID from intake); also the Kafka record key and CloudEvents subject.",
)


class Message(BaseModel):
    """Base of every message on the wire: frozen, tolerant of unknown fields."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=False)

    EVENT_TYPE: ClassVar[str] = ""
    """CloudEvents ``type``, e.g. ``nl.loket.question.received.v1``."""

    case_id: str = CASE_ID_FIELD

    @property
    def subject(self) -> str:
        """CloudEvents ``subject`` and Kafka key: the case id."""
        return self.case_id


class Event(Message):
    """A fact that happened (past tense)."""


class Command(Message):
    """A request to do something (imperative); it may be refused."""


# --------------------------------------------------------------------------- intake


class Attachment(BaseModel):
    """An attachment that came with a question: listed, never stored or forwarded."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    filename: str = Field(max_length=255, description="File name as sent.")
    content_type: str = Field(max_length=255, description="MIME type as sent.")
    size_bytes: int = Field(ge=0, description="Size in bytes.")


class QuestionReceived(Event):
    """A question was captured once at any door (channel) of any practice initiative."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.question.received.v1"

    reference: str = Field(
        pattern=r"^LK-[0-9A-Z]{4}-[0-9A-Z]{4}$",
        description="Short human-readable reference for the person, e.g. LK-7F3K-92QD.",
    )
    channel: Channel = Field(description="The door the question came through.")
    initiative_id: str = Field(
        min_length=1, max_length=64, description="Practice initiative (catalog id) that took it."
    )
    text: str = Field(
        min_length=1, max_length=5000, description="The question in the person's words."
    )
    language: str = Field(
        default="nl", max_length=8, description="BCP 47 language tag of the text."
    )
    requester: Requester | None = Field(default=None, description="Who asks, if identified.")
    subject_pseudonym: str | None = Field(
        default=None,
        max_length=80,
        description="Keyed HMAC pseudonym of the BSN or KvK number (see loket_schemas.pseudonym).",
    )
    consent: ConsentRecord | None = Field(default=None, description="The person's consent choices.")
    vulnerable: bool = Field(default=False, description="Desk flagged the person as vulnerable.")
    urgent: bool = Field(default=False, description="Desk flagged the question as urgent.")
    attachments: list[Attachment] = Field(
        default_factory=list, description="Attachments listed (not stored)."
    )
    received_at: AwareDatetime = Field(description="When intake accepted the question (UTC).")

    @property
    def urgency(self) -> Urgency:
        """The SLA urgency this question asks for."""
        return Urgency.URGENT if self.urgent else Urgency.NORMAL


class ConsentGiven(Event):
    """The person gave (or extended) consent for a case."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.consent.given.v1"

    consent: ConsentRecord = Field(description="The consent as given.")
    subject_pseudonym: str | None = Field(default=None, max_length=80, description="Pseudonym.")


class ConsentWithdrawn(Event):
    """The person withdrew consent: no future shares; recipients must erase consent-based data."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.consent.withdrawn.v1"

    consent_id: str = Field(min_length=1, max_length=64, description="The consent withdrawn.")
    withdrawn_at: AwareDatetime = Field(description="When it was withdrawn (UTC).")
    categories: list[DataCategory] = Field(
        default_factory=list,
        description="Categories withdrawn; empty means the whole consent.",
    )


# --------------------------------------------------------------------------- routing


class AgencyRole(StrEnum):
    """Role of an agency in a case."""

    LEAD = "lead"
    SUPPORTING = "supporting"


class RouteCause(StrEnum):
    """Why a routing decision was made."""

    INITIAL = "initial"
    DECLINE = "decline"
    ESCALATION = "escalation"


class AgencyAssignment(BaseModel):
    """One agency chosen for a case, with why and how sure."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    agency: AgencyCode = Field(description="The agency that must act.")
    role: AgencyRole = Field(description="Lead (names the case owner on accept) or supporting.")
    reasons: list[str] = Field(
        default_factory=list, description="Explanations, e.g. 'studieschuld -> duo'."
    )
    confidence: float = Field(ge=0.0, le=1.0, description="Routing confidence, 0..1.")


class SharedCategory(BaseModel):
    """A data category that travels to the recipient, with its lawful basis."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    category: DataCategory = Field(description="The category shared.")
    basis: LegalBasis = Field(description="The lawful basis for this share.")


class WithheldReason(StrEnum):
    """Why a category did not travel."""

    NO_CONSENT = "no_consent"
    CONSENT_EXPIRED = "consent_expired"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    PURPOSE_MISMATCH = "purpose_mismatch"
    RECIPIENT_NOT_COVERED = "recipient_not_covered"
    SPECIAL_CATEGORY_NEEDS_EXPLICIT_CONSENT = "special_category_needs_explicit_consent"
    NO_LEGAL_BASIS = "no_legal_basis"
    NOT_PROVIDED = "not_provided"


class WithheldCategory(BaseModel):
    """A data category that was withheld from the recipient, with the reason."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    category: DataCategory = Field(description="The category withheld.")
    reason: WithheldReason = Field(description="Why it was withheld.")


class SharingManifest(BaseModel):
    """What one recipient gets and does not get, and why (data minimisation, made visible)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    recipient: AgencyCode = Field(description="The receiving agency.")
    purpose: str = Field(max_length=100, description="Purpose binding of this share.")
    shared: list[SharedCategory] = Field(default_factory=list, description="Categories shared.")
    withheld: list[WithheldCategory] = Field(
        default_factory=list, description="Categories withheld, each with the reason."
    )
    retention_days: int = Field(ge=1, le=3650, description="How long the recipient may keep it.")
    consent_reference: str | None = Field(
        default=None,
        max_length=64,
        description="consent_id relied on, if any share rests on consent.",
    )


class CaseRouted(Event):
    """The router decided which agencies must act on a case (on loket.handoffs.v1).

    The handoff service opens one handoff per assignment that has no open handoff yet.
    """

    EVENT_TYPE: ClassVar[str] = "nl.loket.case.routed.v1"

    reference: str = Field(max_length=20, description="Human-readable case reference.")
    initiative_id: str = Field(
        max_length=64, description="Practice initiative that took the question."
    )
    lead: AgencyCode = Field(description="The lead agency.")
    assignments: list[AgencyAssignment] = Field(
        min_length=1, description="Every agency that must act (the lead among them)."
    )
    urgency: Urgency = Field(default=Urgency.NORMAL, description="Selects the SLA norm.")
    cause: RouteCause = Field(default=RouteCause.INITIAL, description="Why this routing happened.")
    replaces_handoff_id: str | None = Field(
        default=None,
        max_length=64,
        description="The declined/escalated handoff this routing replaces, if any.",
    )
    routed_at: AwareDatetime = Field(description="When routed (UTC).")


class CaseDelivered(Event):
    """A routed case as one agency receives it on ``loket.agency.<code>.v1``.

    Only the data its :class:`SharingManifest` lists as shared is filled in; everything
    else is ``None``. The BSN is present only with a basis for identity data; otherwise
    ``subject_pseudonym`` identifies the person.
    """

    EVENT_TYPE: ClassVar[str] = "nl.loket.case.delivered.v1"

    reference: str = Field(max_length=20, description="Human-readable case reference.")
    agency: AgencyCode = Field(description="The recipient.")
    role: AgencyRole = Field(description="Lead or supporting.")
    lead: AgencyCode = Field(description="The lead agency of the case.")
    reasons: list[str] = Field(default_factory=list, description="Why this agency was chosen.")
    confidence: float = Field(ge=0.0, le=1.0, description="Routing confidence.")
    channel: Channel = Field(description="The door the question came through.")
    initiative_id: str = Field(max_length=64, description="Practice initiative that took it.")
    urgency: Urgency = Field(default=Urgency.NORMAL, description="Urgency.")
    vulnerable: bool = Field(default=False, description="Desk flagged the person as vulnerable.")
    cause: RouteCause = Field(default=RouteCause.INITIAL, description="Why delivered.")
    text: str | None = Field(default=None, max_length=5000, description="Question text, if shared.")
    requester: Requester | None = Field(
        default=None, description="Requester data, as far as shared."
    )
    subject_pseudonym: str | None = Field(default=None, max_length=80, description="Pseudonym.")
    manifest: SharingManifest = Field(description="What was shared and withheld, and why.")
    delivered_at: AwareDatetime = Field(description="When delivered (UTC).")


class DataErasureRequested(Event):
    """A recipient must erase data it received on consent that was since withdrawn."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.data-erasure.requested.v1"

    agency: AgencyCode = Field(description="The agency that must erase.")
    consent_id: str = Field(max_length=64, description="The withdrawn consent.")
    categories: list[DataCategory] = Field(description="Categories to erase.")
    requested_at: AwareDatetime = Field(description="When requested (UTC).")


# --------------------------------------------------------------------------- handoff


class EscalationReason(StrEnum):
    """Why a case went to the regievoerder (maatwerkloket)."""

    BOUNCE_LIMIT = "bounce_limit"
    SLA = "sla"
    MANUAL = "manual"


class SlaKind(StrEnum):
    """Which SLA clock."""

    ACCEPT = "accept"
    RESOLVE = "resolve"


class ContactPerson(BaseModel):
    """The named person at the receiving office who takes the case (warm transfer)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1, max_length=200, description="Full name.")
    email: str | None = Field(default=None, max_length=254, description="E-mail.")
    phone: str | None = Field(default=None, max_length=32, description="Telephone.")


class HandoffEvent(Event):
    """Base of handoff lifecycle events on loket.handoffs.v1."""

    handoff_id: str = Field(min_length=1, max_length=64, description="The handoff.")
    agency: AgencyCode = Field(description="The agency the handoff is addressed to.")
    occurred_at: AwareDatetime = Field(description="When it happened (UTC).")


class HandoffOffered(HandoffEvent):
    """A case was offered to an agency; the sender stays responsible until it is accepted."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.offered.v1"

    role: AgencyRole = Field(description="Lead or supporting.")
    initiative_id: str = Field(max_length=64, description="Initiative that took the question.")
    reference: str = Field(max_length=20, description="Case reference.")
    from_office: str = Field(max_length=64, description="Office responsible while offered.")
    urgency: Urgency = Field(default=Urgency.NORMAL, description="Selects the SLA norm.")
    accept_due_at: AwareDatetime = Field(description="Acceptance SLA deadline (business hours).")


class HandoffAccepted(HandoffEvent):
    """A named person at the agency accepted: responsibility moves (for the lead)."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.accepted.v1"

    contact: ContactPerson = Field(description="Who at the agency takes it.")
    expected_by: AwareDatetime | None = Field(default=None, description="Expected resolution date.")
    resolve_due_at: AwareDatetime | None = Field(
        default=None, description="Resolution SLA deadline."
    )


class HandoffDeclined(HandoffEvent):
    """The agency declined, saying why and where the case should go instead."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.declined.v1"

    reason: str = Field(min_length=1, max_length=1000, description="Why declined.")
    suggested_agency: AgencyCode = Field(description="Where it should go instead.")
    declined_by: list[AgencyCode] = Field(
        default_factory=list,
        description="Every agency that declined this case so far (incl. this).",
    )
    decline_count: int = Field(ge=1, description="Declines of this case so far (incl. this).")


class HandoffResolved(HandoffEvent):
    """The agency resolved its part of the case."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.resolved.v1"

    summary: str | None = Field(
        default=None, max_length=2000, description="Outcome, plain language."
    )


class HandoffEscalated(HandoffEvent):
    """The case went to the regievoerder (maatwerkloket) instead of bouncing further."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.escalated.v1"

    reason: EscalationReason = Field(description="Bounce limit, SLA or manual.")
    escalate_to: AgencyCode = Field(
        default=AgencyCode.MAATWERKLOKET, description="Where the case goes now."
    )
    note: str | None = Field(default=None, max_length=1000, description="Free-text note.")


class HandoffSlaWarning(HandoffEvent):
    """75% of an SLA elapsed (in business hours)."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.sla-warning.v1"

    sla: SlaKind = Field(description="Which clock.")
    due_at: AwareDatetime = Field(description="The deadline.")


class HandoffSlaBreached(HandoffEvent):
    """An SLA ran out; escalation follows."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.sla-breached.v1"

    sla: SlaKind = Field(description="Which clock.")
    due_at: AwareDatetime = Field(description="The deadline that passed.")


class HandoffResponseRejected(Event):
    """A response (command) was refused; nothing changed."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.response-rejected.v1"

    handoff_id: str = Field(max_length=64, description="The handoff addressed.")
    command_id: str = Field(max_length=64, description="CloudEvents id of the refused command.")
    reason: str = Field(max_length=1000, description="Why refused.")
    occurred_at: AwareDatetime = Field(description="When (UTC).")


class HandoffCommand(Command):
    """Base of agency responses on loket.handoff-responses.v1."""

    handoff_id: str = Field(min_length=1, max_length=64, description="The handoff addressed.")
    agency: AgencyCode = Field(description="The agency responding (must be the addressee).")


class AcceptHandoff(HandoffCommand):
    """Accept a handoff; a named contact person takes responsibility."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.accept.v1"

    contact: ContactPerson = Field(description="Who takes the case.")
    expected_by: AwareDatetime | None = Field(default=None, description="Expected resolution date.")


class DeclineHandoff(HandoffCommand):
    """Decline a handoff; reason and suggested agency are required."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.decline.v1"

    reason: str = Field(min_length=1, max_length=1000, description="Why declined.")
    suggested_agency: AgencyCode = Field(description="Where it should go instead.")


class ResolveHandoff(HandoffCommand):
    """Mark an accepted handoff resolved."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.resolve.v1"

    summary: str | None = Field(default=None, max_length=2000, description="Outcome.")


class EscalateHandoff(HandoffCommand):
    """Escalate a handoff manually to the regievoerder."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.handoff.escalate.v1"

    note: str | None = Field(default=None, max_length=1000, description="Why.")


# --------------------------------------------------------------------------- audit, DLQ


class DataShareLogged(Event):
    """One data share, logged after the standard "Logboek Dataverwerkingen"."""

    EVENT_TYPE: ClassVar[str] = "nl.loket.audit.data-share.v1"

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="W3C trace id.")
    span_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="W3C span id of this processing.")
    processing_activity_id: str = Field(
        max_length=100, description="Id of the processing activity in the register."
    )
    sender: str = Field(max_length=100, description="Sending organisation/service (URN).")
    receiver: AgencyCode = Field(description="Receiving agency.")
    data_subject_pseudonym: str | None = Field(
        default=None, max_length=80, description="Pseudonymised data subject id; never a raw BSN."
    )
    categories: list[DataCategory] = Field(description="Categories shared.")
    legal_bases: list[SharedCategory] = Field(description="Per category, the lawful basis.")
    occurred_at: AwareDatetime = Field(description="When shared (UTC).")


class MessageDeadLettered(Event):
    """A message that could not be processed, with the reason and its coordinates.

    ``case_id`` is the original record key when it had one, else ``"unknown"``.
    """

    EVENT_TYPE: ClassVar[str] = "nl.loket.message.dead-lettered.v1"

    service: str = Field(max_length=100, description="The service that gave up.")
    original_topic: str = Field(max_length=249, description="Topic it came from.")
    partition: int = Field(ge=0, description="Partition it came from.")
    offset: int = Field(ge=0, description="Offset it had.")
    error_class: str = Field(max_length=200, description="Exception class name.")
    message: str = Field(max_length=2000, description="What was wrong.")
    attempts: int = Field(ge=1, description="How many times it was tried.")
    original_value_b64: str | None = Field(
        default=None, description="The original record value, base64 (may be invalid bytes)."
    )
    original_headers: dict[str, str] = Field(
        default_factory=dict, description="Original headers, decoded as UTF-8 with replacement."
    )
    dead_lettered_at: AwareDatetime = Field(description="When (UTC).")


# --------------------------------------------------------------------------- registry

MESSAGE_TYPES: tuple[type[Message], ...] = (
    QuestionReceived,
    ConsentGiven,
    ConsentWithdrawn,
    CaseRouted,
    CaseDelivered,
    DataErasureRequested,
    HandoffOffered,
    HandoffAccepted,
    HandoffDeclined,
    HandoffResolved,
    HandoffEscalated,
    HandoffSlaWarning,
    HandoffSlaBreached,
    HandoffResponseRejected,
    AcceptHandoff,
    DeclineHandoff,
    ResolveHandoff,
    EscalateHandoff,
    DataShareLogged,
    MessageDeadLettered,
)

REGISTRY: dict[str, type[Message]] = {cls.EVENT_TYPE: cls for cls in MESSAGE_TYPES}


M = TypeVar("M", bound=BaseModel)


class UnknownFieldsError(ValueError):
    """Raised by :func:`validate_strict` when input carries fields the model does not know."""


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, list, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        for sub in _model_types(arg):
            if sub not in out:
                out.append(sub)
    return out


def _unknown_keys(models: list[type[BaseModel]], data: Any, path: str) -> set[str]:
    """Unknown keys in ``data`` against the models it may be; for unions, unknown to all."""
    if not isinstance(data, dict) or not models:
        return set()
    per_model: list[set[str]] = []
    for model in models:
        known = {(info.alias or name): info.annotation for name, info in model.model_fields.items()}
        found = {f"{path}{key}" for key in data if key not in known}
        for key, value in data.items():
            subs = _model_types(known.get(key))
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                where = f"{path}{key}[{i}]." if isinstance(value, list) else f"{path}{key}."
                found |= _unknown_keys(subs, item, where)
        per_model.append(found)
    return set.intersection(*per_model)


def validate_strict(model: type[M], data: Any) -> M:
    """Validate outside input for a producer: like ``model_validate`` but unknown fields fail.

    Raises :class:`UnknownFieldsError` (a ValueError) naming every unknown field, or
    pydantic's ``ValidationError`` for invalid values. For a union field, a key known
    to any variant passes here; pydantic then validates the chosen variant.
    """
    unknown = _unknown_keys([model], data, "")
    if unknown:
        raise UnknownFieldsError(f"unknown field(s): {', '.join(sorted(unknown))}")
    return model.model_validate(data)
