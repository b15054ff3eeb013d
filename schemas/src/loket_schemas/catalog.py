"""Catalogs as validated data: the 17 agencies and the 25 practice initiatives.

The data lives in ``loket_schemas/data/*.json`` inside the package and is validated by
these models when loaded; a bad catalog fails loudly at start-up, never half-loaded.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loket_schemas.vocabulary import AgencyCode, DataCategory, LegalBasis, Urgency


class CategoryPermission(BaseModel):
    """One data category an agency may receive, and on which basis."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: DataCategory = Field(description="The data category.")
    basis: LegalBasis = Field(description="The basis; article 6.1.a means: only with consent.")

    @property
    def needs_consent(self) -> bool:
        """True when the only basis is the person's consent (GDPR 6.1.a)."""
        return self.basis.article.value == "6.1.a"


class SlaNorm(BaseModel):
    """Service level norms in business hours (Mon-Fri 09:00-17:00 Europe/Amsterdam)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accept_hours: float = Field(
        gt=0, description="Business hours to accept (or decline) a handoff."
    )
    resolve_hours: float = Field(gt=0, description="Business hours to resolve after accepting.")


class Agency(BaseModel):
    """One public service provider that can receive cases."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: AgencyCode = Field(description="Fixed agency code.")
    name: str = Field(min_length=1, description="Official name.")
    description: str = Field(description="What the agency does, plain Dutch.")
    handles: list[str] = Field(min_length=1, description="Topics it handles (plain words).")
    may_receive: list[CategoryPermission] = Field(
        description="Data categories it may receive and on which basis."
    )
    sla: dict[Urgency, SlaNorm] = Field(description="SLA norms per urgency.")
    retention_days: int = Field(default=365, ge=1, le=3650, description="Retention of shared data.")
    processing_activity_id: str = Field(
        description="Id of the processing activity (verwerkingsactiviteit) for the audit log."
    )

    @model_validator(mode="after")
    def _complete(self) -> Agency:
        missing = [u.value for u in Urgency if u not in self.sla]
        if missing:
            raise ValueError(f"agency {self.code.value}: SLA missing for {missing}")
        seen = [p.category for p in self.may_receive]
        if len(seen) != len(set(seen)):
            raise ValueError(f"agency {self.code.value}: duplicate category in may_receive")
        return self

    def permission(self, category: DataCategory) -> CategoryPermission | None:
        """The permission for one category, or None when the agency may not receive it."""
        for permission in self.may_receive:
            if permission.category == category:
                return permission
        return None


class InitiativeKind(StrEnum):
    """The kind of front desk."""

    LIBRARY = "library"
    GEMEENTE_DESK = "gemeente_desk"
    AGENCY_DESK = "agency_desk"
    SOCIAL_DOMAIN_HUB = "social_domain_hub"
    ONLINE = "online"


class Initiative(BaseModel):
    """A practice initiative (praktijkinitiatief): one of the front doors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9-]{2,64}$", description="Stable id, used in API calls.")
    name: str = Field(min_length=1, description="Display name.")
    organisation: str = Field(min_length=1, description="Organisation that runs it.")
    kind: InitiativeKind = Field(description="Kind of desk.")
    region: str = Field(min_length=1, description="Region or municipality.")
    sample: bool = Field(default=True, description="True: sample data, not a real initiative.")


class AgencyCatalog(BaseModel):
    """All agencies; every fixed code exactly once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agencies: list[Agency]

    @model_validator(mode="after")
    def _all_codes_once(self) -> AgencyCatalog:
        codes = [a.code for a in self.agencies]
        if sorted(codes) != sorted(AgencyCode) or len(codes) != len(set(codes)):
            raise ValueError("agency catalog must list every agency code exactly once")
        return self

    def get(self, code: AgencyCode | str) -> Agency:
        """The agency for a code; KeyError when unknown."""
        wanted = AgencyCode(code)
        for agency in self.agencies:
            if agency.code == wanted:
                return agency
        raise KeyError(code)  # pragma: no cover - validated complete


class InitiativeCatalog(BaseModel):
    """All practice initiatives; ids unique."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initiatives: list[Initiative]

    @model_validator(mode="after")
    def _unique(self) -> InitiativeCatalog:
        ids = [i.id for i in self.initiatives]
        if len(ids) != len(set(ids)):
            raise ValueError("initiative ids must be unique")
        return self

    def get(self, initiative_id: str) -> Initiative | None:
        """The initiative with this id, or None."""
        for initiative in self.initiatives:
            if initiative.id == initiative_id:
                return initiative
        return None


def _read(name: str) -> str:
    return resources.files("loket_schemas").joinpath("data", name).read_text(encoding="utf-8")


@cache
def load_agencies() -> AgencyCatalog:
    """The agency catalog shipped with this package (validated)."""
    return AgencyCatalog.model_validate(json.loads(_read("agencies.json")))


@cache
def load_initiatives() -> InitiativeCatalog:
    """The practice initiatives shipped with this package (validated; sample data)."""
    return InitiativeCatalog.model_validate(json.loads(_read("initiatives.json")))
