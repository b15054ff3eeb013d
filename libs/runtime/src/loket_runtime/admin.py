"""Command line: create Loket's Kafka topics.

    python -m loket_runtime.admin ensure-topics [--bootstrap H:P] [--prefix P] [--partitions N]

Creates every fixed topic from DESIGN.md (loket_schemas.topics.ALL_TOPICS) that does not
exist yet. Used by deploy/local/up.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from loket_runtime.kafka import ensure_topics

AGENCY_CODES = (
    "belastingdienst", "toeslagen", "uwv", "svb", "duo", "cjib", "cak", "ind", "rdw",
    "justis", "rvo", "kvk", "gemeente", "waterschap", "rijkswaterstaat",
    "juridisch-loket", "maatwerkloket",
)  # fmt: skip


def all_topics() -> list[str]:
    """Every fixed topic; from loket_schemas when importable (the source of truth)."""
    try:
        from loket_schemas.topics import ALL_TOPICS

        return list(ALL_TOPICS)
    except ImportError:  # schemas package not built yet: same names as DESIGN.md
        fixed = [
            "loket.questions.v1", "loket.handoffs.v1", "loket.handoff-responses.v1",
            "loket.consent.v1", "loket.audit.v1", "loket.dlq.v1",
        ]  # fmt: skip
        return fixed + [f"loket.agency.{c}.v1" for c in AGENCY_CODES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loket_runtime.admin")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ens = sub.add_parser("ensure-topics", help="create all Loket topics (idempotent)")
    ens.add_argument(
        "--bootstrap", default=os.environ.get("LOKET_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    ens.add_argument("--prefix", default=os.environ.get("LOKET_TOPIC_PREFIX", ""))
    ens.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args(argv)
    names = [args.prefix + t for t in all_topics()]
    created = asyncio.run(ensure_topics(args.bootstrap, names, partitions=args.partitions))
    print(f"topics: {len(names)} present, {len(created)} created", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
