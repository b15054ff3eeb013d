"""Use cases of the handoff service as plain async code over ports (store, publisher, clock).

Every decision follows the same path, under the per-case Redis lock:

1. load the case projection from Redis;
2. decide (pure domain functions);
3. publish the resulting events to loket.handoffs.v1, awaiting the broker ack;
4. apply them to the projection right away (idempotent: when they come back through
   the consumer, their event id is already on the case timeline).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from loket_handoff.businesshours import SlaCalendar
from loket_handoff.clock import Clock
from loket_handoff.domain import (
    Accepted,
    Decision,
    Rejected,
    RejectionKind,
    decide_command,
    decide_routing,
    decide_timer,
    event_id_for,
)
from loket_handoff.metrics import HandoffMetrics
from loket_handoff.store import HandoffStore, LoadedCase
from loket_schemas.catalog import AgencyCatalog
from loket_schemas.events import (
    AcceptHandoff,
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    DeclineHandoff,
    EscalateHandoff,
    HandoffAccepted,
    HandoffCommand,
    HandoffEvent,
    HandoffResponseRejected,
    Message,
    ResolveHandoff,
)
from loket_schemas.kafka import Envelope
from loket_schemas.tracing import TraceContext

REJECTION_NAMESPACE = uuid.UUID("0c8f3c5e-8a7b-5f7c-9a53-6c6f6b657433")

COMMAND_NAMES: dict[type[HandoffCommand], str] = {
    AcceptHandoff: "accept",
    DeclineHandoff: "decline",
    ResolveHandoff: "resolve",
    EscalateHandoff: "escalate",
}


class Publisher(Protocol):
    """Publishes one message on loket.handoffs.v1 and returns after the broker ack."""

    async def publish(
        self, message: Message, *, event_id: str, trace: TraceContext | None
    ) -> None: ...


@dataclass(frozen=True)
class CommandOutcome:
    decision: Decision
    events: tuple[HandoffEvent, ...] = ()


class HandoffService:
    """The handoff use cases; one instance per app (see app.create_app)."""

    def __init__(
        self,
        *,
        store: HandoffStore,
        publisher: Publisher,
        clock: Clock,
        catalog: AgencyCatalog,
        calendar: SlaCalendar,
        metrics: HandoffMetrics,
        ensure_ready: Callable[[], Awaitable[None]] | None = None,
        log: Any = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.clock = clock
        self.catalog = catalog
        self.calendar = calendar
        self.metrics = metrics
        self._ensure_ready = ensure_ready
        self.log = log

    async def ensure_ready(self) -> None:
        if self._ensure_ready is not None:
            await self._ensure_ready()

    # ------------------------------------------------------------------ events in

    async def on_case_routed(self, envelope: Envelope[CaseRouted]) -> list[HandoffEvent]:
        """Record the routing and open one handoff per assignment that has none open."""
        await self.ensure_ready()
        routed = envelope.data
        trace = _child(envelope)
        async with self.store.lock(routed.case_id):
            loaded = await self.store.load(routed.case_id)
            applied = await self.store.apply(
                loaded, [(envelope.attributes.id, routed, envelope.attributes.time)]
            )
            route_seq = applied.route_seq if applied.route_seq is not None else 0
            now = self.clock.now()
            offers = decide_routing(
                loaded.case,
                list(loaded.projection.handoffs.values()),
                routed,
                route_seq=route_seq,
                now=now,
                catalog=self.catalog,
                calendar=self.calendar,
            )
            await self._publish_and_apply(loaded, offers, 0, trace, now)
        return list(offers)

    async def on_handoff_event(self, envelope: Envelope[Any]) -> bool:
        """Apply a lifecycle event (ours or another instance's) to the projection."""
        await self.ensure_ready()
        event = envelope.data
        async with self.store.lock(event.case_id):
            loaded = await self.store.load(event.case_id)
            applied = await self.store.apply(
                loaded, [(envelope.attributes.id, event, envelope.attributes.time)]
            )
        return bool(applied.new_events)

    async def on_consent(self, envelope: Envelope[ConsentGiven | ConsentWithdrawn]) -> bool:
        """Record consent changes on the case timeline."""
        await self.ensure_ready()
        return await self.store.record_only(
            envelope.data.case_id,
            envelope.attributes.id,
            envelope.data,
            envelope.attributes.time,
        )

    # ------------------------------------------------------------------ commands

    async def handle_command(
        self,
        command: HandoffCommand,
        *,
        command_id: str,
        actor: str,
        via: str,
        trace: TraceContext | None = None,
    ) -> CommandOutcome:
        """Decide an agency response; publish the events or (via Kafka) a rejection."""
        await self.ensure_ready()
        name = COMMAND_NAMES.get(type(command), "unknown")
        async with self.store.lock(command.case_id):
            loaded = await self.store.load(command.case_id)
            handoff = loaded.projection.handoffs.get(command.handoff_id)
            now = self.clock.now()
            decision = decide_command(
                loaded.case,
                handoff,
                command,
                actor=actor,
                now=now,
                catalog=self.catalog,
                calendar=self.calendar,
            )
            if isinstance(decision, Rejected):
                self.metrics.responses.labels(name, via, decision.kind.value).inc()
                if via == "kafka":
                    await self._reject(loaded, command, command_id, decision, trace, now)
                return CommandOutcome(decision)
            version = handoff.version if handoff else 0
            events = decision.events
            await self._publish_and_apply(loaded, events, version, trace, now)
        outcome = "duplicate" if decision.duplicate else "ok"
        self.metrics.responses.labels(name, via, outcome).inc()
        return CommandOutcome(decision, events)

    async def reject_invalid(
        self,
        *,
        case_id: str,
        handoff_id: str,
        command_id: str,
        reason: str,
        trace: TraceContext | None = None,
    ) -> None:
        """A command on Kafka that failed validation: publish HandoffResponseRejected."""
        await self.ensure_ready()
        rejected = Rejected(RejectionKind.INVALID, reason)
        self.metrics.responses.labels("unknown", "kafka", rejected.kind.value).inc()
        async with self.store.lock(case_id):
            loaded = await self.store.load(case_id)
            now = self.clock.now()
            event = HandoffResponseRejected(
                case_id=case_id,
                handoff_id=handoff_id[:64],
                command_id=command_id[:64],
                reason=reason[:1000],
                occurred_at=now,
            )
            await self._publish_rejection(loaded, event, command_id, trace, now)

    async def _reject(
        self,
        loaded: LoadedCase,
        command: HandoffCommand,
        command_id: str,
        decision: Rejected,
        trace: TraceContext | None,
        now: datetime,
    ) -> None:
        event = HandoffResponseRejected(
            case_id=command.case_id,
            handoff_id=command.handoff_id,
            command_id=command_id[:64],
            reason=f"{decision.kind.value}: {decision.reason}"[:1000],
            occurred_at=now,
        )
        await self._publish_rejection(loaded, event, command_id, trace, now)

    async def _publish_rejection(
        self,
        loaded: LoadedCase,
        event: HandoffResponseRejected,
        command_id: str,
        trace: TraceContext | None,
        now: datetime,
    ) -> None:
        event_id = str(uuid.uuid5(REJECTION_NAMESPACE, command_id))
        await self.publisher.publish(event, event_id=event_id, trace=trace)
        if loaded.case is not None:  # a timeline exists only for known cases
            await self.store.apply(loaded, [(event_id, event, now)])

    # ------------------------------------------------------------------ timers

    async def fire_due_timers(self, *, limit: int = 500, lease_s: float = 30.0) -> int:
        """Claim due SLA timers (atomically: each fires on one instance) and handle them."""
        await self.ensure_ready()
        now = self.clock.now()
        await self.store.reap_leases(now)
        claimed = await self.store.claim_due(now, limit, lease_s)
        for handoff_id in claimed:
            await self._fire(handoff_id)
        return len(claimed)

    async def _fire(self, handoff_id: str) -> None:
        current = await self.store.get_handoff(handoff_id)
        if current is None:
            await self.store.release(handoff_id)
            return
        async with self.store.lock(current.case_id):
            loaded = await self.store.load(current.case_id)
            handoff = loaded.projection.handoffs.get(handoff_id)
            if handoff is None:
                await self.store.release(handoff_id)
                return
            now = self.clock.now()
            events = decide_timer(handoff, now)
            await self._publish_and_apply(loaded, events, handoff.version, None, now)
            self.metrics.timers_fired.inc()
            await self.store.reschedule(loaded.projection.handoffs[handoff_id])

    # ------------------------------------------------------------------ shared

    async def _publish_and_apply(
        self,
        loaded: LoadedCase,
        events: Sequence[HandoffEvent],
        version: int,
        trace: TraceContext | None,
        now: datetime,
    ) -> None:
        if not events:
            return
        items: list[tuple[str, Message, datetime]] = []
        for event in events:
            event_id = event_id_for(event.handoff_id, event.EVENT_TYPE, version)
            await self.publisher.publish(event, event_id=event_id, trace=trace)
            items.append((event_id, event, now))
            before = loaded.projection.handoffs.get(event.handoff_id)
            latency = (
                (event.occurred_at - before.offered_at).total_seconds()
                if isinstance(event, HandoffAccepted) and before is not None
                else None
            )
            self.metrics.published(event, latency)
        await self.store.apply(loaded, items)


def _child(envelope: Envelope[Any]) -> TraceContext | None:
    trace = envelope.attributes.trace
    return trace.child() if trace else None


def is_accepted(decision: Decision) -> bool:
    return isinstance(decision, Accepted)
