"""Domain logic of the router service (pure, no I/O).

* **Sharing** (data minimisation, purpose binding): per recipient and data category,
  :func:`decide_share` says whether the category travels and on which basis, or why it is
  withheld. :func:`build_manifest` turns that into the recipient's ``SharingManifest`` and
  :func:`deliver` builds the ``CaseDelivered`` carrying only what the manifest shares.
* **Audit**: :func:`audit_record` builds one ``DataShareLogged`` per delivery.
* **Re-routing**: :func:`reroute_target` picks the next agency after a decline/escalation.
* **Consent withdrawal**: :func:`erasure_requests` lists who must erase what.

Rules (see docs/architecture.md, router section):

1. A category travels only when the agency catalog lists it for the recipient
   (``may_receive``: the recipient has a registered processing activity for it). A
   category the catalog does not list is withheld as ``no_legal_basis``, even with
   consent: consent does not make data necessary for a task the agency does not have.
2. Listed with a basis other than consent (6.1.a): shared on that basis.
3. Listed with consent as the basis: shared only when the person's consent covers
   category, recipient and purpose and is neither expired nor withdrawn
   (``ConsentRecord.covers``) and no withdrawal for it was recorded.
4. Special categories (health) travel only on explicit consent, whatever the catalog says.
5. Only categories the question actually carries are listed (shared or withheld); absent
   categories are left out of the manifest. The one exception is a re-route of a case the
   router no longer knows: then every category is listed as ``not_provided``.
6. The BSN is identity data: it travels only with a basis for ``identity``; the
   pseudonym (keyed HMAC) always identifies the subject.

Output models are built with ``model_construct`` (no second validation): every field
comes from an already validated input (the decoded ``QuestionReceived``, the routing
engine's ``AgencyAssignment``, the validated agency catalog, a parsed trace context)
whose constraints are the same as or stricter than the output's, and the few that are
not implied by the inputs are checked here (an aware timestamp, at least one assignment).
tests/unit/test_router_fast_outputs.py re-validates every output of a varied set of
questions against the schemas.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from loket_schemas.catalog import Agency
from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    CaseDelivered,
    CaseRouted,
    DataErasureRequested,
    DataShareLogged,
    HandoffDeclined,
    HandoffEscalated,
    QuestionReceived,
    RouteCause,
    SharedCategory,
    SharingManifest,
    WithheldCategory,
    WithheldReason,
)
from loket_schemas.tracing import TraceContext
from loket_schemas.vocabulary import (
    SPECIAL_CATEGORIES,
    AgencyCode,
    BusinessRequester,
    Channel,
    ConsentRecord,
    ContactDetails,
    DataCategory,
    GdprBasis,
    LegalBasis,
    PersonRequester,
    Urgency,
)

#: Purpose binding of every share the router makes.
PURPOSE = "case_handling"
#: Basis recorded for a consent-based share; special categories cite art. 9(2)(a).
CONSENT_BASIS = LegalBasis(article=GdprBasis.CONSENT)
EXPLICIT_CONSENT_BASIS = LegalBasis(article=GdprBasis.CONSENT, law_reference="AVG art. 9(2)(a)")
#: Placeholders for a re-route of a case the router does not know (Redis lost it).
UNKNOWN = "unknown"

_ID_NAMESPACE = uuid.UUID("5b0c1e3a-6f1d-4f43-9a51-6c6f6b657472")


_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes
#: hex digit -> the same digit with the RFC 4122 variant bits (10xx) set
_VARIANT = {c: "%x" % ((int(c, 16) & 0x3) | 0x8) for c in "0123456789abcdef"}


def event_id(*parts: str) -> str:
    """A deterministic CloudEvents id, so a replayed output carries the same ``ce_id``.

    ``uuid.uuid5(_ID_NAMESPACE, "\\x1f".join(parts))`` computed without building a
    ``UUID`` object (same string, a third of the time): the first 16 bytes of the SHA-1 of
    namespace and name in hex, version digit 5, variant bits in the 17th digit.
    """
    h = hashlib.sha1(
        _ID_NAMESPACE_BYTES + "\x1f".join(parts).encode(), usedforsecurity=False
    ).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_M = TypeVar("_M", bound=BaseModel)
_set = object.__setattr__


def construct(cls: type[_M], **values: Any) -> _M:
    """``cls.model_construct(**values)`` for values that are all valid already, faster.

    Every field must be given (no defaults filled in; checked). Sets the same instance
    attributes ``model_construct`` sets for a model without extra or private fields.
    """
    if len(values) != len(cls.__pydantic_fields__):
        missing = set(cls.__pydantic_fields__) - set(values)
        raise TypeError(f"{cls.__name__}: every field must be given, missing {missing}")
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(values))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def require_aware(at: datetime) -> datetime:
    """Output timestamps must carry a time zone (``AwareDatetime`` in the schemas)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("timestamps of router outputs must be timezone-aware")
    return at


# --------------------------------------------------------------------------- consent


@dataclass(frozen=True)
class Withdrawal:
    """A recorded withdrawal of (part of) one consent; empty ``categories`` means all."""

    consent_id: str
    categories: frozenset[DataCategory] = frozenset()

    def covers(self, category: DataCategory) -> bool:
        return not self.categories or category in self.categories


Withdrawals = Mapping[str, Withdrawal]
"""Recorded withdrawals of one case, by consent id."""


def merge_withdrawals(items: Iterable[Withdrawal]) -> dict[str, Withdrawal]:
    """Fold withdrawals per consent id: an all-categories withdrawal absorbs partial ones."""
    out: dict[str, Withdrawal] = {}
    for item in items:
        prev = out.get(item.consent_id)
        if prev is None:
            out[item.consent_id] = item
        elif not prev.categories or not item.categories:
            out[item.consent_id] = Withdrawal(item.consent_id)
        else:
            out[item.consent_id] = Withdrawal(item.consent_id, prev.categories | item.categories)
    return out


def consent_gap(
    consent: ConsentRecord | None,
    category: DataCategory,
    recipient: AgencyCode,
    at: datetime,
    withdrawals: Withdrawals | None = None,
    purpose: str = PURPOSE,
) -> WithheldReason | None:
    """None when the consent covers this share; else the reason it does not."""
    if consent is None:
        return WithheldReason.NO_CONSENT
    recorded = (withdrawals or {}).get(consent.consent_id)
    if (consent.withdrawn_at is not None and consent.withdrawn_at <= at) or (
        recorded is not None and recorded.covers(category)
    ):
        return WithheldReason.CONSENT_WITHDRAWN
    if consent.expires_at is not None and consent.expires_at <= at:
        return WithheldReason.CONSENT_EXPIRED
    if at < consent.given_at:
        return WithheldReason.NO_CONSENT
    if purpose != consent.purpose:
        return WithheldReason.PURPOSE_MISMATCH
    if category not in consent.categories:
        return WithheldReason.NO_CONSENT
    if consent.recipients and recipient not in consent.recipients:
        return WithheldReason.RECIPIENT_NOT_COVERED
    if category in SPECIAL_CATEGORIES and not consent.explicit:
        return WithheldReason.SPECIAL_CATEGORY_NEEDS_EXPLICIT_CONSENT
    if not consent.covers(category, recipient, purpose, at):  # the model's rule is authoritative
        return WithheldReason.NO_CONSENT
    return None


def decide_share(
    category: DataCategory,
    agency: Agency,
    consent: ConsentRecord | None,
    at: datetime,
    withdrawals: Withdrawals | None = None,
) -> SharedCategory | WithheldCategory:
    """Whether ``category`` travels to ``agency``, on which basis, or why not (rules 1-4)."""
    permission = _permissions(agency).get(category)
    if permission is None:
        return withheld_category(category, WithheldReason.NO_LEGAL_BASIS)
    basis, needs_consent = permission
    special = category in SPECIAL_CATEGORIES
    if not special and not needs_consent:
        return shared_category(category, basis)
    reason = consent_gap(consent, category, agency.code, at, withdrawals)
    if reason is not None:
        return withheld_category(category, reason)
    return shared_category(category, EXPLICIT_CONSENT_BASIS if special else CONSENT_BASIS)


#: id(agency) -> (agency, {category: (basis, needs consent)}): an agency's permissions as
#: a table (the agency is kept, so its id cannot be reused while the entry exists)
_PERMISSIONS: dict[int, tuple[Agency, dict[DataCategory, tuple[LegalBasis, bool]]]] = {}
#: (category, id(basis)) -> (basis, the shared SharedCategory); the basis is kept likewise
_SHARED: dict[tuple[DataCategory, int], tuple[LegalBasis, SharedCategory]] = {}
_WITHHELD: dict[tuple[DataCategory, WithheldReason], WithheldCategory] = {}
_CACHE_MAX = 4096


def _permissions(agency: Agency) -> dict[DataCategory, tuple[LegalBasis, bool]]:
    """``agency.permission(category)`` as a table: the first permission per category, its
    basis and whether it needs consent (agencies are immutable; computed once per agency)."""
    found = _PERMISSIONS.get(id(agency))
    if found is not None and found[0] is agency:
        return found[1]
    table: dict[DataCategory, tuple[LegalBasis, bool]] = {}
    for permission in agency.may_receive:
        table.setdefault(permission.category, (permission.basis, permission.needs_consent))
    if len(_PERMISSIONS) >= _CACHE_MAX:
        _PERMISSIONS.clear()
    _PERMISSIONS[id(agency)] = (agency, table)
    return table


#: id(agency) -> (agency, {category: its decide_share result when consent plays no role})
_FIXED: dict[int, tuple[Agency, dict[DataCategory, SharedCategory | WithheldCategory]]] = {}


def _fixed_decisions(agency: Agency) -> dict[DataCategory, SharedCategory | WithheldCategory]:
    """Per category, what ``decide_share`` decides for ``agency`` whatever the consent:
    withheld without a permission (rule 1), shared on a basis other than consent for a
    category that is not special (rule 2); the other categories are not in the table."""
    found = _FIXED.get(id(agency))
    if found is not None and found[0] is agency:
        return found[1]
    permissions = _permissions(agency)
    table: dict[DataCategory, SharedCategory | WithheldCategory] = {}
    for category in DataCategory:
        permission = permissions.get(category)
        if permission is None:
            table[category] = withheld_category(category, WithheldReason.NO_LEGAL_BASIS)
        elif category not in SPECIAL_CATEGORIES and not permission[1]:
            table[category] = shared_category(category, permission[0])
    if len(_FIXED) >= _CACHE_MAX:
        _FIXED.clear()
    _FIXED[id(agency)] = (agency, table)
    return table


def shared_category(category: DataCategory, basis: LegalBasis) -> SharedCategory:
    """One (immutable, shared) ``SharedCategory`` per category and basis object."""
    key = (category, id(basis))
    found = _SHARED.get(key)
    if found is None or found[0] is not basis:
        if len(_SHARED) >= _CACHE_MAX:
            _SHARED.clear()
        found = _SHARED[key] = (basis, SharedCategory(category=category, basis=basis))
    return found[1]


def withheld_category(category: DataCategory, reason: WithheldReason) -> WithheldCategory:
    """One (immutable, shared) ``WithheldCategory`` per category and reason."""
    key = (category, reason)
    found = _WITHHELD.get(key)
    if found is None:
        found = _WITHHELD[key] = WithheldCategory(category=category, reason=reason)
    return found


def question_categories(question: QuestionReceived) -> list[DataCategory]:
    """The data categories a question carries (rule 5), in a stable order.

    text -> question_text; person BSN -> identity; contact details -> contact;
    business requester (KvK number, trade name) -> business.
    """
    found = [DataCategory.QUESTION_TEXT]
    requester = question.requester
    if isinstance(requester, PersonRequester) and requester.bsn:
        found.append(DataCategory.IDENTITY)
    if isinstance(requester, BusinessRequester):
        found.append(DataCategory.BUSINESS)
    if requester is not None and _has_contact(requester.contact):
        found.append(DataCategory.CONTACT)
    return found


def _has_contact(contact: ContactDetails | None) -> bool:
    return contact is not None and any(
        v for v in (contact.name, contact.email, contact.phone, contact.postal_address)
    )


def build_manifest(
    categories: Iterable[DataCategory],
    agency: Agency,
    consent: ConsentRecord | None,
    at: datetime,
    withdrawals: Withdrawals | None = None,
) -> SharingManifest:
    """The recipient's manifest for the categories the question carries."""
    shared: list[SharedCategory] = []
    withheld: list[WithheldCategory] = []
    on_consent = False
    fixed = _fixed_decisions(agency)
    for category in categories:
        found = fixed.get(category)
        if found is not None:  # no consent involved (rules 1, 2): same as decide_share
            if type(found) is SharedCategory:
                shared.append(found)
            else:
                withheld.append(found)  # type: ignore[arg-type]
            continue
        decision = decide_share(category, agency, consent, at, withdrawals)
        if isinstance(decision, SharedCategory):
            shared.append(decision)
            on_consent = on_consent or decision.basis.article is GdprBasis.CONSENT
        else:
            withheld.append(decision)
    # every part is validated (catalog, consent, cached categories): no second validation
    return construct(
        SharingManifest,
        recipient=agency.code,
        purpose=PURPOSE,
        shared=shared,
        withheld=withheld,
        retention_days=agency.retention_days,
        consent_reference=consent.consent_id if on_consent and consent is not None else None,
    )


def not_provided_manifest(agency: Agency) -> SharingManifest:
    """Manifest for a case whose data the router no longer has: everything not provided."""
    return SharingManifest(
        recipient=agency.code,
        purpose=PURPOSE,
        withheld=[
            WithheldCategory(category=c, reason=WithheldReason.NOT_PROVIDED) for c in DataCategory
        ],
        retention_days=agency.retention_days,
    )


def consent_shares(manifest: SharingManifest) -> frozenset[DataCategory]:
    """The categories of a manifest that travel on consent (to erase on withdrawal)."""
    return frozenset(s.category for s in manifest.shared if s.basis.article is GdprBasis.CONSENT)


# --------------------------------------------------------------------------- delivery


def shared_requester(
    question: QuestionReceived, shared: Collection[DataCategory]
) -> PersonRequester | BusinessRequester | None:
    """The requester as far as the manifest shares it (None when nothing of it travels).

    A business requester whose ``business`` data is withheld but whose ``contact`` is
    shared travels as a contact person (``kind=person`` without BSN): the schema's
    ``BusinessRequester`` needs the KvK number.
    """
    requester = question.requester
    if requester is None:
        return None
    # parts of the validated requester: model_construct, no second validation (elfproef)
    contact = requester.contact if DataCategory.CONTACT in shared else None
    if isinstance(requester, BusinessRequester):
        if DataCategory.BUSINESS in shared:
            if contact is requester.contact:
                return requester
            return construct(
                BusinessRequester,
                kind="business",
                kvk_number=requester.kvk_number,
                trade_name=requester.trade_name,
                contact=contact,
            )
        return (
            construct(PersonRequester, kind="person", bsn=None, contact=contact)
            if contact is not None
            else None
        )
    bsn = requester.bsn if DataCategory.IDENTITY in shared else None
    if bsn is None and contact is None:
        return None
    if bsn == requester.bsn and contact is requester.contact:
        return requester
    return construct(PersonRequester, kind="person", bsn=bsn, contact=contact)


def deliver(
    question: QuestionReceived,
    assignment: AgencyAssignment,
    lead: AgencyCode,
    manifest: SharingManifest,
    *,
    pseudonym: str | None,
    at: datetime,
    cause: RouteCause = RouteCause.INITIAL,
) -> CaseDelivered:
    """The ``CaseDelivered`` for one recipient, carrying only what its manifest shares."""
    shared = {s.category for s in manifest.shared}
    return construct(
        CaseDelivered,
        case_id=question.case_id,
        reference=question.reference,
        agency=assignment.agency,
        role=assignment.role,
        lead=lead,
        reasons=list(assignment.reasons),
        confidence=assignment.confidence,
        channel=question.channel,
        initiative_id=question.initiative_id,
        urgency=question.urgency,
        vulnerable=question.vulnerable,
        cause=cause,
        text=question.text if DataCategory.QUESTION_TEXT in shared else None,
        requester=shared_requester(question, shared),
        subject_pseudonym=pseudonym,
        manifest=manifest,
        delivered_at=require_aware(at),
    )


def deliver_unknown(
    case_id: str,
    assignment: AgencyAssignment,
    lead: AgencyCode,
    manifest: SharingManifest,
    *,
    at: datetime,
    cause: RouteCause,
) -> CaseDelivered:
    """A delivery for a case the router does not know: no data, placeholders only."""
    return CaseDelivered(
        case_id=case_id,
        reference=UNKNOWN,
        agency=assignment.agency,
        role=assignment.role,
        lead=lead,
        reasons=list(assignment.reasons),
        confidence=assignment.confidence,
        channel=Channel.WEB,  # required by the schema; the real channel is unknown
        initiative_id=UNKNOWN,
        urgency=Urgency.NORMAL,
        cause=cause,
        manifest=manifest,
        delivered_at=at,
    )


def audit_record(
    delivery: CaseDelivered,
    agency: Agency,
    *,
    trace: TraceContext,
    sender: str,
    at: datetime,
) -> DataShareLogged:
    """One ``DataShareLogged`` for one delivery (pseudonymised subject, never a BSN)."""
    shared = list(delivery.manifest.shared)
    if len(sender) > 100:
        raise ValueError("sender longer than 100 characters")
    return construct(
        DataShareLogged,
        case_id=delivery.case_id,
        trace_id=trace.trace_id,
        span_id=trace.span_id,
        processing_activity_id=agency.processing_activity_id,
        sender=sender,
        receiver=delivery.agency,
        data_subject_pseudonym=delivery.subject_pseudonym,
        categories=[s.category for s in shared],
        legal_bases=shared,
        occurred_at=require_aware(at),
    )


def case_routed(
    question: QuestionReceived,
    lead: AgencyCode,
    assignments: Iterable[AgencyAssignment],
    *,
    at: datetime,
) -> CaseRouted:
    chosen = list(assignments)
    if not chosen:
        raise ValueError("a routing needs at least one assignment")
    return construct(
        CaseRouted,
        case_id=question.case_id,
        reference=question.reference,
        initiative_id=question.initiative_id,
        lead=lead,
        assignments=chosen,
        urgency=question.urgency,
        cause=RouteCause.INITIAL,
        replaces_handoff_id=None,
        routed_at=require_aware(at),
    )


# --------------------------------------------------------------------------- re-routing


@dataclass(frozen=True)
class Reroute:
    """Where a declined/escalated handoff goes now, and with which role."""

    target: AgencyCode
    role: AgencyRole
    cause: RouteCause
    replaces_handoff_id: str
    reason: str
    redirected: bool = False


def reroute_target(
    event: HandoffDeclined | HandoffEscalated,
    handling: Collection[AgencyCode],
    roles: Mapping[AgencyCode, AgencyRole] | None = None,
) -> Reroute | None:
    """The next agency for a declined or escalated handoff; None when the router waits.

    * ``HandoffDeclined`` with ``decline_count >= 2``: None (handoff escalates; the router
      acts on the ``HandoffEscalated`` that follows).
    * ``HandoffDeclined``: ``suggested_agency``, unless it declined this case before (in
      ``declined_by``), is the declining agency or already handles the case: then
      ``maatwerkloket``.
    * ``HandoffEscalated``: ``escalate_to``.

    The new agency takes the replaced handoff's role (``roles``; lead when unknown, so
    that an unknown case still gets an owner).
    """
    role = (roles or {}).get(event.agency, AgencyRole.LEAD)
    if isinstance(event, HandoffEscalated):
        return Reroute(
            target=event.escalate_to,
            role=role,
            cause=RouteCause.ESCALATION,
            replaces_handoff_id=event.handoff_id,
            reason=f"escalated ({event.reason.value}) by {event.agency.value}",
        )
    if event.decline_count >= 2:
        return None
    suggested = event.suggested_agency
    blocked = (
        suggested in event.declined_by
        or suggested == event.agency
        or (suggested in handling and suggested != AgencyCode.MAATWERKLOKET)
    )
    target = AgencyCode.MAATWERKLOKET if blocked else suggested
    why = f"declined by {event.agency.value}, suggested {suggested.value}"
    if blocked:
        why += " (already declined or handling: maatwerkloket)"
    return Reroute(
        target=target,
        role=role,
        cause=RouteCause.DECLINE,
        replaces_handoff_id=event.handoff_id,
        reason=why,
        redirected=blocked,
    )


# --------------------------------------------------------------------------- erasure


@dataclass(frozen=True)
class ConsentShare:
    """Categories one agency received on one consent."""

    agency: AgencyCode
    consent_id: str
    categories: frozenset[DataCategory] = field(default_factory=frozenset)


def erasure_requests(
    case_id: str,
    withdrawal: Withdrawal,
    shares: Iterable[ConsentShare],
    *,
    at: datetime,
) -> list[DataErasureRequested]:
    """One ``DataErasureRequested`` per agency that received data on the withdrawn consent.

    Only consent-based categories are erased; data shared on another legal basis stays.
    """
    per_agency: dict[AgencyCode, set[DataCategory]] = {}
    for share in shares:
        if share.consent_id != withdrawal.consent_id:
            continue
        hit = {c for c in share.categories if withdrawal.covers(c)}
        if hit:
            per_agency.setdefault(share.agency, set()).update(hit)
    return [
        DataErasureRequested(
            case_id=case_id,
            agency=agency,
            consent_id=withdrawal.consent_id,
            categories=sorted(cats, key=lambda c: list(DataCategory).index(c)),
            requested_at=at,
        )
        for agency, cats in sorted(per_agency.items(), key=lambda kv: kv[0].value)
    ]
