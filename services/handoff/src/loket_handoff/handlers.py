"""Use cases of the handoff service as plain async code over ports (store, publisher, clock).

Every decision follows the same path, under the per-case Redis lock:

1. load the case projection from Redis;
2. decide (pure domain functions);
3. publish the resulting events to loket.handoffs.v1, awaiting the broker acks (all
   events of one decision are sent together, then all acks are awaited);
4. apply them to the projection right away (idempotent: when they come back through
   the consumer, their event id is already on the case timeline, and this process
   remembers the ids it applied recently, so the echo costs no Redis round trip).

A publish whose outcome is unknown (no ack in time, a Kafka error, or the case lock's
lease ran out before the apply) may still have landed. Its events are kept as
*unconfirmed* for the case (in this process): before the next decision on that case,
they are published again with the same event ids and content and applied, so the retry
decides against the state that includes them and never produces a second, different
decision (docs/reliability.md, B4). Their echo (consumed from the topic, not in the
recently-applied set) is applied like any other instance's event. The publish is bounded
by the lease left on the case lock, and :meth:`HandoffStore.apply` refuses to write once
the lease is (nearly) over, so a session that waited long for Kafka never overwrites a
newer session's writes.

Each public use case takes the case lock and loads the case itself. The Kafka batch
consumer (:mod:`loket_handoff.subscribers`) instead opens one :meth:`case_session` per
case and batch (one lock, one load) and calls the ``*_in`` variants for every record of
that case, in order: the loaded case is updated in place by each apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from loket_handoff.businesshours import SlaCalendar
from loket_handoff.clock import Clock
from loket_handoff.domain import (
    Accepted,
    Decision,
    Handoff,
    Rejected,
    RejectionKind,
    decide_command,
    decide_routing,
    decide_timer,
    event_id_for,
)
from loket_handoff.errors import LeaseExpired
from loket_handoff.metrics import HandoffMetrics
from loket_handoff.store import LEASE_MARGIN_S, HandoffStore, LoadedCase, short_id
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


#: Event ids this process applied recently (the echo of our own publishes is skipped).
RECENT_KEEP = 100_000
#: Cases with unconfirmed events kept at most (oldest dropped: their echo still applies them).
UNCONFIRMED_KEEP = 10_000
#: Timers fired concurrently by one sweep (different cases run in parallel; one case is
#: serialised by its lock).
TIMER_CONCURRENCY = 32


class Publisher(Protocol):
    """Publishes one message on loket.handoffs.v1 and returns after the broker ack."""

    async def publish(
        self, message: Message, *, event_id: str, trace: TraceContext | None
    ) -> None: ...


async def publish_all(
    publisher: Publisher, items: Sequence[tuple[Message, str, TraceContext | None]]
) -> None:
    """Publish ``items`` in order and return after every broker ack.

    A publisher with ``publish_many`` sends them all before awaiting the acks (same
    partition: same order); otherwise they are published one by one.
    """
    many = getattr(publisher, "publish_many", None)
    if many is not None and len(items) > 1:
        await many(items)
        return
    for message, event_id, trace in items:
        await publisher.publish(message, event_id=event_id, trace=trace)


#: An event published with an unknown outcome: (event id, event, time, trace, republish).
#: ``republish`` is False for the consumed input applied with it (a CaseRouted).
Unconfirmed = tuple[str, Message, datetime, TraceContext | None, bool]


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
        self._recent: OrderedDict[str, None] = OrderedDict()
        #: case id -> events published with an unknown outcome, in order:
        #: (event id, event, applied-at, trace, publish again?)
        self._unconfirmed: OrderedDict[str, list[Unconfirmed]] = OrderedDict()

    async def ensure_ready(self) -> None:
        if self._ensure_ready is not None:
            await self._ensure_ready()

    # ------------------------------------------------------------------ sessions

    @contextlib.asynccontextmanager
    async def case_session(self, case_id: str) -> AsyncIterator[LoadedCase]:
        """Hold the case lock and the loaded case for several records of one case."""
        async with self.store.session(case_id) as loaded:
            yield loaded

    async def open_cases(self, case_ids: Sequence[str]) -> dict[str, LoadedCase | None]:
        """Lock and load many cases in ONE Redis round trip (the batch consumer).

        case id -> loaded case, or None when its lock is held elsewhere (use
        :meth:`case_session` for it). The ``*_in`` use cases on these cases stage their
        projection writes; :meth:`close_cases` writes them all and releases the locks.
        """
        return await self.store.lock_load_many(case_ids)

    async def close_cases(self, sessions: Sequence[LoadedCase]) -> list[BaseException | None]:
        """Write the staged applies of ``sessions`` and release their locks (ONE round
        trip); per case None (written) or :class:`LeaseExpired` (the lock's lease ran
        out before the write: nothing of that case written, its published events stay
        unconfirmed). Raises if the write call itself fails (all stay unconfirmed)."""
        done = await self.store.write_many(sessions)
        return [
            None
            if ok
            else LeaseExpired(
                f"case lock {loaded.lock_key} lost before the batch write (lease ran out): "
                "nothing written from the stale load"
            )
            for loaded, ok in zip(sessions, done, strict=True)
        ]

    def abandon_cases(self, sessions: Sequence[LoadedCase]) -> None:
        """The staged applies of ``sessions`` will not be written (e.g. cancelled): their
        published events stay unconfirmed; the locks expire with their lease."""
        self.store.abandon(sessions)

    @staticmethod
    def _when_written(
        loaded: LoadedCase, done: Callable[[], None], lost: Callable[[], None] | None = None
    ) -> None:
        """Run ``done`` once the apply just made on ``loaded`` is in Redis (now, or when a
        batch session's staged writes were written); ``lost`` if they were not."""
        if loaded.staged is None:
            done()
            return

        def outcome(ok: bool) -> None:
            if ok:
                done()
            elif lost is not None:
                lost()

        loaded.after_write.append(outcome)

    def recently_applied(self, event_id: str) -> bool:
        """True if this process applied ``event_id`` to the projection (bounded memory).

        Safe to skip such an event: it is on the case timeline; if Redis was wiped since,
        the rebuild replays it from Kafka (it was acknowledged before it was applied).
        """
        return event_id in self._recent

    def _remember(self, event_ids: Sequence[str]) -> None:
        for event_id in event_ids:
            self._recent[event_id] = None
        while len(self._recent) > RECENT_KEEP:
            self._recent.popitem(last=False)

    # ------------------------------------------------------------------ events in

    async def on_case_routed(self, envelope: Envelope[CaseRouted]) -> list[HandoffEvent]:
        """Record the routing and open one handoff per assignment that has none open."""
        await self.ensure_ready()
        async with self.case_session(envelope.data.case_id) as loaded:
            return await self.case_routed_in(loaded, envelope)

    async def case_routed_in(
        self, loaded: LoadedCase, envelope: Envelope[CaseRouted]
    ) -> list[HandoffEvent]:
        routed = envelope.data
        await self.confirm_pending(loaded, routed.case_id)
        # decided against the case before this routing (CaseRouted changes only the lead
        # and the route count, neither of which the offers depend on); the routing and its
        # offers are then applied together after the acks (one Redis transaction)
        route_seq = self.store.route_seq(loaded, envelope.attributes.id)
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
        await self._publish_and_apply(
            loaded,
            offers,
            0,
            _child(envelope),
            now,
            first=[(envelope.attributes.id, routed, envelope.attributes.time)],
        )
        return list(offers)

    async def on_handoff_event(self, envelope: Envelope[Any]) -> bool:
        """Apply a lifecycle event (ours or another instance's) to the projection."""
        await self.ensure_ready()
        if self.recently_applied(envelope.attributes.id):
            return False
        async with self.case_session(envelope.data.case_id) as loaded:
            return await self.handoff_event_in(loaded, envelope)

    async def handoff_event_in(self, loaded: LoadedCase, envelope: Envelope[Any]) -> bool:
        applied = await self.store.apply(
            loaded, [(envelope.attributes.id, envelope.data, envelope.attributes.time)]
        )
        case_id = envelope.data.case_id

        def landed() -> None:
            pending = self._unconfirmed.get(case_id)
            if pending is not None and all(short_id(i[0]) in loaded.applied for i in pending):
                del self._unconfirmed[case_id]  # every one landed (echoed back)

        self._when_written(loaded, landed)
        return bool(applied.new_events)

    async def on_consent(self, envelope: Envelope[ConsentGiven | ConsentWithdrawn]) -> bool:
        """Record consent changes on the case timeline."""
        await self.ensure_ready()
        async with self.case_session(envelope.data.case_id) as loaded:
            return await self.handoff_event_in(loaded, envelope)

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
        async with self.case_session(command.case_id) as loaded:
            return await self.command_in(
                loaded, command, command_id=command_id, actor=actor, via=via, trace=trace
            )

    async def command_in(
        self,
        loaded: LoadedCase,
        command: HandoffCommand,
        *,
        command_id: str,
        actor: str,
        via: str,
        trace: TraceContext | None = None,
    ) -> CommandOutcome:
        name = COMMAND_NAMES.get(type(command), "unknown")
        await self.confirm_pending(loaded, command.case_id)
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
        async with self.case_session(case_id) as loaded:
            await self.reject_invalid_in(
                loaded,
                case_id=case_id,
                handoff_id=handoff_id,
                command_id=command_id,
                reason=reason,
                trace=trace,
            )

    async def reject_invalid_in(
        self,
        loaded: LoadedCase,
        *,
        case_id: str,
        handoff_id: str,
        command_id: str,
        reason: str,
        trace: TraceContext | None = None,
    ) -> None:
        await self.confirm_pending(loaded, case_id)
        rejected = Rejected(RejectionKind.INVALID, reason)
        self.metrics.responses.labels("unknown", "kafka", rejected.kind.value).inc()
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
        pending: list[Unconfirmed] = [(event_id, event, now, trace, True)]
        await self._publish_bounded(loaded, event.case_id, pending)
        if loaded.case is not None:  # a timeline exists only for known cases
            await self._apply_confirmed(loaded, event.case_id, pending)

    # ------------------------------------------------------------------ timers

    async def fire_due_timers(self, *, limit: int = 500, lease_s: float = 30.0) -> int:
        """Claim due SLA timers (atomically: each fires on one instance) and handle them.

        Claimed timers fire concurrently (bounded); each under its case lock.
        """
        await self.ensure_ready()
        now = self.clock.now()
        await self.store.reap_leases(now)
        claimed = await self.store.claim_due(now, limit, lease_s)
        if not claimed:
            return 0
        gate = asyncio.Semaphore(TIMER_CONCURRENCY)

        async def fire(handoff_id: str) -> None:
            async with gate:
                await self._fire(handoff_id)

        results = await asyncio.gather(*(fire(h) for h in claimed), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # the others fired; the failed claims return after their lease expires
            raise errors[0]
        return len(claimed)

    async def _fire(self, handoff_id: str) -> None:
        current = await self.store.get_handoff(handoff_id)
        if current is None:
            await self.store.release(handoff_id)
            return
        async with self.case_session(current.case_id) as loaded:
            await self.confirm_pending(loaded, current.case_id)
            handoff = loaded.projection.handoffs.get(handoff_id)
            if handoff is None:
                await self.store.release(handoff_id)
                return
            await self._fire_in(loaded, handoff)

    async def _fire_in(self, loaded: LoadedCase, handoff: Handoff) -> None:
        now = self.clock.now()
        events = decide_timer(handoff, now)
        await self._publish_and_apply(loaded, events, handoff.version, None, now)
        self.metrics.timers_fired.inc()
        await self.store.reschedule(loaded.projection.handoffs[handoff.handoff_id])

    # ------------------------------------------------------------------ shared

    async def _publish_and_apply(
        self,
        loaded: LoadedCase,
        events: Sequence[HandoffEvent],
        version: int,
        trace: TraceContext | None,
        now: datetime,
        *,
        first: Sequence[tuple[str, Message, datetime]] = (),
    ) -> None:
        """Publish ``events`` (all acks awaited), then apply ``first`` and them at once."""
        if not events:
            if first:
                await self.store.apply(loaded, first)
            return
        case_id = events[0].case_id
        items: list[Unconfirmed] = [(i, m, at, None, False) for i, m, at in first]
        for event in events:
            event_id = event_id_for(event.handoff_id, event.EVENT_TYPE, version)
            items.append((event_id, event, now, trace, True))
        await self._publish_bounded(loaded, case_id, items)  # every ack before the apply
        for event in events:
            before = loaded.projection.handoffs.get(event.handoff_id)
            latency = (
                (event.occurred_at - before.offered_at).total_seconds()
                if isinstance(event, HandoffAccepted) and before is not None
                else None
            )
            self.metrics.published(event, latency)
        await self._apply_confirmed(loaded, case_id, items)

    async def _publish_bounded(
        self, loaded: LoadedCase, case_id: str, items: Sequence[Unconfirmed]
    ) -> None:
        """Publish the ``republish`` items of ``items`` within the case lock's lease.

        On any failure the outcome is unknown (the records may have landed): ``items``
        become unconfirmed for the case and the error is raised as :class:`Retryable`.
        """
        out = [(message, event_id, trace) for event_id, message, _, trace, again in items if again]
        try:
            left = loaded.lease_left()
            async with asyncio.timeout(left - LEASE_MARGIN_S if left != float("inf") else None):
                await publish_all(self.publisher, out)
        except TimeoutError as exc:
            self._keep_unconfirmed(case_id, items)
            raise LeaseExpired(
                "publish not acknowledged within the case lock's lease; kept as unconfirmed"
            ) from exc
        except Exception:
            self._keep_unconfirmed(case_id, items)
            raise

    async def _apply_confirmed(
        self, loaded: LoadedCase, case_id: str, items: Sequence[Unconfirmed]
    ) -> None:
        """Apply published ``items``; if the apply fails they stay unconfirmed."""
        try:
            await self.store.apply(loaded, [(event_id, m, at) for event_id, m, at, _, _ in items])
        except Exception:
            self._keep_unconfirmed(case_id, items)
            raise
        published = [event_id for event_id, _, _, _, again in items if again]
        self._when_written(
            loaded,
            lambda: self._remember(published),
            lambda: self._keep_unconfirmed(case_id, items),
        )

    def _keep_unconfirmed(self, case_id: str, items: Sequence[Unconfirmed]) -> None:
        pending = self._unconfirmed.setdefault(case_id, [])
        known = {item[0] for item in pending}
        pending.extend(item for item in items if item[0] not in known)
        self._unconfirmed.move_to_end(case_id)
        while len(self._unconfirmed) > UNCONFIRMED_KEEP:
            dropped, _ = self._unconfirmed.popitem(last=False)
            if self.log is not None:
                self.log.warning("unconfirmed_dropped", case_id=dropped)

    def unconfirmed(self, case_id: str) -> list[str]:
        """Event ids of ``case_id`` published with an unknown outcome (tests, debugging)."""
        return [item[0] for item in self._unconfirmed.get(case_id, ())]

    async def confirm_pending(self, loaded: LoadedCase, case_id: str) -> None:
        """Before deciding on ``case_id``: publish its unconfirmed events again (same ids,
        same content; those the projection already holds are not sent) and apply them.

        The retried decision then sees them, so it cannot decide the same step twice
        with a different outcome. Raises :class:`Retryable` if Kafka still fails.
        """
        pending = self._unconfirmed.get(case_id)
        if not pending:
            return
        todo = [item for item in pending if short_id(item[0]) not in loaded.applied]
        if todo:
            # a decision follows on this load: this write must not release the lock
            release, loaded.release_on_write = loaded.release_on_write, False
            try:
                await self._publish_bounded(loaded, case_id, todo)
                await self._apply_confirmed(loaded, case_id, todo)
            finally:
                loaded.release_on_write = release
        self._unconfirmed.pop(case_id, None)
        if self.log is not None:
            self.log.info("unconfirmed_confirmed", case_id=case_id, events=len(todo))


def _child(envelope: Envelope[Any]) -> TraceContext | None:
    trace = envelope.attributes.trace
    return trace.child() if trace else None


def is_accepted(decision: Decision) -> bool:
    return isinstance(decision, Accepted)
