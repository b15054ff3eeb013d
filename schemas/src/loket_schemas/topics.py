"""Kafka topic names: the one typed module every service takes them from.

Topic names are fixed by DESIGN.md. Records are keyed by case id everywhere, so all
events of one case land on one partition and keep their order.
"""

from __future__ import annotations

from typing import Final

from loket_schemas.vocabulary import AgencyCode

QUESTIONS: Final = "loket.questions.v1"
HANDOFFS: Final = "loket.handoffs.v1"
HANDOFF_RESPONSES: Final = "loket.handoff-responses.v1"
CONSENT: Final = "loket.consent.v1"
AUDIT: Final = "loket.audit.v1"
DLQ: Final = "loket.dlq.v1"


def agency_topic(agency: AgencyCode | str) -> str:
    """The topic on which one agency receives its routed cases: ``loket.agency.<code>.v1``.

    Raises ValueError for a code that is not in the fixed list of agency codes.
    """
    code = AgencyCode(agency)
    return f"loket.agency.{code.value}.v1"


AGENCY_TOPICS: Final[tuple[str, ...]] = tuple(agency_topic(code) for code in AgencyCode)
FIXED_TOPICS: Final[tuple[str, ...]] = (QUESTIONS, HANDOFFS, HANDOFF_RESPONSES, CONSENT, AUDIT, DLQ)
ALL_TOPICS: Final[tuple[str, ...]] = FIXED_TOPICS + AGENCY_TOPICS


def prefixed(topic: str, prefix: str = "") -> str:
    """Apply a test/environment prefix to a topic name (empty prefix in production)."""
    return f"{prefix}{topic}"
