"""Traffic for end-to-end tests: front desks posting questions, agencies responding.

* :class:`TrafficDriver` posts realistic questions to intake over HTTP (async httpx) as a
  real client does: every question has its own ``Idempotency-Key``; a 503, 5xx, 409 or a
  connection error is retried with the SAME key and body until a deadline. Every 202 is
  recorded (client token -> case id). The token ``[q:<token>]`` is part of the question
  text, so the invariant checks can tell whether one question became two cases.
* :class:`AgencyResponders` watch ``loket.handoffs.v1`` from its end at ``start()`` and
  answer every ``HandoffOffered`` of a case that entered the system after that (its initial
  ``CaseRouted`` was seen) by a deterministic policy (accept over HTTP or Kafka, decline
  with a suggestion over Kafka, resolve, or leave open), so a run exercises every path.
  Cases of earlier tests on a shared stack are never touched.
* :class:`DeliveryTap` records when each case's first ``CaseDelivered`` became visible
  (read_committed), for end-to-end latency.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loket_schemas.catalog import load_initiatives
from loket_schemas.events import (
    AcceptHandoff,
    AgencyRole,
    CaseDelivered,
    CaseRouted,
    ContactPerson,
    DeclineHandoff,
    HandoffAccepted,
    HandoffOffered,
    ResolveHandoff,
    RouteCause,
)
from loket_schemas.kafka import DecodeError, Envelope, decode, encode
from loket_schemas.topics import HANDOFF_RESPONSES, HANDOFFS, agency_topic
from loket_schemas.vocabulary import AgencyCode

# --------------------------------------------------------------------------- questions

QUESTION_TEXTS: tuple[str, ...] = (
    "Ik heb een studieschuld bij DUO en kan de aflossing niet betalen sinds ik mijn baan "
    "kwijt ben. Ik heb nu een WW-uitkering van het UWV.",
    "Mijn huurtoeslag is stopgezet en ik moet geld terugbetalen aan de Belastingdienst. "
    "Ik weet niet hoe ik de terugvordering kan regelen.",
    "Ik heb een boete van het CJIB gekregen voor een verkeersovertreding maar mijn kenteken "
    "staat sinds maanden niet meer op mijn naam bij de RDW.",
    "Mijn moeder krijgt AOW van de SVB en moet een eigen bijdrage aan het CAK betalen "
    "voor haar zorg. Die rekening klopt niet.",
    "Ik heb mijn baan verloren en vraag een bijstandsuitkering aan bij de gemeente. "
    "Ik heb ook schulden bij de zorgverzekeraar.",
    "Mijn verblijfsvergunning bij de IND moet verlengd worden, maar ik wacht al maanden "
    "en mijn werkgever wil een bewijs.",
    "Ik ben zzp'er en heb een vraag over de inschrijving bij de KVK en subsidie van RVO "
    "voor mijn bedrijf.",
    "De waterschapsbelasting is te hoog en ik kan de aanslag niet betalen. Ik heb al "
    "kwijtschelding gevraagd bij de gemeente.",
    "Ik heb een verklaring omtrent het gedrag (VOG) nodig van Justis voor mijn nieuwe "
    "baan in de zorg.",
    "Mijn zoon studeert en krijgt geen studiefinanciering meer van DUO; ook de "
    "zorgtoeslag is stopgezet.",
    "Er is schade aan mijn huis door werkzaamheden aan de snelweg van Rijkswaterstaat.",
    "Ik weet niet waar ik moet beginnen: schulden, een brief van de Belastingdienst en "
    "mijn uitkering van het UWV is gestopt.",
)

CHANNELS = ("balie", "telefoon", "web", "email", "chat", "brief")
# Valid BSNs (eleven-test) used in test traffic only.
TEST_BSNS = ("111222333", "123456782", "999999990", "111111110", "100000009")


def initiative_ids() -> list[str]:
    return [i.id for i in load_initiatives().initiatives]


def make_question(rng: random.Random, token: str) -> tuple[str, dict[str, Any]]:
    """A realistic question body for ``POST /api/v1/questions`` -> (initiative id, body)."""
    initiative = rng.choice(initiative_ids())
    text = f"{rng.choice(QUESTION_TEXTS)} [q:{token}]"
    body: dict[str, Any] = {
        "channel": rng.choice(CHANNELS),
        "initiative": initiative,
        "text": text,
        "vulnerable": rng.random() < 0.1,
        "urgent": rng.random() < 0.1,
    }
    kind = rng.random()
    if kind < 0.6:
        body["requester"] = {
            "kind": "person",
            "bsn": rng.choice(TEST_BSNS),
            "contact": {"name": "J. de Vries", "phone": "0612345678"},
        }
    elif kind < 0.7:
        body["requester"] = {
            "kind": "business",
            "kvk_number": f"{rng.randrange(10**7, 10**8)}",
            "trade_name": "Bakkerij De Vries",
        }
    consent = rng.random()
    if consent < 0.5:
        body["consent"] = {
            "categories": rng.sample(
                ["identity", "contact", "question_text", "income", "debts", "benefits"],
                k=rng.randint(1, 4),
            ),
            "purpose": "case_handling",
        }
    elif consent < 0.6:
        body["consent"] = {
            "categories": ["identity", "health", "question_text"],
            "explicit": True,
            "recipients": ["gemeente", "cak", "uwv"],
        }
    return initiative, body


#: development key of desk staff (reads a case and its timeline)
DESK_KEY = "dev-desk"


def intake_key(initiative: str) -> str:
    return f"dev-{initiative}"


def agency_key(agency: AgencyCode | str) -> str:
    return f"dev-{AgencyCode(agency).value}"


# --------------------------------------------------------------------------- driver


@dataclass
class Submission:
    token: str
    initiative: str
    body: dict[str, Any]
    idempotency_key: str
    first_sent: float = 0.0
    accepted_at: float | None = None
    case_id: str | None = None
    reference: str | None = None
    status_url: str | None = None
    attempts: int = 0
    statuses: list[int | str] = field(default_factory=list)
    final_error: str | None = None


class TrafficDriver:
    """Posts questions to intake like a real client (same Idempotency-Key on every retry)."""

    def __init__(
        self,
        intake_url: str | Callable[[], str],
        *,
        seed: int = 1,
        retry_deadline_s: float = 180.0,
        request_timeout_s: float = 10.0,
        max_connections: int = 200,
    ) -> None:
        self._url = intake_url
        self.rng = random.Random(seed)
        self.retry_deadline_s = retry_deadline_s
        self.client = httpx.AsyncClient(
            timeout=request_timeout_s,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=100),
        )
        self.submissions: dict[str, Submission] = {}
        self.status_counts: Counter[int | str] = Counter()
        self.run_id = uuid.uuid4().hex[:6]
        self._n = 0

    @property
    def url(self) -> str:
        return self._url() if callable(self._url) else self._url

    async def aclose(self) -> None:
        await self.client.aclose()

    @property
    def accepted(self) -> dict[str, str]:
        """token -> case id of every question intake answered 202 for."""
        return {t: s.case_id for t, s in self.submissions.items() if s.case_id is not None}

    @property
    def failed(self) -> list[Submission]:
        return [s for s in self.submissions.values() if s.case_id is None]

    def new_submission(self, body: dict[str, Any] | None = None) -> Submission:
        self._n += 1
        token = f"{self.run_id}-{self._n:06d}"
        initiative, generated = make_question(self.rng, token)
        if body is not None:
            initiative = body.get("initiative", initiative)
        sub = Submission(
            token=token,
            initiative=initiative,
            body=body or generated,
            idempotency_key=str(uuid.uuid4()),
        )
        self.submissions[token] = sub
        return sub

    async def submit(self, sub: Submission) -> Submission:
        """POST until 202 (or a non-retryable answer, or the retry deadline)."""
        sub.first_sent = sub.first_sent or time.monotonic()
        deadline = sub.first_sent + self.retry_deadline_s
        delay = 0.1
        while True:
            sub.attempts += 1
            status: int | str
            try:
                r = await self.client.post(
                    f"{self.url}/api/v1/questions",
                    json=sub.body,
                    headers={
                        "X-API-Key": intake_key(sub.initiative),
                        "Idempotency-Key": sub.idempotency_key,
                    },
                )
                status = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
                r = None
            sub.statuses.append(status)
            self.status_counts[status] += 1
            if status in (200, 201, 202) and r is not None:
                data = r.json()
                sub.case_id = data["case_id"]
                sub.reference = data.get("reference")
                sub.status_url = data.get("status_url")
                sub.accepted_at = time.monotonic()
                return sub
            retryable = isinstance(status, str) or status in (409, 425, 429) or status >= 500
            if not retryable:
                sub.final_error = f"{status}: {r.text[:300] if r is not None else ''}"
                return sub
            if time.monotonic() + delay > deadline:
                sub.final_error = f"gave up after {sub.attempts} attempts, last {status}"
                return sub
            await asyncio.sleep(delay)  # client back-off before retrying with the same key
            delay = min(delay * 2, 2.0)

    async def run(
        self, n: int, *, rate: float | None = None, concurrency: int = 64
    ) -> list[Submission]:
        """Submit ``n`` new questions, at ``rate`` per second (None: as fast as allowed)."""
        sem = asyncio.Semaphore(concurrency)
        subs = [self.new_submission() for _ in range(n)]
        start = time.monotonic()

        async def one(i: int, sub: Submission) -> None:
            if rate:
                wait = start + i / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # open-loop pacing at a fixed rate
            async with sem:
                await self.submit(sub)

        await asyncio.gather(*(one(i, s) for i, s in enumerate(subs)))
        return subs


# --------------------------------------------------------------------------- responders


def bucket(case_id: str, n: int = 10) -> int:
    return int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) % n


SUGGESTIONS: tuple[AgencyCode, ...] = (
    AgencyCode.GEMEENTE,
    AgencyCode.UWV,
    AgencyCode.SVB,
    AgencyCode.JURIDISCH_LOKET,
)


def policy(
    offer: HandoffOffered, declined_so_far: int, case_agencies: frozenset[AgencyCode]
) -> tuple[str, AgencyCode | None]:
    """What an agency does with an offer. Deterministic per case:

    - buckets 0-3: accept (HTTP for even buckets, Kafka for odd); buckets 0-1 also resolve;
    - bucket 4: the lead declines its first offer (Kafka) suggesting another agency;
      whoever gets it next accepts over HTTP;
    - bucket 5: every non-maatwerkloket offer is declined (2 declines -> escalation);
    - bucket 6: the lead declines suggesting an agency already on the case (the router must
      send it to maatwerkloket instead of offering it twice);
    - buckets 7-9: left open (SLA timers keep running; used for the Redis-wipe check).
    maatwerkloket (the escalation point) always accepts over HTTP.
    """
    b = bucket(offer.case_id)
    if offer.agency == AgencyCode.MAATWERKLOKET:
        return ("accept_http", None)
    if b <= 3:
        return ("accept_http" if b % 2 == 0 else "accept_kafka", None)
    if b == 4:
        if declined_so_far == 0 and offer.role == AgencyRole.LEAD:
            return ("decline", _suggest(offer.agency))
        return ("accept_http", None)
    if b == 5:
        return ("decline", _suggest(offer.agency))
    if b == 6:
        if declined_so_far == 0 and offer.role == AgencyRole.LEAD:
            others = sorted(a for a in case_agencies if a != offer.agency)
            return ("decline", others[0] if others else _suggest(offer.agency))
        return ("accept_kafka", None)
    return ("ignore", None)


def _suggest(agency: AgencyCode) -> AgencyCode:
    for s in SUGGESTIONS:
        if s != agency:
            return s
    return AgencyCode.GEMEENTE


class AgencyResponders:
    """Answers every HandoffOffered on ``loket.handoffs.v1`` according to :func:`policy`.

    Only cases whose initial ``CaseRouted`` appeared after :meth:`start` are answered: the
    consumer starts at the end of the topic, and a module-shared stack holds the handoffs
    of earlier tests (already accepted, declined or resolved by those tests). Handoff
    publishes a case's offers after its ``CaseRouted`` in the same partition (key = case
    id), so the routing is always seen before the offers.

    Every accept carries a contact name unique to this responder, so a retried accept
    whose first attempt took effect although its answer was lost (409 once the case moved
    on, e.g. our own resolve) is recognised from the case timeline and not counted as an
    error; any other 409 is.
    """

    def __init__(
        self,
        bootstrap: str,
        handoff_url: str | Callable[[], str],
        *,
        prefix: str = "",
        retry_deadline_s: float = 180.0,
        policy_fn: Callable[
            [HandoffOffered, int, frozenset[AgencyCode]], tuple[str, AgencyCode | None]
        ] = policy,
    ) -> None:
        self.bootstrap = bootstrap
        self._url = handoff_url
        self.prefix = prefix
        self.retry_deadline_s = retry_deadline_s
        self.policy = policy_fn
        self.client = httpx.AsyncClient(timeout=10.0)
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.seen_offers: set[str] = set()
        self.declines: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.http_status: Counter[int | str] = Counter()
        self.errors: list[str] = []
        self.case_agencies: dict[str, set[AgencyCode]] = {}
        #: cases whose initial CaseRouted this responder saw: the only ones it answers
        self.own_cases: set[str] = set()
        self.foreign_skipped = 0
        #: accepts retried after a lost answer, proven ours on the case timeline
        self.confirmed_after_retry: list[str] = []
        self.run_id = uuid.uuid4().hex[:8]

    @property
    def url(self) -> str:
        return self._url() if callable(self._url) else self._url

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await self.consumer.start()
        topic = self.prefix + HANDOFFS
        partitions = await self.producer.partitions_for(topic)  # waits for the metadata
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        # positioned at the current end (read_committed: the last stable offset, so a
        # transaction still open now is read once committed) before any traffic starts
        for tp, end in (await self.consumer.end_offsets(tps)).items():
            self.consumer.seek(tp, end)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for t in list(self._pending):
            t.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.client.aclose()

    async def _loop(self) -> None:
        assert self.consumer is not None
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=500)
            except Exception as exc:  # broker restarts: keep trying
                self.errors.append(f"consume: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for r in records:
                    try:
                        env: Envelope[Any] = decode(r.value, r.headers)
                    except DecodeError:
                        continue
                    ev = env.data
                    if isinstance(ev, CaseRouted):
                        if ev.cause == RouteCause.INITIAL:
                            self.own_cases.add(ev.case_id)
                        known = self.case_agencies.setdefault(ev.case_id, set())
                        known.update(a.agency for a in ev.assignments)
                        continue
                    if getattr(ev, "case_id", None) not in self.own_cases:
                        self.foreign_skipped += 1  # a case of an earlier test
                        continue
                    if isinstance(ev, HandoffOffered) and ev.handoff_id not in self.seen_offers:
                        self.seen_offers.add(ev.handoff_id)
                        action, suggestion = self.policy(
                            ev,
                            self.declines[ev.case_id],
                            frozenset(self.case_agencies.get(ev.case_id, ())),
                        )
                        if action == "decline":
                            self.declines[ev.case_id] += 1
                        self._spawn(self._respond(ev, action, suggestion))
                    elif isinstance(ev, HandoffAccepted):
                        b = bucket(ev.case_id)
                        if b <= 1 and ev.agency != AgencyCode.MAATWERKLOKET:
                            self._spawn(self._resolve(ev))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def idle(self, within: float = 60.0) -> None:
        """Wait until no response is in flight."""
        deadline = time.monotonic() + within
        while self._pending and time.monotonic() < deadline:
            await asyncio.wait(set(self._pending), timeout=1.0)

    async def _send_kafka(self, command: Any) -> None:
        assert self.producer is not None
        rec = encode(command, source=f"urn:nld:loket:agency:{command.agency.value}")
        deadline = time.monotonic() + self.retry_deadline_s
        while True:
            try:
                await self.producer.send_and_wait(
                    self.prefix + HANDOFF_RESPONSES,
                    rec.value,
                    key=rec.key,
                    headers=list(rec.headers),
                )
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.errors.append(f"kafka send {type(exc).__name__}: {exc}")
                    return
                await asyncio.sleep(0.5)

    async def _post(
        self,
        path: str,
        agency: AgencyCode,
        body: dict[str, Any],
        *,
        took_effect: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """POST until 200; retry 404 (offer not yet in the projection), 5xx and transport
        errors. After such a retry, a 409 counts as success only if ``took_effect()``
        proves that an earlier attempt of ours went through (its answer was lost)."""
        deadline = time.monotonic() + self.retry_deadline_s
        delay = 0.1
        maybe_applied = False  # an earlier attempt may have been applied, answer lost
        while True:
            status: int | str
            try:
                r = await self.client.post(
                    f"{self.url}{path}", json=body, headers={"X-API-Key": agency_key(agency)}
                )
                status = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
                r = None
            self.http_status[status] += 1
            if status == 200:
                return
            if status == 409 and maybe_applied and took_effect is not None:
                if await took_effect():
                    self.confirmed_after_retry.append(path)
                    return
            retryable = isinstance(status, str) or status >= 500 or status == 404
            if not retryable or time.monotonic() > deadline:
                self.errors.append(f"POST {path} -> {status} {r.text[:200] if r else ''}")
                return
            maybe_applied = maybe_applied or status != 404
            await asyncio.sleep(delay)  # retry after a fault (503 / connection refused)
            delay = min(delay * 2, 2.0)

    async def _accepted_by_us(self, case_id: str, handoff_id: str, contact: str) -> bool:
        """True if the case timeline records ``handoff_id`` accepted by our ``contact``."""
        deadline = time.monotonic() + 30
        while True:
            try:
                r = await self.client.get(
                    f"{self.url}/api/v1/cases/{case_id}", headers={"X-API-Key": DESK_KEY}
                )
                if r.status_code == 200:
                    return any(
                        item["kind"] == "accepted"
                        and item.get("handoff_id") == handoff_id
                        and item.get("detail", {}).get("contact") == contact
                        for item in r.json()["timeline"]
                    )
                if r.status_code < 500:
                    return False
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)  # handoff restarting or rebuilding (503)

    def contact_for(self, agency: AgencyCode) -> ContactPerson:
        """The named person of ``agency`` at this responder (unique to this instance)."""
        return ContactPerson(
            name=f"Medewerker {agency.value} {self.run_id}", email="medewerker@example.nl"
        )

    async def _respond(
        self, ev: HandoffOffered, action: str, suggestion: AgencyCode | None
    ) -> None:
        self.actions[action] += 1
        contact = self.contact_for(ev.agency)
        if action == "accept_http":
            await self._post(
                f"/api/v1/handoffs/{ev.handoff_id}/accept",
                ev.agency,
                {"contact": contact.model_dump(exclude_none=True)},
                took_effect=lambda: self._accepted_by_us(ev.case_id, ev.handoff_id, contact.name),
            )
        elif action == "accept_kafka":
            await self._send_kafka(
                AcceptHandoff(
                    case_id=ev.case_id,
                    handoff_id=ev.handoff_id,
                    agency=ev.agency,
                    contact=contact,
                    expected_by=datetime.now(UTC) + timedelta(days=14),
                )
            )
        elif action == "decline":
            assert suggestion is not None
            await self._send_kafka(
                DeclineHandoff(
                    case_id=ev.case_id,
                    handoff_id=ev.handoff_id,
                    agency=ev.agency,
                    reason="Dit valt niet onder onze taak; de vraag hoort elders.",
                    suggested_agency=suggestion,
                )
            )

    async def _resolve(self, ev: HandoffAccepted) -> None:
        self.actions["resolve"] += 1
        if bucket(ev.case_id) == 0:
            await self._post(
                f"/api/v1/handoffs/{ev.handoff_id}/resolve",
                ev.agency,
                {"summary": "Opgelost: betalingsregeling getroffen."},
            )
        else:
            await self._send_kafka(
                ResolveHandoff(
                    case_id=ev.case_id,
                    handoff_id=ev.handoff_id,
                    agency=ev.agency,
                    summary="Opgelost via het eigen systeem.",
                )
            )


# --------------------------------------------------------------------------- latency tap


class DeliveryTap:
    """First time (monotonic) a CaseDelivered of each case was visible, read_committed."""

    def __init__(self, bootstrap: str, prefix: str = "") -> None:
        self.bootstrap = bootstrap
        self.topics = [prefix + agency_topic(c) for c in AgencyCode]
        self.first_seen: dict[str, float] = {}
        self.count = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=5,
        )
        await self._consumer.start()
        # make sure partitions are assigned and positioned before traffic starts
        await self._consumer.getmany(timeout_ms=100)
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                for r in records:
                    self.count += 1
                    case_id = r.key.decode() if r.key else ""
                    if case_id and case_id not in self.first_seen:
                        try:
                            env = decode(r.value, r.headers, expect=(CaseDelivered,))
                        except DecodeError:
                            continue
                        self.first_seen[env.data.case_id] = now

    async def wait_for(self, case_ids: set[str], within: float) -> set[str]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            missing = case_ids - self.first_seen.keys()
            if not missing:
                return set()
            await asyncio.sleep(0.1)  # the tap fills first_seen from its own task
        return case_ids - self.first_seen.keys()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]
