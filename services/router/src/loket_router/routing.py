"""Routing engine: which agencies must act on a question (pure; catalog loaded once)."""

from __future__ import annotations

from dataclasses import dataclass

from loket_schemas.events import AgencyAssignment, AgencyRole
from loket_schemas.vocabulary import AgencyCode


@dataclass(frozen=True)
class RoutingDecision:
    """The outcome of routing one question."""

    lead: AgencyCode
    assignments: tuple[AgencyAssignment, ...]
    reasons: dict[str, list[str]]
    unclassified: bool


def classify(text: str, *, vulnerable: bool = False) -> RoutingDecision:
    """Route a question (temporary stub: everything goes to maatwerkloket)."""
    lead = AgencyCode.MAATWERKLOKET
    return RoutingDecision(
        lead=lead,
        assignments=(
            AgencyAssignment(
                agency=lead, role=AgencyRole.LEAD, reasons=["unclassified"], confidence=0.0
            ),
        ),
        reasons={lead.value: ["unclassified"]},
        unclassified=True,
    )
