"""Redis state of the router (AOF on the server), all keys under ``<redis_key_prefix>router:``.

Per case (``cid``), every key with the case TTL:

* ``case:{cid}`` hash: ``question`` (the QuestionReceived JSON, needed to re-route),
  ``lead``, ``role|<agency>`` for every agency the case was delivered to,
  ``via|<agency>`` = the re-route action that delivered it (``<cause>:<handoff_id>``),
  and one field
  ``share|<agency>|<consent_id>|<category>`` per consent-based share (a set: writing the
  same share again is a no-op);
* ``withdrawn:{cid}`` hash with one field ``consent_id|category`` (``*`` = the whole
  consent) per recorded withdrawal;
* ``done:{kind}:{id}``: "already done" markers, written only after the Kafka transaction
  that did the work committed (see docs/architecture.md, router section).

Every write here is idempotent (HSET of the same field and value), so a batch that is
aborted and retried writes the same state again.

Each batch operation is *one* Redis command: a small Lua script (``EVALSHA``, loaded on
first use) that reads or writes the keys of every case of the batch. Per-command client
overhead (packing, parsing, one reply per command) was ~30 us per command with a
pipeline of ~6 commands per question; a script per batch removes most of it. The write
script takes the fields of all hashes as one JSON argument (``cjson`` in Redis' Lua): the
client packs every argument in Python (~0.7 us each), so ~12 field/value arguments per
question cost more than encoding them as one JSON text. The scripts touch keys of many
cases, so they need one Redis node (not Redis Cluster), which is what Loket runs (a
Cluster deployment would hash-tag the router prefix or go back to pipelines).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from loket_router.domain import ConsentShare, Withdrawal, merge_withdrawals
from loket_router.errors import RetryableError
from loket_schemas.events import AgencyRole, QuestionReceived
from loket_schemas.vocabulary import AgencyCode, DataCategory

ALL = "*"

#: KEYS: hashes to HGETALL, then markers to test. ARGV[1]: number of hashes.
#: Reply: one flat field/value array per hash, then 0/1 per marker.
_LOAD = """
local n = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  if i <= n then
    out[i] = redis.call('HGETALL', KEYS[i])
  else
    out[i] = redis.call('EXISTS', KEYS[i])
  end
end
return out
"""

#: KEYS: hashes. ARGV[1]: ttl; ARGV[2]: a JSON array with, per key, the array
#: ``[field, value, field, value, ...]`` (strings; never empty).
_WRITE = """
local ttl = ARGV[1]
local fields = cjson.decode(ARGV[2])
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], unpack(fields[i]))
  redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS
"""

#: KEYS: markers. ARGV[1]: ttl.
_MARK = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], '1', 'EX', ARGV[1])
end
return #KEYS
"""


_VALUE: dict[str, str] = {
    member: member.value for enum in (AgencyCode, AgencyRole, DataCategory) for member in enum
}


@dataclass
class CaseState:
    """What the router knows about a case (from Redis)."""

    case_id: str
    question: QuestionReceived | None = None
    lead: AgencyCode | None = None
    roles: dict[AgencyCode, AgencyRole] = field(default_factory=dict)
    #: agency -> the re-route action (``<cause>:<handoff_id>``) that delivered the case to it
    via: dict[AgencyCode, str] = field(default_factory=dict)
    shares: list[ConsentShare] = field(default_factory=list)
    withdrawals: dict[str, Withdrawal] = field(default_factory=dict)
    done: bool = False

    @property
    def known(self) -> bool:
        return self.question is not None


@dataclass
class Writes:
    """State changes of one batch, written in one script call before the transaction commits."""

    questions: list[QuestionReceived] = field(default_factory=list)
    leads: dict[str, AgencyCode] = field(default_factory=dict)
    roles: list[tuple[str, AgencyCode, AgencyRole]] = field(default_factory=list)
    #: (case, agency, re-route action) next to the role the action wrote
    via: list[tuple[str, AgencyCode, str]] = field(default_factory=list)
    shares: list[tuple[str, ConsentShare]] = field(default_factory=list)
    withdrawals: list[tuple[str, Withdrawal]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.questions
            or self.leads
            or self.roles
            or self.via
            or self.shares
            or self.withdrawals
        )


def _s(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _pairs(raw: Any) -> dict[Any, Any]:
    """An HGETALL reply as a dict (a script returns it as a flat field/value array)."""
    if isinstance(raw, dict):
        return raw
    it = iter(raw)
    return dict(zip(it, it, strict=True))


def parse_withdrawals(raw: Any) -> dict[str, Withdrawal]:
    raw = _pairs(raw)
    if not raw:
        return {}
    items: list[Withdrawal] = []
    for key in raw:
        consent_id, _, cat = _s(key).rpartition("|")
        items.append(
            Withdrawal(consent_id, frozenset() if cat == ALL else frozenset({DataCategory(cat)}))
        )
    return merge_withdrawals(items)


def parse_case(state: CaseState, raw: Any) -> None:
    """Fill ``state`` from the ``case:{cid}`` hash."""
    raw = _pairs(raw)
    grouped: dict[tuple[AgencyCode, str], set[DataCategory]] = {}
    for key, value in raw.items():
        name = _s(key)
        if name == "question":
            state.question = QuestionReceived.model_validate_json(value)
        elif name == "lead":
            state.lead = AgencyCode(_s(value))
        elif name.startswith("role|"):
            state.roles[AgencyCode(name[5:])] = AgencyRole(_s(value))
        elif name.startswith("via|"):
            state.via[AgencyCode(name[4:])] = _s(value)
        elif name.startswith("share|"):
            _, agency, consent_id, cat = name.split("|", 3)
            grouped.setdefault((AgencyCode(agency), consent_id), set()).add(DataCategory(cat))
    state.shares = [ConsentShare(a, c, frozenset(cats)) for (a, c), cats in grouped.items()]


class RedisStore:
    """The router's state in Redis. Redis errors surface as :class:`RetryableError`."""

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = f"{prefix}router:"
        self.ttl = ttl_seconds
        self._load = redis.register_script(_LOAD)
        self._write = redis.register_script(_WRITE)
        self._mark = redis.register_script(_MARK)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def done_key(self, kind: str, ident: str) -> str:
        return self.key("done", kind, ident)

    # ----------------------------------------------------------------- reads

    async def load(
        self, case_ids: Sequence[str], *, done_keys: Sequence[str] | None = None, full: bool = True
    ) -> dict[str, CaseState]:
        """Batch-read the state of ``case_ids`` (one round trip).

        ``done_keys`` (same order as ``case_ids``) are the markers to test; ``full=False``
        reads only markers and withdrawals (enough for a first routing).
        """
        ids = list(dict.fromkeys(case_ids))
        markers = list(done_keys) if done_keys is not None else []
        hashes: list[str] = []
        withdrawn = f"{self.prefix}withdrawn:"
        case = f"{self.prefix}case:"
        for cid in ids:
            hashes.append(withdrawn + cid)
            if full:
                hashes.append(case + cid)
        results = await self._run(self._load, hashes + markers, [len(hashes)], "read")
        out: dict[str, CaseState] = {}
        it = iter(results)
        for cid in ids:
            raw = next(it)
            state = CaseState(cid, withdrawals=parse_withdrawals(raw) if raw else {})
            if full:
                parse_case(state, next(it))
            out[cid] = state
        flags = [bool(next(it)) for _ in markers]
        if done_keys is not None:
            for cid, flag in zip(case_ids, flags, strict=True):
                out[cid].done = out[cid].done or flag
        return out

    async def done(self, markers: Sequence[str]) -> list[bool]:
        if not markers:
            return []
        return [bool(x) for x in await self._run(self._load, list(markers), [0], "read")]

    async def withdrawals(self, case_ids: Iterable[str]) -> dict[str, dict[str, Withdrawal]]:
        ids = list(dict.fromkeys(case_ids))
        if not ids:
            return {}
        keys = [self.key("withdrawn", cid) for cid in ids]
        results = await self._run(self._load, keys, [len(keys)], "read")
        return {cid: parse_withdrawals(raw) for cid, raw in zip(ids, results, strict=True)}

    async def _run(self, script: Any, keys: list[str], args: list[Any], what: str) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise RetryableError(f"redis {what} failed: {exc}") from exc

    # ----------------------------------------------------------------- writes

    async def write(self, writes: Writes) -> None:
        """Apply a batch's state changes (idempotent): one HSET and one EXPIRE per key,
        all in one script call."""
        if not writes:
            return
        value = _VALUE
        per_case: dict[str, dict[str, str]] = {}
        for q in writes.questions:
            per_case.setdefault(q.case_id, {})["question"] = q.model_dump_json()
        for cid, lead in writes.leads.items():
            per_case.setdefault(cid, {})["lead"] = value[lead]
        for cid, agency, role in writes.roles:
            per_case.setdefault(cid, {})[f"role|{value[agency]}"] = value[role]
        for cid, agency, action in writes.via:
            per_case.setdefault(cid, {})[f"via|{value[agency]}"] = action
        for cid, share in writes.shares:
            fields = per_case.setdefault(cid, {})
            for cat in share.categories:
                fields[f"share|{value[share.agency]}|{share.consent_id}|{value[cat]}"] = "1"
        per_withdrawal: dict[str, dict[str, str]] = {}
        for cid, w in writes.withdrawals:
            fields = per_withdrawal.setdefault(cid, {})
            for name in [value[c] for c in w.categories] or [ALL]:
                fields[f"{w.consent_id}|{name}"] = "1"
        keys: list[str] = []
        per_key: list[list[str]] = []
        for kind, groups in (("case", per_case), ("withdrawn", per_withdrawal)):
            prefix = f"{self.prefix}{kind}:"
            for cid, mapping in groups.items():
                keys.append(prefix + cid)
                flat: list[str] = []
                for item in mapping.items():
                    flat.extend(item)
                per_key.append(flat)
        data = json.dumps(per_key, ensure_ascii=False, separators=(",", ":"))
        await self._run(self._write, keys, [self.ttl, data], "write")

    async def mark_done(self, markers: Sequence[str]) -> None:
        """Write "done" markers (after the Kafka transaction committed)."""
        if not markers:
            return
        await self._run(self._mark, list(markers), [self.ttl], "write")
