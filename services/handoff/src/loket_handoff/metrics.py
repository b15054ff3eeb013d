"""Prometheus metrics of the handoff service (per-app registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loket_schemas.events import (
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffEvent,
    HandoffSlaBreached,
    HandoffSlaWarning,
)


class HandoffMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.open_handoffs = Gauge(
            "loket_handoff_open",
            "Open handoffs (offered or accepted) per agency.",
            ["agency"],
            registry=registry,
        )
        self.sla_warnings = Counter(
            "loket_handoff_sla_warnings",
            "SLA warnings (75% elapsed) fired.",
            ["agency", "sla"],
            registry=registry,
        )
        self.sla_breaches = Counter(
            "loket_handoff_sla_breaches",
            "SLA breaches fired.",
            ["agency", "sla"],
            registry=registry,
        )
        self.escalations = Counter(
            "loket_handoff_escalations",
            "Escalations to maatwerkloket by reason.",
            ["reason"],
            registry=registry,
        )
        self.declines = Counter(
            "loket_handoff_declines", "Declined handoffs.", ["agency"], registry=registry
        )
        self.accept_latency = Histogram(
            "loket_handoff_accept_latency_seconds",
            "Wall-clock time from offer to acceptance.",
            ["agency"],
            buckets=(
                60,
                300,
                900,
                1800,
                3600,
                4 * 3600,
                8 * 3600,
                24 * 3600,
                72 * 3600,
                168 * 3600,
            ),
            registry=registry,
        )
        self.responses = Counter(
            "loket_handoff_responses_processed",
            "Agency responses (commands) processed, by command, channel and outcome.",
            ["command", "via", "outcome"],
            registry=registry,
        )
        self.timers_fired = Counter(
            "loket_handoff_timers_fired", "SLA timers claimed and handled.", registry=registry
        )
        self.rebuilds = Counter(
            "loket_handoff_rebuilds", "Projection rebuilds from Kafka.", registry=registry
        )

    def published(self, event: HandoffEvent, offered_seconds_ago: float | None = None) -> None:
        """Count a lifecycle event this process decided and published."""
        agency = event.agency.value
        if isinstance(event, HandoffSlaWarning):
            self.sla_warnings.labels(agency, event.sla.value).inc()
        elif isinstance(event, HandoffSlaBreached):
            self.sla_breaches.labels(agency, event.sla.value).inc()
        elif isinstance(event, HandoffEscalated):
            self.escalations.labels(event.reason.value).inc()
        elif isinstance(event, HandoffDeclined):
            self.declines.labels(agency).inc()
        elif isinstance(event, HandoffAccepted) and offered_seconds_ago is not None:
            self.accept_latency.labels(agency).observe(offered_seconds_ago)
