"""Seeding the handoff projection for operator-view tests (real Redis, real use cases).

Events go through :class:`HandoffService` (decide -> publish -> apply) with a recording
publisher and a fake clock, so the projection holds exactly what production would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

from loket_handoff.clock import FakeClock
from loket_handoff.handlers import HandoffService
from loket_handoff.settings import HandoffSettings
from loket_schemas.events import (
    AcceptHandoff,
    AgencyAssignment,
    AgencyRole,
    CaseRouted,
    ContactPerson,
    DeclineHandoff,
    HandoffOffered,
    Message,
    ResolveHandoff,
)
from loket_schemas.kafka import decode, encode, service_source
from loket_schemas.tracing import TraceContext
from loket_schemas.vocabulary import AgencyCode, Urgency

#: A Monday morning; with time scale 3600 one SLA hour lasts one second (no nights).
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TIME_SCALE = 3600.0


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def publish(self, message: Message, *, event_id: str, trace: TraceContext | None) -> None:
        self.sent.append(message)


def operator_settings(loket_settings: dict[str, Any], **extra: Any) -> HandoffSettings:
    base: dict[str, Any] = {
        "handoff_dev_keys": True,
        "handoff_time_scale": TIME_SCALE,
        "handoff_timer_interval_s": 0.05,
        "readiness_timeout_s": 2.0,
    }
    base.update(extra)
    return HandoffSettings(**loket_settings, **base)


@dataclass
class Seeder:
    """Drives the handoff use cases to build cases for the operator page."""

    service: HandoffService
    clock: FakeClock
    offers: dict[str, dict[AgencyCode, str]] = field(default_factory=dict)

    async def route(
        self,
        lead: AgencyCode,
        *,
        supporting: tuple[AgencyCode, ...] = (),
        initiative: str = "bibliotheek-rotterdam-centrale",
        reference: str | None = None,
        urgency: Urgency = Urgency.NORMAL,
        case_id: str | None = None,
    ) -> str:
        case_id = case_id or str(uuid.uuid4())
        assignments = [AgencyAssignment(agency=lead, role=AgencyRole.LEAD, confidence=0.9)]
        assignments += [
            AgencyAssignment(agency=a, role=AgencyRole.SUPPORTING, confidence=0.6)
            for a in supporting
        ]
        routed = CaseRouted(
            case_id=case_id,
            reference=reference or "LK-" + uuid.uuid4().hex[:9].upper().replace("-", ""),
            initiative_id=initiative,
            lead=lead,
            assignments=assignments,
            urgency=urgency,
            routed_at=self.clock.now(),
        )
        record = encode(routed, source=service_source("router"), time=self.clock.now())
        offers = await self.service.on_case_routed(decode(record.value, record.headers))
        self.offers.setdefault(case_id, {}).update(
            {o.agency: o.handoff_id for o in offers if isinstance(o, HandoffOffered)}
        )
        return case_id

    def handoff(self, case_id: str, agency: AgencyCode) -> str:
        return self.offers[case_id][agency]

    async def _command(self, command: Any, actor: str) -> None:
        outcome = await self.service.handle_command(
            command, command_id=str(uuid.uuid4()), actor=actor, via="http"
        )
        assert outcome.events, outcome.decision

    async def accept(self, case_id: str, agency: AgencyCode, name: str) -> None:
        await self._command(
            AcceptHandoff(
                case_id=case_id,
                handoff_id=self.handoff(case_id, agency),
                agency=agency,
                contact=ContactPerson(name=name, email="behandelaar@example.nl"),
            ),
            agency.value,
        )

    async def decline(
        self, case_id: str, agency: AgencyCode, reason: str, suggested: AgencyCode
    ) -> None:
        await self._command(
            DeclineHandoff(
                case_id=case_id,
                handoff_id=self.handoff(case_id, agency),
                agency=agency,
                reason=reason,
                suggested_agency=suggested,
            ),
            agency.value,
        )

    async def resolve(self, case_id: str, agency: AgencyCode) -> None:
        await self._command(
            ResolveHandoff(
                case_id=case_id,
                handoff_id=self.handoff(case_id, agency),
                agency=agency,
                summary="Afgehandeld",
            ),
            agency.value,
        )

    async def advance(self, seconds: float) -> None:
        """Move the clock and fire every SLA timer that is due (warnings, breaches)."""
        self.clock.advance(timedelta(seconds=seconds))
        while await self.service.fire_due_timers(limit=100, lease_s=30):
            pass


class TableParser(HTMLParser):
    """Collects the cell texts of every ``<table id=...>`` (rows of cells, header included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.captions: dict[str, str] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "caption":
            self._caption = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "caption" and self._caption is not None and self._table:
            self.captions[self._table] = " ".join("".join(self._caption).split())
            self._caption = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)


def tables(html: str) -> dict[str, list[list[str]]]:
    parser = TableParser()
    parser.feed(html)
    return parser.tables


def rows_by_first_cell(table: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in table[1:]}
