"""schemathesis against the handoff API: no 500s, every answer as the OpenAPI documents it.

The service runs as in production, ``python -m loket_handoff`` (uvicorn, lifespan on:
projection rebuild, batch consumer, SLA sweep) on the real shared Kafka and Redis, with a
unique topic and Redis prefix (see api_fuzz_support.py). A few cases are routed onto its
``loket.handoffs.v1`` first, so the fuzzer works on handoffs that exist: requests carry
the development keys (``dev-<agency>`` of the addressee mostly, sometimes another
agency's, ``dev-operator``, ``dev-desk``) and public status requests a valid token
mostly. Every built-in schemathesis check runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import schemathesis
from aiokafka import AIOKafkaProducer
from api_fuzz_support import (
    auth_headers,
    delete_redis_prefix,
    negated,
    pick,
    running_service,
    unique_prefixes,
)
from hypothesis import HealthCheck, settings

from loket_handoff.app import create_app
from loket_handoff.settings import HandoffSettings
from loket_runtime.settings import DEV_PSEUDONYM_KEY
from loket_schemas import topics
from loket_schemas.events import AgencyAssignment, AgencyRole, CaseRouted
from loket_schemas.kafka import encode, service_source
from loket_schemas.pseudonym import pseudonymise
from loket_schemas.vocabulary import AgencyCode, Urgency

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
#: CI runs a fixed sequence of examples (reproducible); LOKET_API_FUZZ_EXPLORE=1 draws new
#: ones on every run (use it when changing an API, and fix what it finds).
EXPLORE = os.environ.get("LOKET_API_FUZZ_EXPLORE") == "1"
AGENCIES = [a.value for a in AgencyCode]
PRINCIPALS = [*AGENCIES, "operator", "desk"]
#: operation -> statuses seen (the last test checks the success paths were reached)
STATUSES: dict[str, set[int]] = {}

#: Commands also answer 422 for rules a JSON Schema cannot state (they depend on the
#: handoff): a decline must suggest another agency than the addressee, a reason or contact
#: name must not be blank, expected_by must not be before the offer. Valid-looking data may
#: meet those; every other answer to valid data must still be 2xx/401/403/404/409.
CONFIG = schemathesis.Config.from_dict(
    {
        "operations": [
            {
                "include-path-regex": "^/api/v1/handoffs/[^/]+/(accept|decline)$",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]
                    }
                },
            }
        ]
    }
)
schema = schemathesis.openapi.from_dict(create_app(HandoffSettings()).openapi(), config=CONFIG)

ROUTES: list[tuple[AgencyCode, tuple[AgencyCode, ...]]] = [
    (AgencyCode.UWV, (AgencyCode.SVB,)),
    (AgencyCode.DUO, (AgencyCode.TOESLAGEN,)),
    (AgencyCode.GEMEENTE, ()),
    (AgencyCode.MAATWERKLOKET, ()),
    (AgencyCode.BELASTINGDIENST, (AgencyCode.CJIB, AgencyCode.CAK)),
]


def status_token(reference: str) -> str:
    return pseudonymise(reference, DEV_PSEUDONYM_KEY, domain="status-token")[4:28]


class Handoff:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.handoffs: dict[str, str] = {}  # handoff id -> agency
        self.cases: list[str] = []
        self.references: list[str] = []


async def _route(bootstrap: str, topic: str, run: str) -> list[CaseRouted]:
    routed = []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n, (lead, supporting) in enumerate(ROUTES):
            assignments = [AgencyAssignment(agency=lead, role=AgencyRole.LEAD, confidence=0.9)]
            assignments += [
                AgencyAssignment(agency=a, role=AgencyRole.SUPPORTING, confidence=0.6)
                for a in supporting
            ]
            event = CaseRouted(
                case_id=f"fuzz-{run}-{n}",
                reference=f"LK-FUZZ-{run[:4].upper()}{n}",
                initiative_id="bibliotheek-rotterdam-centrale",
                lead=lead,
                assignments=assignments,
                urgency=Urgency.URGENT if n % 2 else Urgency.NORMAL,
                routed_at=datetime.now(UTC),
            )
            record = encode(event, source=service_source("router"))
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=list(record.headers)
            )
            routed.append(event)
    finally:
        await producer.stop()
    return routed


def _seed(target: Handoff, bootstrap: str, topic_prefix: str) -> None:
    """Route a few cases and wait (deadline) until handoff offered them all."""
    run = topic_prefix.strip("t.")
    routed = asyncio.run(_route(bootstrap, topics.prefixed(topics.HANDOFFS, topic_prefix), run))
    wanted = sum(len(r.assignments) for r in routed)
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=target.base_url, timeout=10) as client:
        while True:
            found: dict[str, str] = {}
            for r in routed:
                got = client.get(f"/api/v1/cases/{r.case_id}", headers={"X-API-Key": "dev-desk"})
                if got.status_code == 200:
                    found |= {h["handoff_id"]: h["agency"] for h in got.json()["handoffs"]}
            if len(found) >= wanted:
                break
            assert time.monotonic() < deadline, f"only {len(found)}/{wanted} handoffs opened"
            time.sleep(0.1)
    target.handoffs = found
    target.cases = [r.case_id for r in routed]
    target.references = [r.reference for r in routed]


@pytest.fixture(scope="module")
def handoff(kafka_bootstrap: str, redis_url: str) -> Iterator[Handoff]:
    topic_prefix, redis_prefix = unique_prefixes()
    env = {
        "LOKET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "LOKET_REDIS_URL": redis_url,
        "LOKET_TOPIC_PREFIX": topic_prefix,
        "LOKET_REDIS_KEY_PREFIX": redis_prefix,
        "LOKET_HANDOFF_DEV_KEYS": "true",
        "LOKET_HANDOFF_TIMER_INTERVAL_S": "0.2",
    }
    try:
        with running_service("loket_handoff", env) as service:
            target = Handoff(service.base_url)
            _seed(target, kafka_bootstrap, topic_prefix)
            yield target
    finally:
        delete_redis_prefix(redis_url, redis_prefix)


def _fill_in(case: Any, target: Handoff) -> str:
    """Point the case at seeded data (unless that part is negated); return the API key."""
    params = case.path_parameters or {}
    seed = repr(case.path_parameters) + repr(case.query) + repr(case.body)
    principal = PRINCIPALS[pick(seed + "p", len(PRINCIPALS))]
    if not negated(case, "path") and pick(seed + "s", 4):
        if "handoff_id" in params:
            ids = list(target.handoffs)  # seeding order: the same picks in every run
            params["handoff_id"] = ids[pick(seed, len(ids))]
            if pick(seed + "k", 4):  # mostly the addressee
                principal = target.handoffs[params["handoff_id"]]
        if "case_id" in params:
            params["case_id"] = target.cases[pick(seed, len(target.cases))]
            if pick(seed + "k", 4):
                principal = ("desk", "operator")[pick(seed + "d", 2)]
        if "reference" in params:
            params["reference"] = target.references[pick(seed, len(target.references))]
            if not negated(case, "query") and pick(seed + "t", 4):
                case.query = {**(case.query or {}), "token": status_token(params["reference"])}
    return f"dev-{principal}"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_handoff_api_conforms(case: Any, handoff: Handoff) -> None:
    key = _fill_in(case, handoff)
    response = case.call_and_validate(base_url=handoff.base_url, headers=auth_headers(case, key))
    STATUSES.setdefault(case.operation.label, set()).add(response.status_code)


def test_handoff_fuzz_reached_the_authenticated_paths() -> None:
    """The valid keys and ids worked: commands were carried out, views and status read."""
    if not STATUSES:
        pytest.skip("runs after test_handoff_api_conforms (same module)")
    for label in (
        "GET /api/v1/handoffs",
        "GET /api/v1/handoffs/{handoff_id}",
        "GET /api/v1/cases/{case_id}",
        "GET /api/v1/status/{reference}",
        "GET /status/{reference}",
    ):
        assert 200 in STATUSES[label], (label, STATUSES)
    commands = [s for label, s in STATUSES.items() if label.startswith("POST /api/v1/handoffs")]
    assert any(200 in s for s in commands), STATUSES
