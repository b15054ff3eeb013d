"""Settings of the router service (environment variables with prefix ``LOKET_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from loket_runtime.settings import BaseServiceSettings


class RouterSettings(BaseServiceSettings):
    service_name: str = "router"
    port: int = 8001
    #: Name of this router instance (e.g. the StatefulSet ordinal), used in the Kafka
    #: client ids (broker logs, metrics). Not part of the transactional ids: those follow
    #: the input partition (see loket_router.loop), so any instance fences the previous
    #: owner of a partition it is assigned.
    router_instance_id: str = "0"
    #: Input records per Kafka transaction (getmany max_records).
    batch_max_records: int = 500
    #: How long one poll waits for records (ms).
    poll_timeout_ms: int = 200
    #: Attempts per batch on transient errors before the loop restarts.
    retry_attempts: int = 5
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0
    transaction_timeout_ms: int = 60000
    #: Bound of one transaction of a loop, from the first send to the end of the commit
    #: (or abort), and of starting/stopping a producer. A transaction not done by then is
    #: given up: the loop restarts with new producers (docs/reliability.md B5: a producer
    #: whose aiokafka sender task died never completes a request again). Well below
    #: ``transaction_timeout_ms``, so the broker has not aborted the transaction yet.
    transaction_commit_timeout_s: float = 30.0
    #: A unit (input partition of a poll) with nothing to publish gets no transaction:
    #: its offset is committed with the partition's next transaction, or on its own after
    #: this many seconds (0: every unit commits at once). See loket_router.loop.
    deferred_offsets_max_s: float = 1.0
    #: Producer linger. 0: a unit's outputs are appended as whole record batches
    #: (``send_batch``) before the transaction awaits anything, so lingering batches
    #: nothing more; it only delayed every transaction's produce by this many ms
    #: (docs/benchmarks.md, end to end).
    producer_linger_ms: int = 0
    #: Fetch batching of the re-route and consent loops (not on the question's path: a
    #: re-route or an erasure request 50 ms later changes nothing for anyone): the broker
    #: answers their fetches once this many bytes are there or after the wait, so at
    #: moderate load they wake up and commit less often (fewer units, fewer transactions;
    #: docs/benchmarks.md, 2026-12-04). The question loop fetches without waiting.
    side_loops_fetch_min_bytes: int = Field(default=65536, ge=1)
    side_loops_fetch_max_wait_ms: int = Field(default=50, ge=0)
    #: Retry delay (ms) of a transaction's first ``AddPartitionsToTxn`` refused with
    #: ``CONCURRENT_TRANSACTIONS`` because the same producer's previous commit is still
    #: writing its markers (aiokafka's fixed default: 20 ms). Process-wide, see
    #: ``loket_router.loop.set_concurrent_transactions_backoff``.
    concurrent_transactions_backoff_ms: float = 2.0
    #: Retry delay (ms) of the loops' transactional producers after a retriable error
    #: (aiokafka's ``retry_backoff_ms``, default 100). The usual ones are short waits of
    #: the broker: ``CONCURRENT_TRANSACTIONS`` on a transaction's ``AddOffsetsToTxn``
    #: while the producer's previous commit still writes its markers, and a produce whose
    #: KIP-890 verification met the coordinator mid-write (NOT_ENOUGH_REPLICAS); 100 ms
    #: for a wait of a few ms was the router's latency tail (docs/benchmarks.md,
    #: 2026-12-04). Also paces metadata and coordinator retries while the broker is away.
    producer_retry_backoff_ms: int = Field(default=10, ge=1)
    #: Transactions of one loop (over all its input partitions) open at once. The
    #: partitions' units are processed concurrently either way (one pipeline per partition,
    #: see loket_router.loop); 1 keeps their transactions from overlapping, which kept
    #: read_committed consumers (handoff, agencies) waiting (docs/benchmarks.md, 2026-12-04).
    transactions_in_flight: int = Field(default=1, ge=1)
    #: Consumer group session timeout: how long a killed router keeps its partitions.
    consumer_session_timeout_ms: int = 10000
    consumer_heartbeat_interval_ms: int = 3000
    #: Event loop of the process (uvicorn's ``loop``): ``auto`` is uvloop when installed
    #: (it is, in the workspace), else asyncio's. See docs/benchmarks.md, 2026-12-04.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    #: How long the router keeps a case (question, shares, markers) in Redis.
    case_ttl_days: int = 400
    #: Create the Loket topics (with ``topic_prefix``) at start-up when missing.
    create_topics: bool = True
    topic_partitions: int = 3

    def group_id(self, group: str) -> str:
        """Consumer group: the fixed name, prefixed like topics (tests isolate groups too)."""
        return f"{self.topic_prefix}{group}"

    def transactional_id_prefix(self, loop: str) -> str:
        """Transactional ids of a loop: ``<this>-<input partition>``, the same in every
        instance (fencing by partition, see loket_router.loop)."""
        return f"{self.topic_prefix}loket-router-{loop}"

    def client_id(self, loop: str) -> str:
        return f"loket-router-{loop}-{self.router_instance_id}"
