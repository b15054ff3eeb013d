"""The shared, plain vocabulary of Loket.

Government offices use different words for the same thing; these enumerations and
value types are the one set of words every service and every agency integration uses.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
)


class AgencyCode(StrEnum):
    """The fixed agency codes (DESIGN.md). ``maatwerkloket`` is the escalation point."""

    BELASTINGDIENST = "belastingdienst"
    TOESLAGEN = "toeslagen"
    UWV = "uwv"
    SVB = "svb"
    DUO = "duo"
    CJIB = "cjib"
    CAK = "cak"
    IND = "ind"
    RDW = "rdw"
    JUSTIS = "justis"
    RVO = "rvo"
    KVK = "kvk"
    GEMEENTE = "gemeente"
    WATERSCHAP = "waterschap"
    RIJKSWATERSTAAT = "rijkswaterstaat"
    JURIDISCH_LOKET = "juridisch-loket"
    MAATWERKLOKET = "maatwerkloket"


class Channel(StrEnum):
    """The door a question came through."""

    BALIE = "balie"
    TELEFOON = "telefoon"
    WEB = "web"
    EMAIL = "email"
    CHAT = "chat"
    BRIEF = "brief"


class DataCategory(StrEnum):
    """Categories of personal data that may travel with a case.

    ``health`` is a special category (GDPR art. 9): it is shared only with explicit consent.
    """

    IDENTITY = "identity"
    CONTACT = "contact"
    QUESTION_TEXT = "question_text"
    INCOME = "income"
    DEBTS = "debts"
    BENEFITS = "benefits"
    HOUSEHOLD = "household"
    HEALTH = "health"
    RESIDENCE_STATUS = "residence_status"
    BUSINESS = "business"


SPECIAL_CATEGORIES: frozenset[DataCategory] = frozenset({DataCategory.HEALTH})


class Urgency(StrEnum):
    """How fast an agency must react; selects the SLA norm in the agency catalog."""

    NORMAL = "normal"
    URGENT = "urgent"


class GdprBasis(StrEnum):
    """GDPR art. 6(1) lawful bases."""

    CONSENT = "6.1.a"
    CONTRACT = "6.1.b"
    LEGAL_OBLIGATION = "6.1.c"
    VITAL_INTERESTS = "6.1.d"
    PUBLIC_TASK = "6.1.e"
    LEGITIMATE_INTERESTS = "6.1.f"


class LegalBasis(BaseModel):
    """A lawful basis for processing: the GDPR article plus, where it applies, the law."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    article: GdprBasis = Field(description="GDPR art. 6(1) basis, e.g. '6.1.e' (public task).")
    law_reference: str | None = Field(
        default=None,
        max_length=300,
        description=(
            "The national law and article that grant the task, e.g. 'Participatiewet art. 7'."
        ),
    )


BSN_PATTERN = re.compile(r"^[0-9]{9}$")
KVK_PATTERN = re.compile(r"^[0-9]{8}$")


def bsn_is_valid(value: str) -> bool:
    """The BSN eleven-test (elfproef): 9 digits, weighted sum 9..2 and -1 divisible by 11."""
    if not BSN_PATTERN.fullmatch(value):
        return False
    digits = [int(c) for c in value]
    total = sum(d * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True)) - digits[8]
    return total % 11 == 0 and value != "000000000"


def _check_bsn(value: str) -> str:
    if not bsn_is_valid(value):
        raise ValueError("BSN must be 9 digits and pass the eleven-test (elfproef)")
    return value


def _check_kvk(value: str) -> str:
    if not KVK_PATTERN.fullmatch(value):
        raise ValueError("KvK number must be exactly 8 digits")
    return value


Bsn = Annotated[
    str,
    AfterValidator(_check_bsn),
    WithJsonSchema({"type": "string", "pattern": "^[0-9]{9}$"}),
]
KvkNumber = Annotated[
    str,
    AfterValidator(_check_kvk),
    WithJsonSchema({"type": "string", "pattern": "^[0-9]{8}$"}),
]


class ContactDetails(BaseModel):
    """How the requester wants to be reached (category ``contact``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str | None = Field(
        default=None, max_length=200, description="Name as given by the person."
    )
    email: str | None = Field(default=None, max_length=254, description="E-mail address.")
    phone: str | None = Field(default=None, max_length=32, description="Telephone number.")
    postal_address: str | None = Field(default=None, max_length=500, description="Postal address.")


class PersonRequester(BaseModel):
    """A natural person, identified by BSN (checked with the eleven-test) when given."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["person"] = Field(default="person", description="Discriminator: a person.")
    bsn: Bsn | None = Field(default=None, description="Burgerservicenummer; passes the elfproef.")
    contact: ContactDetails | None = Field(default=None, description="Contact details.")


class BusinessRequester(BaseModel):
    """A business, identified by its 8-digit KvK number."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["business"] = Field(default="business", description="Discriminator: a business.")
    kvk_number: KvkNumber = Field(description="Kamer van Koophandel number, 8 digits.")
    trade_name: str | None = Field(default=None, max_length=200, description="Trade name.")
    contact: ContactDetails | None = Field(default=None, description="Contact details.")


def _requester_kind(value: Any) -> str:
    """The union tag: ``kind`` when given; a requester without ``kind`` is a person."""
    if isinstance(value, dict):
        return str(value.get("kind", "person"))
    return str(getattr(value, "kind", "person"))


Requester = Annotated[
    Annotated[PersonRequester, Tag("person")] | Annotated[BusinessRequester, Tag("business")],
    Discriminator(_requester_kind),
]
"""A person or a business, told apart by ``kind`` (absent ``kind`` means ``person``)."""


class ConsentRecord(BaseModel):
    """What the person agreed to share, with whom, for which purpose, and until when.

    A consent covers a share when the category and the recipient are listed, the purpose
    matches, it is not expired (``expires_at``) and not withdrawn (``withdrawn_at``).
    ``recipients`` empty means: any agency that the case is routed to.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    consent_id: str = Field(min_length=1, max_length=64, description="Unique id of this consent.")
    categories: list[DataCategory] = Field(
        description="Data categories the person agreed to share."
    )
    recipients: list[AgencyCode] = Field(
        default_factory=list,
        description="Agencies that may receive the data; empty means every agency routed to.",
    )
    purpose: str = Field(
        default="case_handling",
        max_length=100,
        description="Purpose binding: the data is shared only for this purpose.",
    )
    given_at: AwareDatetime = Field(description="When the consent was given (RFC 3339, UTC).")
    expires_at: AwareDatetime | None = Field(default=None, description="When the consent lapses.")
    withdrawn_at: AwareDatetime | None = Field(default=None, description="When it was withdrawn.")
    explicit: bool = Field(
        default=False,
        description=(
            "Explicit consent (GDPR art. 9(2)(a)), required for special categories such as health."
        ),
    )

    def covers(
        self,
        category: DataCategory,
        recipient: AgencyCode,
        purpose: str,
        at: datetime,
    ) -> bool:
        """True when this consent allows sharing ``category`` with ``recipient`` at ``at``."""
        if self.withdrawn_at is not None and self.withdrawn_at <= at:
            return False
        if self.expires_at is not None and self.expires_at <= at:
            return False
        if at < self.given_at:
            return False
        if purpose != self.purpose:
            return False
        if category not in self.categories:
            return False
        if self.recipients and recipient not in self.recipients:
            return False
        return not (category in SPECIAL_CATEGORIES and not self.explicit)
