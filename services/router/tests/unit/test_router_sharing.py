# ruff: noqa: E501  (the decision table reads best one case per line)
"""Consent-aware sharing: the decision table, manifests and deliveries (pure domain)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from router_factories import BSN, NOW, business_question, consent, question

from loket_router import domain
from loket_schemas.catalog import load_agencies
from loket_schemas.events import (
    AgencyAssignment,
    AgencyRole,
    SharedCategory,
    WithheldCategory,
    WithheldReason,
)
from loket_schemas.tracing import new_trace
from loket_schemas.vocabulary import AgencyCode, DataCategory, GdprBasis, PersonRequester

CATALOG = load_agencies()
A = AgencyCode
C = DataCategory
R = WithheldReason

ALL_CATS = list(C)


@pytest.mark.parametrize(
    ("agency", "category", "consent_kw", "withdrawn", "expected"),
    [
        # catalog basis other than consent: shared on that basis, no consent needed
        (A.UWV, C.QUESTION_TEXT, None, None, GdprBasis.PUBLIC_TASK),
        (A.BELASTINGDIENST, C.IDENTITY, None, None, GdprBasis.PUBLIC_TASK),
        (A.GEMEENTE, C.CONTACT, None, None, GdprBasis.PUBLIC_TASK),
        # catalog basis is consent: only with a covering consent
        (A.BELASTINGDIENST, C.QUESTION_TEXT, None, None, R.NO_CONSENT),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {}, None, GdprBasis.CONSENT),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {"expires_at": NOW}, None, R.CONSENT_EXPIRED),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {"withdrawn_at": NOW}, None, R.CONSENT_WITHDRAWN),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {}, frozenset(), R.CONSENT_WITHDRAWN),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {}, frozenset({C.QUESTION_TEXT}), R.CONSENT_WITHDRAWN),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {}, frozenset({C.CONTACT}), GdprBasis.CONSENT),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {"purpose": "research"}, None, R.PURPOSE_MISMATCH),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {"recipients": [A.UWV]}, None, R.RECIPIENT_NOT_COVERED),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {"recipients": [A.BELASTINGDIENST]}, None, GdprBasis.CONSENT),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {"categories": [C.CONTACT]}, None, R.NO_CONSENT),
        (A.BELASTINGDIENST, C.QUESTION_TEXT, {"given_at": NOW + timedelta(hours=1)}, None, R.NO_CONSENT),
        # identity on consent only (rijkswaterstaat): BSN only with consent
        (A.RIJKSWATERSTAAT, C.IDENTITY, None, None, R.NO_CONSENT),
        (A.RIJKSWATERSTAAT, C.IDENTITY, {}, None, GdprBasis.CONSENT),
        # health: special category, explicit consent only
        (A.BELASTINGDIENST, C.HEALTH, {"categories": [C.HEALTH]}, None, R.SPECIAL_CATEGORY_NEEDS_EXPLICIT_CONSENT),
        (A.BELASTINGDIENST, C.HEALTH, {"categories": [C.HEALTH], "explicit": True}, None, GdprBasis.CONSENT),
        (A.BELASTINGDIENST, C.HEALTH, None, None, R.NO_CONSENT),
        # not in the agency's catalog entry: withheld even with consent
        (A.TOESLAGEN, C.BUSINESS, {"categories": [C.BUSINESS]}, None, R.NO_LEGAL_BASIS),
        (A.UWV, C.BUSINESS, None, None, R.NO_LEGAL_BASIS),
    ],
)  # fmt: skip
def test_decide_share_table(
    agency: AgencyCode,
    category: DataCategory,
    consent_kw: dict[str, Any] | None,
    withdrawn: frozenset[DataCategory] | None,
    expected: GdprBasis | WithheldReason,
) -> None:
    record = consent(**consent_kw) if consent_kw is not None else None
    withdrawals = {"c-1": domain.Withdrawal("c-1", withdrawn)} if withdrawn is not None else None
    decision = domain.decide_share(category, CATALOG.get(agency), record, NOW, withdrawals)
    if isinstance(expected, GdprBasis):
        assert isinstance(decision, SharedCategory)
        assert decision.basis.article == expected
    else:
        assert isinstance(decision, WithheldCategory)
        assert decision.reason == expected


def test_health_shares_cite_article_9() -> None:
    record = consent(categories=[C.HEALTH], explicit=True)
    decision = domain.decide_share(C.HEALTH, CATALOG.get(A.UWV), record, NOW)
    assert isinstance(decision, SharedCategory)
    assert decision.basis.law_reference == "AVG art. 9(2)(a)"


def test_question_categories_map_question_data() -> None:
    assert domain.question_categories(question()) == [C.QUESTION_TEXT, C.IDENTITY, C.CONTACT]
    assert domain.question_categories(question(requester=None)) == [C.QUESTION_TEXT]
    assert domain.question_categories(question(requester=PersonRequester())) == [C.QUESTION_TEXT]
    assert domain.question_categories(business_question()) == [
        C.QUESTION_TEXT,
        C.BUSINESS,
        C.CONTACT,
    ]


def _delivery(q: Any, agency: AgencyCode) -> Any:
    manifest = domain.build_manifest(
        domain.question_categories(q), CATALOG.get(agency), q.consent, NOW
    )
    a = AgencyAssignment(agency=agency, role=AgencyRole.LEAD, reasons=["x"], confidence=0.9)
    return domain.deliver(q, a, agency, manifest, pseudonym="ps1:" + "a" * 48, at=NOW)


def test_manifest_lists_only_present_categories() -> None:
    d = _delivery(question(consent=None), A.BELASTINGDIENST)
    listed = {s.category for s in d.manifest.shared} | {w.category for w in d.manifest.withheld}
    assert listed == {C.QUESTION_TEXT, C.IDENTITY, C.CONTACT}
    assert d.manifest.retention_days == CATALOG.get(A.BELASTINGDIENST).retention_days
    assert d.manifest.purpose == domain.PURPOSE


def test_delivery_carries_only_shared_data() -> None:
    # belastingdienst: identity and contact on public task, text only on consent
    d = _delivery(question(consent=None), A.BELASTINGDIENST)
    assert d.text is None
    assert d.requester is not None and d.requester.bsn == BSN
    assert d.manifest.consent_reference is None
    # with consent the text travels and the manifest names the consent
    d = _delivery(question(), A.BELASTINGDIENST)
    assert d.text is not None
    assert d.manifest.consent_reference == "c-1"


def test_bsn_only_with_identity_basis_otherwise_pseudonym() -> None:
    d = _delivery(question(consent=None), A.RIJKSWATERSTAAT)
    assert isinstance(d.requester, PersonRequester)
    assert d.requester.bsn is None
    assert d.requester.contact is not None  # contact on public task
    assert d.subject_pseudonym is not None
    assert BSN not in d.model_dump_json()
    withheld = {w.category: w.reason for w in d.manifest.withheld}
    assert withheld[C.IDENTITY] == R.NO_CONSENT


def test_business_without_business_basis_keeps_contact() -> None:
    d = _delivery(business_question(consent=None), A.TOESLAGEN)
    withheld = {w.category: w.reason for w in d.manifest.withheld}
    assert withheld[C.BUSINESS] == R.NO_LEGAL_BASIS
    assert isinstance(d.requester, PersonRequester)
    assert d.requester.contact is not None and "12345678" not in d.model_dump_json()
    d = _delivery(business_question(consent=None), A.KVK)
    assert d.requester is not None and d.requester.kind == "business"


def test_not_provided_manifest_withholds_everything() -> None:
    m = domain.not_provided_manifest(CATALOG.get(A.MAATWERKLOKET))
    assert m.shared == []
    assert {w.category for w in m.withheld} == set(C)
    assert {w.reason for w in m.withheld} == {R.NOT_PROVIDED}


def test_audit_record_has_trace_activity_and_no_bsn() -> None:
    d = _delivery(question(), A.BELASTINGDIENST)
    trace = new_trace().child()
    rec = domain.audit_record(
        d, CATALOG.get(A.BELASTINGDIENST), trace=trace, sender="urn:x", at=NOW
    )
    assert rec.trace_id == trace.trace_id and rec.span_id == trace.span_id
    assert rec.processing_activity_id == "va-loket-doorverwijzing-belastingdienst"
    assert rec.data_subject_pseudonym == d.subject_pseudonym
    assert set(rec.categories) == {s.category for s in d.manifest.shared}
    assert BSN not in rec.model_dump_json()


def test_consent_shares_are_the_consent_based_categories() -> None:
    d = _delivery(question(), A.BELASTINGDIENST)
    assert domain.consent_shares(d.manifest) == frozenset({C.QUESTION_TEXT})
    d = _delivery(question(), A.UWV)
    assert domain.consent_shares(d.manifest) == frozenset()


def test_event_ids_are_deterministic() -> None:
    assert domain.event_id("a", "b") == domain.event_id("a", "b")
    assert domain.event_id("a", "b") != domain.event_id("ab", "")
