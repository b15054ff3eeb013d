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
        self.timer_sweeps = Counter(
            "loket_handoff_timer_sweeps",
            "Runs of the SLA timer sweep in this process (each claims the due timers).",
            registry=registry,
        )
        self.batches = Histogram(
            "loket_handoff_consumer_batch_records",
            "Records per consumed batch (committed with one offset commit).",
            buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "loket_handoff_consumer_batch_seconds",
            "Time to handle one consumed batch (its offset commit runs during the next one).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.batch_retries = Counter(
            "loket_handoff_consumer_batch_retries",
            "Retries of failed case groups within a batch.",
            registry=registry,
        )
        self.commit_failures = Counter(
            "loket_handoff_consumer_commit_failures",
            "Offset commits that failed (rebalance or coordinator trouble).",
            registry=registry,
        )
        self.consumer_restarts = Counter(
            "loket_handoff_consumer_restarts",
            "Restarts of the consumer loop (from the committed offsets).",
            registry=registry,
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
