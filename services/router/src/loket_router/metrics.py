"""Prometheus metrics of the router (registered on the app's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loket_router.handlers import Stats


class RouterMetrics:
    """Counters are incremented only after a batch's Kafka transaction committed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.questions_routed = Counter(
            "loket_router_questions_routed_total",
            "Questions routed (committed).",
            registry=registry,
        )
        self.deliveries = Counter(
            "loket_router_deliveries_total",
            "CaseDelivered records committed, per agency.",
            ["agency"],
            registry=registry,
        )
        self.reroutes = Counter(
            "loket_router_reroutes_total",
            "Cases re-routed after a decline or escalation.",
            ["cause"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "loket_router_dead_lettered_total",
            "Poison records sent to the DLQ, per input loop.",
            ["loop"],
            registry=registry,
        )
        self.duplicates = Counter(
            "loket_router_duplicates_skipped_total",
            "Inputs skipped because they were already handled (e.g. a question published twice).",
            ["loop"],
            registry=registry,
        )
        self.erasures = Counter(
            "loket_router_erasure_requests_total",
            "DataErasureRequested records committed.",
            registry=registry,
        )
        self.unknown_cases = Counter(
            "loket_router_unknown_cases_total",
            "Re-routes of cases the router had no stored data for.",
            registry=registry,
        )
        self.transaction_seconds = Histogram(
            "loket_router_transaction_seconds",
            "Time to publish one transaction's outputs (one input partition) and commit it.",
            ["loop"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.batch_records = Histogram(
            "loket_router_batch_records",
            "Input records per transaction.",
            ["loop"],
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000),
            registry=registry,
        )
        self.retries = Counter(
            "loket_router_batch_retries_total",
            "Transactions (one input partition's batch) retried after a transient error.",
            ["loop"],
            registry=registry,
        )
        self.restarts = Counter(
            "loket_router_loop_restarts_total",
            "Consume-transform-produce loop restarts (retries exhausted, fenced, crashed).",
            ["loop"],
            registry=registry,
        )
        self.loop_up = Gauge(
            "loket_router_loop_up",
            "1 while the loop has a running consumer and producer.",
            ["loop"],
            registry=registry,
        )

    def committed(self, loop: str, stats: Stats, records: int, seconds: float | None) -> None:
        """Count a done unit; ``seconds`` None: no transaction of its own (offsets deferred)."""
        self.questions_routed.inc(stats.routed)
        for agency, n in stats.deliveries.items():
            self.deliveries.labels(agency=agency).inc(n)
        for cause, n in stats.rerouted.items():
            self.reroutes.labels(cause=cause).inc(n)
        if stats.dead_lettered:
            self.dead_lettered.labels(loop=loop).inc(stats.dead_lettered)
        if stats.duplicates:
            self.duplicates.labels(loop=loop).inc(stats.duplicates)
        self.erasures.inc(stats.erasures)
        self.unknown_cases.inc(stats.unknown_cases)
        if seconds is not None:
            self.transaction_seconds.labels(loop=loop).observe(seconds)
        self.batch_records.labels(loop=loop).observe(records)
