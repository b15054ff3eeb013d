"""Redis state of the intake service (every key under ``settings.redis_key_prefix``).

==========================  ======  ==================================================
key                         type    meaning
==========================  ======  ==================================================
``ref:<reference>``         string  case id; reserved with SET NX (unique references)
``case:<case_id>``          hash    initiative, reference, consent_id, withdrawn_at
``idem:<initiative>:<key>`` string  JSON idempotency record, 24 h TTL
==========================  ======  ==================================================

Idempotency record states: ``pending`` (a request with this key is in flight; short TTL so
a crashed process cannot block the key for long), ``done`` (the 202 body to replay) and
``failed`` (Kafka did not acknowledge; the record keeps the case id and reference so a
retry republishes *the same* event: if the lost acknowledgement hid a successful write,
the router sees the same case id twice and routes it once).

Redis errors propagate as :class:`StoreUnavailable`: intake fails closed (HTTP 503).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from loket_intake.errors import StoreUnavailable

IDEMPOTENCY_TTL_S = 24 * 3600
PENDING_TTL_MS = 30_000
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

#: The common first step of a request with an Idempotency-Key, in one round trip:
#: SET idem NX (pending); if taken, return the existing record and touch nothing else;
#: else reserve the reference (SET NX) and write the case record.
#: KEYS: idem, ref, case. ARGV: pending json, pending ttl ms, case_id, case ttl s, fields...
#: Returns {1, reserved(0/1)} when claimed, {0, existing} when not.
_CLAIM_AND_RESERVE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('GET', KEYS[1]) or ''}
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) then
  local fields = {}
  for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(fields))
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  return {1, 1}
end
return {1, 0}
"""

#: Replace the record only when it still is the pending marker of this request.
#: KEYS: idem. ARGV: expected pending token, new value, ttl seconds (0 = delete).
_SETTLE = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
if not ok or rec['state'] ~= 'pending' or rec['token'] ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 1
"""


@dataclass(frozen=True)
class IdempotencyRecord:
    state: Literal["pending", "done", "failed"]
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
class Claim:
    claimed: bool
    record: IdempotencyRecord | None


@dataclass(frozen=True)
class CaseRecord:
    case_id: str
    initiative: str
    reference: str
    consent_id: str | None
    consent_categories: list[str]
    withdrawn_at: str | None


class IntakeStore(Protocol):
    async def claim_idempotency(self, scope: str, key: str, record: IdempotencyRecord) -> Claim: ...
    async def claim_and_reserve(
        self,
        scope: str,
        key: str,
        record: IdempotencyRecord,
        reference: str,
        case_id: str,
        initiative: str,
        consent_id: str | None,
        consent_categories: list[str],
    ) -> tuple[Claim, bool]: ...
    async def settle_idempotency(
        self, scope: str, key: str, token: str, record: IdempotencyRecord | None
    ) -> bool: ...
    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None: ...
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


class RedisIntakeStore:
    """:class:`IntakeStore` on Redis. Every method raises StoreUnavailable on Redis errors."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._claim_and_reserve = redis.register_script(_CLAIM_AND_RESERVE)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def idem_key(self, scope: str, key: str) -> str:
        return self._key("idem", scope, key)

    async def claim_idempotency(self, scope: str, key: str, record: IdempotencyRecord) -> Claim:
        """Store ``record`` (pending, short TTL) when the key is free.

        - key free: ``Claim(True, None)``;
        - a ``failed`` record with the same body hash: taken over atomically,
          ``Claim(True, failed_record)`` (reuse its case id and reference);
        - anything else: ``Claim(False, existing_record)``.
        """
        k = self.idem_key(scope, key)
        try:
            for _ in range(3):
                if await self.redis.set(k, record.dumps(), nx=True, px=PENDING_TTL_MS):
                    return Claim(True, None)
                raw = await self.redis.get(k)
                if raw is None:  # expired in between: try again
                    continue
                existing = IdempotencyRecord.loads(raw)
                if existing.state != "failed" or existing.body_hash != record.body_hash:
                    return Claim(False, existing)
                takeover = IdempotencyRecord(
                    "pending",
                    record.body_hash,
                    token=record.token,
                    case_id=existing.case_id,
                    reference=existing.reference,
                    received_at=existing.received_at,
                )
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(k)
                    if await pipe.get(k) != raw:  # someone else moved first
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        continue
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(k, takeover.dumps(), px=PENDING_TTL_MS)
                    try:
                        await pipe.execute()
                    except WatchError:
                        continue
                return Claim(True, existing)
            return Claim(False, IdempotencyRecord("pending", ""))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        except (ValueError, KeyError) as exc:
            raise StoreUnavailable(f"unreadable idempotency record: {exc}") from exc

    async def claim_and_reserve(
        self,
        scope: str,
        key: str,
        record: IdempotencyRecord,
        reference: str,
        case_id: str,
        initiative: str,
        consent_id: str | None,
        consent_categories: list[str],
    ) -> tuple[Claim, bool]:
        """:meth:`claim_idempotency` and :meth:`reserve_case` in one round trip.

        Returns ``(claim, reserved)``. When the key is taken nothing else is written and
        the caller falls back to :meth:`claim_idempotency` (which knows takeovers).
        """
        fields = _case_fields(initiative, reference, consent_id, consent_categories)
        try:
            claimed, value = await self._claim_and_reserve(
                keys=[
                    self.idem_key(scope, key),
                    self._key("ref", reference),
                    self._key("case", case_id),
                ],
                args=[record.dumps(), PENDING_TTL_MS, case_id, CASE_TTL_S, *fields],
            )
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if claimed:
            return Claim(True, None), bool(value)
        if not value:  # expired in between
            return Claim(False, IdempotencyRecord("pending", "")), False
        try:
            return Claim(False, IdempotencyRecord.loads(value)), False
        except (ValueError, KeyError) as exc:
            raise StoreUnavailable(f"unreadable idempotency record: {exc}") from exc

    async def settle_idempotency(
        self, scope: str, key: str, token: str, record: IdempotencyRecord | None
    ) -> bool:
        """Replace our pending marker by ``record`` (24 h TTL), or delete it (None)."""
        try:
            value = record.dumps() if record is not None else ""
            ttl = IDEMPOTENCY_TTL_S if record is not None else 0
            return bool(
                await self._settle(keys=[self.idem_key(scope, key)], args=[token, value, ttl])
            )
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        try:
            raw = await self.redis.get(self.idem_key(scope, key))
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return IdempotencyRecord.loads(raw) if raw is not None else None

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
