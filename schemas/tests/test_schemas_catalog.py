"""The shipped catalogs load, validate and follow the data-sharing rules."""

from __future__ import annotations

import pytest

from loket_schemas.catalog import InitiativeKind, load_agencies, load_initiatives
from loket_schemas.vocabulary import AgencyCode, DataCategory, GdprBasis, Urgency


def test_agency_catalog_has_all_17_agencies() -> None:
    catalog = load_agencies()
    assert len(catalog.agencies) == 17
    assert {a.code for a in catalog.agencies} == set(AgencyCode)


def test_initiative_catalog_has_25_sample_initiatives() -> None:
    catalog = load_initiatives()
    assert len(catalog.initiatives) == 25
    assert all(i.sample for i in catalog.initiatives)
    assert {i.kind for i in catalog.initiatives} == set(InitiativeKind)
    assert catalog.get("bibliotheek-rotterdam-centrale") is not None
    assert catalog.get("does-not-exist") is None


@pytest.mark.parametrize("code", list(AgencyCode))
def test_every_agency_can_receive_question_and_contact(code: AgencyCode) -> None:
    agency = load_agencies().get(code)
    assert agency.permission(DataCategory.QUESTION_TEXT) is not None
    assert agency.permission(DataCategory.CONTACT) is not None
    assert agency.processing_activity_id == f"va-loket-doorverwijzing-{code.value}"


@pytest.mark.parametrize("code", list(AgencyCode))
def test_health_only_ever_on_consent(code: AgencyCode) -> None:
    permission = load_agencies().get(code).permission(DataCategory.HEALTH)
    assert permission is None or permission.needs_consent


@pytest.mark.parametrize("code", list(AgencyCode))
def test_public_task_always_names_a_law(code: AgencyCode) -> None:
    for permission in load_agencies().get(code).may_receive:
        if permission.basis.article is GdprBasis.PUBLIC_TASK:
            assert permission.basis.law_reference


def test_statutory_tasks_are_recorded() -> None:
    agencies = load_agencies()
    income = agencies.get("toeslagen").permission(DataCategory.INCOME)
    assert income is not None and not income.needs_consent
    assert income.basis.law_reference is not None and "Awir" in income.basis.law_reference
    residence = agencies.get("ind").permission(DataCategory.RESIDENCE_STATUS)
    assert residence is not None and "Vreemdelingenwet 2000" in str(residence.basis.law_reference)
    assert agencies.get("rdw").permission(DataCategory.HEALTH) is not None
    assert agencies.get("rdw").permission(DataCategory.INCOME) is None


def test_sla_norms_are_sane_and_maatwerkloket_is_fastest() -> None:
    agencies = load_agencies()
    for agency in agencies.agencies:
        normal, urgent = agency.sla[Urgency.NORMAL], agency.sla[Urgency.URGENT]
        assert urgent.accept_hours < normal.accept_hours
        assert urgent.resolve_hours < normal.resolve_hours
        assert normal.accept_hours < normal.resolve_hours
    mwl = agencies.get(AgencyCode.MAATWERKLOKET).sla
    for agency in agencies.agencies:
        assert mwl[Urgency.NORMAL].accept_hours <= agency.sla[Urgency.NORMAL].accept_hours
        assert mwl[Urgency.URGENT].accept_hours <= agency.sla[Urgency.URGENT].accept_hours
