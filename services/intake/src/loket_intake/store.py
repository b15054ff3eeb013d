"""Redis state of the intake service (every key under ``settings.redis_key_prefix``).

============================  ======  ================================================
key                           type    meaning
============================  ======  ================================================
``ref:<reference>``           string  case id; reserved with SET NX (unique references)
``case:<case_id>``            hash    initiative, reference, consent_id, withdrawn_at
``idem:<initiative>:<key>``   string  JSON idempotency record: ``pending`` (the lease of
                                      the request working on the key, short PX TTL) or
                                      ``done`` (the 202 body to replay, 24 h)
``intent:<initiative>:<key>`` string  JSON: body hash, case id, reference, received_at
                                      of the case this key stands for (24 h)
============================  ======  ================================================

A request with an ``Idempotency-Key`` claims it in one Lua script (one round trip):

- ``idem`` exists: the key is taken. ``done`` -> replay the 202; ``pending`` -> another
  request holds the lease (the caller waits briefly, then answers 409).
- else ``intent`` exists: an earlier attempt with this key chose a case and may already
  have published it (a Kafka ack followed by a crash, a lost ack, a 503): take a new lease
  and **resume that case**: same case id, reference and receive time, so the retry
  republishes the identical event (same ``ce_id``), which the router deduplicates by
  case id. A different body hash -> 409 (the key was reused).
- else a fresh claim: reserve the reference, write the case record, the intent and the
  lease, all or nothing.

The lease is the ``pending`` record's own TTL (Redis' clock, so intake processes need no
synchronised clocks): a killed process blocks its keys for one lease at most, after which
a retry resumes its case. ``done`` replaces the lease and removes the intent.

Redis errors propagate as :class:`StoreUnavailable`: intake fails closed (HTTP 503).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from loket_intake.errors import StoreUnavailable

IDEMPOTENCY_TTL_S = 24 * 3600
#: Default lease of a request on its Idempotency-Key (``LOKET_IDEMPOTENCY_LEASE_S``).
LEASE_MS = 15_000
CASE_TTL_S = 400 * 24 * 3600

#: SET ref NX; on success write the case record. KEYS: ref, case. ARGV: case_id, then
#: field/value pairs for the case hash, then the TTL in seconds (last).
_RESERVE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[#ARGV]) then
  local fields = {}
  for i = 2, #ARGV - 1 do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('EXPIRE', KEYS[2], ARGV[#ARGV])
  return 1
end
return 0
"""

#: Claim an Idempotency-Key (see the module docstring).
#: KEYS: idem, intent, ref, case.
#: ARGV: 1 token, 2 body hash, 3 lease ms, 4 intent ttl s, 5 case_id, 6 reference,
#: 7 received_at, 8 case ttl s, 9.. case field/value pairs.
#: Reply: {'taken', record, pttl} | {'conflict', intent} | {'resumed', intent} |
#: {'reference_taken'} | {'claimed'}.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if not (ok and old['state'] == 'failed') then
    return {'taken', cur, redis.call('PTTL', KEYS[1])}
  end
  -- a 'failed' record of an intake version before intents: it holds the same case data
  redis.call('SET', KEYS[2], cjson.encode({hash = old['hash'], case_id = old['case_id'],
    reference = old['reference'], received_at = old['received_at']}), 'EX', ARGV[4])
  redis.call('DEL', KEYS[1])
end
local raw = redis.call('GET', KEYS[2])
if raw then
  local rec = cjson.decode(raw)
  if rec['hash'] ~= ARGV[2] then return {'conflict', raw} end
  local lease = cjson.encode({state = 'pending', hash = ARGV[2], token = ARGV[1],
    case_id = rec['case_id'], reference = rec['reference'], received_at = rec['received_at']})
  redis.call('SET', KEYS[1], lease, 'PX', ARGV[3])
  return {'resumed', raw}
end
if not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', ARGV[8]) then
  return {'reference_taken'}
end
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('EXPIRE', KEYS[4], ARGV[8])
local intent = {hash = ARGV[2], case_id = ARGV[5], reference = ARGV[6], received_at = ARGV[7]}
redis.call('SET', KEYS[2], cjson.encode(intent), 'EX', ARGV[4])
intent['state'] = 'pending'
intent['token'] = ARGV[1]
redis.call('SET', KEYS[1], cjson.encode(intent), 'PX', ARGV[3])
return {'claimed'}
"""

#: Settle a request's lease, only while it still holds it (its token).
#: KEYS: idem, intent. ARGV: token, new value, ttl seconds.
#: ttl 0: release the lease only (the intent stays: a retry resumes the case);
#: else: store the ``done`` record and drop the intent.
_SETTLE = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
if not ok or rec['state'] ~= 'pending' or rec['token'] ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
end
return 1
"""


@dataclass(frozen=True)
class IdempotencyRecord:
    state: Literal["pending", "done"]
    body_hash: str
    token: str = ""
    response: dict[str, Any] | None = None
    case_id: str | None = None
    reference: str | None = None
    received_at: str | None = None

    def dumps(self) -> str:
        return json.dumps(
            {
                "state": self.state,
                "hash": self.body_hash,
                "token": self.token,
                "response": self.response,
                "case_id": self.case_id,
                "reference": self.reference,
                "received_at": self.received_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> IdempotencyRecord:
        data = json.loads(raw)
        return cls(
            state=data["state"],
            body_hash=data["hash"],
            token=data.get("token") or "",
            response=data.get("response"),
            case_id=data.get("case_id"),
            reference=data.get("reference"),
            received_at=data.get("received_at"),
        )


@dataclass(frozen=True)
class CaseIntent:
    """The case an Idempotency-Key stands for, written before anything is published."""

    body_hash: str
    case_id: str
    reference: str
    received_at: str

    @classmethod
    def loads(cls, raw: bytes | str) -> CaseIntent:
        data = json.loads(raw)
        return cls(
            body_hash=data["hash"],
            case_id=data["case_id"],
            reference=data["reference"],
            received_at=data["received_at"],
        )


ClaimOutcome = Literal["claimed", "resumed", "taken", "conflict", "reference_taken"]


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`IntakeStore.claim`.

    - ``claimed``: the key was free; the new case (reference, record, intent) is stored
      and this request holds the lease;
    - ``resumed``: an earlier attempt's case (``intent``) is resumed under a new lease;
    - ``taken``: ``record`` holds the key (``done``, or ``pending`` with ``lease_ms`` left);
    - ``conflict``: ``intent`` was stored for another body;
    - ``reference_taken``: the drawn reference exists; nothing was written (draw again).
    """

    outcome: ClaimOutcome
    record: IdempotencyRecord | None = None
    intent: CaseIntent | None = None
    lease_ms: int = 0

    @property
    def claimed(self) -> bool:
        return self.outcome in ("claimed", "resumed")


@dataclass(frozen=True)
class NewCase:
    """What a fresh claim stores: the case and its reference reservation."""

    case_id: str
    reference: str
    received_at: str
    initiative: str
    consent_id: str | None
    consent_categories: list[str]


@dataclass(frozen=True)
class CaseRecord:
    case_id: str
    initiative: str
    reference: str
    consent_id: str | None
    consent_categories: list[str]
    withdrawn_at: str | None


class IntakeStore(Protocol):
    async def claim(
        self, scope: str, key: str, *, token: str, body_hash: str, case: NewCase
    ) -> Claim: ...
    async def settle_idempotency(
        self, scope: str, key: str, token: str, record: IdempotencyRecord | None
    ) -> bool: ...
    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None: ...
    async def get_intent(self, scope: str, key: str) -> CaseIntent | None: ...
    async def reserve_case(
        self,
        reference: str,
        case_id: str,
        initiative: str,
        consent_id: str | None,
        consent_categories: list[str],
    ) -> bool: ...
    async def release_case(self, reference: str, case_id: str) -> None: ...
    async def get_case(self, case_id: str) -> CaseRecord | None: ...
    async def mark_withdrawn(self, case_id: str, withdrawn_at: str) -> str | None: ...


def _case_fields(
    initiative: str, reference: str, consent_id: str | None, consent_categories: list[str]
) -> list[str]:
    return [
        "initiative",
        initiative,
        "reference",
        reference,
        "consent_id",
        consent_id or "",
        "consent_categories",
        ",".join(consent_categories),
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisIntakeStore:
    """:class:`IntakeStore` on Redis. Every method raises StoreUnavailable on Redis errors.

    ``lease_ms``: how long a request holds an Idempotency-Key before a retry may resume
    its case (longer than the longest publish, see ``IntakeSettings.idempotency_lease_s``).
    """

    def __init__(self, redis: Redis, prefix: str, *, lease_ms: int = LEASE_MS) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = lease_ms
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._claim = redis.register_script(_CLAIM)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def idem_key(self, scope: str, key: str) -> str:
        return self._key("idem", scope, key)

    def intent_key(self, scope: str, key: str) -> str:
        return self._key("intent", scope, key)

    async def claim(
        self, scope: str, key: str, *, token: str, body_hash: str, case: NewCase
    ) -> Claim:
        """Claim ``key`` for this request (one round trip; see the module docstring)."""
        fields = _case_fields(
            case.initiative, case.reference, case.consent_id, case.consent_categories
        )
        try:
            reply = await self._claim(
                keys=[
                    self.idem_key(scope, key),
                    self.intent_key(scope, key),
                    self._key("ref", case.reference),
                    self._key("case", case.case_id),
                ],
                args=[
                    token,
                    body_hash,
                    self.lease_ms,
                    IDEMPOTENCY_TTL_S,
                    case.case_id,
                    case.reference,
                    case.received_at,
                    CASE_TTL_S,
                    *fields,
                ],
            )
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        outcome = _text(reply[0])
        try:
            if outcome == "taken":
                return Claim(
                    "taken", record=IdempotencyRecord.loads(reply[1]), lease_ms=int(reply[2])
                )
            if outcome in ("resumed", "conflict"):
                return Claim(outcome, intent=CaseIntent.loads(reply[1]))  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"unreadable idempotency record: {exc}") from exc
        if outcome in ("claimed", "reference_taken"):
            return Claim(outcome)  # type: ignore[arg-type]
        raise StoreUnavailable(f"unexpected claim reply {outcome!r}")

    async def settle_idempotency(
        self, scope: str, key: str, token: str, record: IdempotencyRecord | None
    ) -> bool:
        """While ``token`` holds the lease: store ``record`` (24 h) and drop the intent, or
        (None) release the lease only, so a retry resumes the case at once.

        False when the lease was no longer ours (expired, resumed by a retry)."""
        try:
            value = record.dumps() if record is not None else ""
            ttl = IDEMPOTENCY_TTL_S if record is not None else 0
            return bool(
                await self._settle(
                    keys=[self.idem_key(scope, key), self.intent_key(scope, key)],
                    args=[token, value, ttl],
                )
            )
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        try:
            raw = await self.redis.get(self.idem_key(scope, key))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return IdempotencyRecord.loads(raw) if raw is not None else None

    async def get_intent(self, scope: str, key: str) -> CaseIntent | None:
        try:
            raw = await self.redis.get(self.intent_key(scope, key))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return CaseIntent.loads(raw) if raw is not None else None

    async def reserve_case(
        self,
        reference: str,
        case_id: str,
        initiative: str,
        consent_id: str | None,
        consent_categories: list[str],
    ) -> bool:
        """Reserve ``reference`` for ``case_id`` (SET NX) and write the case record.

        False when the reference is taken (the caller draws another one).
        """
        fields = _case_fields(initiative, reference, consent_id, consent_categories)
        try:
            result = await self._reserve(
                keys=[self._key("ref", reference), self._key("case", case_id)],
                args=[case_id, *fields, CASE_TTL_S],
            )
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return bool(result)

    async def release_case(self, reference: str, case_id: str) -> None:
        """Undo :meth:`reserve_case` (after Kafka refused the event). Best effort."""
        try:
            await self.redis.delete(self._key("ref", reference), self._key("case", case_id))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get_case(self, case_id: str) -> CaseRecord | None:
        try:
            data = await self.redis.hgetall(self._key("case", case_id))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if not data:
            return None
        d = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in data.items()
        }
        cats = d.get("consent_categories") or ""
        return CaseRecord(
            case_id=case_id,
            initiative=d.get("initiative", ""),
            reference=d.get("reference", ""),
            consent_id=d.get("consent_id") or None,
            consent_categories=[c for c in cats.split(",") if c],
            withdrawn_at=d.get("withdrawn_at") or None,
        )

    async def mark_withdrawn(self, case_id: str, withdrawn_at: str) -> str | None:
        """Set ``withdrawn_at`` once (HSETNX); returns the stored value (the first one wins)."""
        key = self._key("case", case_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "withdrawn_at", withdrawn_at)
                pipe.hget(key, "withdrawn_at")
                _, value = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return value.decode() if isinstance(value, bytes) else value
