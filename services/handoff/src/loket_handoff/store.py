"""The Redis projection of loket.handoffs.v1 and its query interface.

Redis holds nothing that Kafka does not: every key below is derived from the events on
``loket.handoffs.v1`` (the handoff service's own events plus the router's CaseRouted)
and can be rebuilt from them (see :mod:`loket_handoff.rebuild`).

Key layout (``P`` = ``settings.redis_key_prefix``; compact on purpose: 1M open handoffs
must fit in 1.5 GB, see docs/benchmarks.md):

==========================  =========  ====================================================
key                          type       content
==========================  =========  ====================================================
``P h:<handoff_id>``         hash       one handoff (short fields, see ``encode_handoff``)
``P c:<case_id>``            hash       case: owner, reference, initiative, declines, ...
``P tl:<case_id>``           string     case timeline: one compact JSON line per event;
                                        also the applied-event log (idempotence by event id)
``P timers``                 zset       handoff id -> epoch of its next SLA timer
``P inflight``               zset       claimed timers -> lease expiry (crash recovery)
``P oa:<agency>``            zset       open handoffs of an agency -> offered epoch
``P oi:<initiative>``        zset       open handoffs of an initiative -> offered epoch
``P ca:<agency>``            zset       last 1000 closed handoffs of an agency -> closed epoch
``P risk`` / ``P breached``  zset       open handoffs past 75% / past 100% -> due epoch
``P stats``                  hash       counters (offered/accepted/declined/... per agency)
``P lat``                    list       last 10000 accept latencies ``agency:seconds``
``P esc``                    list       last 1000 escalations (JSON)
``P refs``                   hash       case reference -> case id (status page)
``P ready``                  string     marker: the projection is complete (rebuilt)
``P lock:<case_id>``         string     short per-case lock (serialises deciders)
==========================  =========  ====================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import statistics
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from loket_handoff.businesshours import SlaCalendar
from loket_handoff.domain import (
    Case,
    Handoff,
    HandoffState,
    Projection,
    evolve,
    initiative_owner,
)
from loket_handoff.errors import CaseBusy, LeaseExpired
from loket_schemas.events import (
    AgencyRole,
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffEvent,
    HandoffOffered,
    HandoffResolved,
    HandoffResponseRejected,
    HandoffSlaBreached,
    HandoffSlaWarning,
    Message,
    RouteCause,
)
from loket_schemas.vocabulary import AgencyCode, Urgency

CLOSED_KEEP = 1000
#: Seconds of case-lock lease that must be left for a write to the projection.
LEASE_MARGIN_S = 1.0
LATENCY_KEEP = 10_000
ESCALATIONS_KEEP = 1000

_STATE = {
    HandoffState.OFFERED: "o",
    HandoffState.ACCEPTED: "a",
    HandoffState.DECLINED: "d",
    HandoffState.RESOLVED: "r",
    HandoffState.ESCALATED: "e",
}
_STATE_BACK = {v: k for k, v in _STATE.items()}
_ROLE = {AgencyRole.LEAD: "l", AgencyRole.SUPPORTING: "s"}
_ROLE_BACK = {v: k for k, v in _ROLE.items()}
_URG = {Urgency.NORMAL: "n", Urgency.URGENT: "u"}
_URG_BACK = {v: k for k, v in _URG.items()}

#: Timeline kinds (short names in Redis, stable: the operator page reads them).
KIND = {
    CaseRouted: "routed",
    HandoffOffered: "offered",
    HandoffAccepted: "accepted",
    HandoffDeclined: "declined",
    HandoffResolved: "resolved",
    HandoffEscalated: "escalated",
    HandoffSlaWarning: "sla_warning",
    HandoffSlaBreached: "sla_breached",
    HandoffResponseRejected: "rejected",
    ConsentGiven: "consent_given",
    ConsentWithdrawn: "consent_withdrawn",
}

ProjectionEvent = CaseRouted | HandoffEvent


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def ms(moment: datetime) -> int:
    """Epoch milliseconds, truncated exactly like the ``ce_time`` header."""
    return (moment - EPOCH) // MS


def from_ms(value: str | bytes | int) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


US = timedelta(microseconds=1)
#: Epoch values at or above this are microseconds (year 1973 on), below: milliseconds
#: (the first layout; values up to the year 5138).
_US_FROM = 10**14


def stamp(moment: datetime) -> str:
    """A handoff timestamp for its hash: epoch microseconds, lossless, so the projection
    returns exactly the times the events on Kafka carry."""
    return str((moment - EPOCH) // US)


def from_stamp(value: str | bytes | int) -> datetime:
    """Read :func:`stamp` (and the millisecond values of the first layout)."""
    n = int(value)
    if n >= _US_FROM:
        return EPOCH + timedelta(microseconds=n)
    return from_ms(n)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


@lru_cache(maxsize=65_536)
def pack_id(value: str) -> bytes:
    """Compact id for Redis keys and members: a canonical UUID as its 16 raw bytes.

    Other ids stay UTF-8; one that happens to be 16 bytes long gets a ``~`` prefix so
    unpacking is unambiguous.
    """
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = None
    if parsed is not None and str(parsed) == value:
        return parsed.bytes
    raw = value.encode()
    return b"~" + raw if len(raw) == 16 or raw.startswith(b"~") else raw


def unpack_id(raw: Any) -> str:
    data: bytes = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
    if len(data) == 16:
        return str(uuid.UUID(bytes=data))
    return data[1:].decode() if data.startswith(b"~") else data.decode()


def pack_ids(values: Iterable[str]) -> bytes:
    out = bytearray()
    for value in values:
        packed = pack_id(value)
        out.append(len(packed))
        out += packed
    return bytes(out)


def unpack_ids(raw: bytes | None) -> list[str]:
    out: list[str] = []
    i = 0
    data = raw or b""
    while i < len(data):
        n = data[i]
        out.append(unpack_id(data[i + 1 : i + 1 + n]))
        i += 1 + n
    return out


def split_timeline(blob: bytes | str | None) -> list[bytes]:
    """Timeline entries from the timeline string (one compact JSON object per line).

    A string with APPEND is far smaller than a list for a handful of entries per case.
    """
    if not blob:
        return []
    data = blob.encode() if isinstance(blob, str) else blob
    return [line for line in data.split(b"\n") if line]


def short_id(event_id: str) -> str:
    """The part of an event id kept in the timeline for idempotence (64 bits of a UUID)."""
    return event_id.replace("-", "")[:16]


# --------------------------------------------------------------------------- encoding


def encode_handoff(h: Handoff) -> dict[Any, Any]:
    out: dict[Any, Any] = {
        "c": pack_id(h.case_id),
        "a": h.agency.value,
        "r": _ROLE[h.role],
        "s": _STATE[h.state],
        "u": _URG[h.urgency],
        "i": h.initiative_id,
        "f": h.reference,
        "t": stamp(h.offered_at),
        "ad": stamp(h.accept_due_at),
        "aw": stamp(h.accept_warn_at),
        "v": str(h.version),
    }
    optional: dict[str, Any] = {
        "n": h.contact,
        "at": h.accepted_at,
        "eb": h.expected_by,
        "rd": h.resolve_due_at,
        "rw": h.resolve_warn_at,
        "x": h.closed_at,
        "m": h.reason,
        "g": h.suggested_agency.value if h.suggested_agency else None,
    }
    for key, value in optional.items():
        if value is not None:
            out[key] = stamp(value) if isinstance(value, datetime) else str(value)
    if h.warned:
        out["w"] = "1"
    if h.breached:
        out["b"] = "1"
    return out


def decode_handoff(handoff_id: str, raw: dict[Any, Any]) -> Handoff:
    d = {_s(k): v for k, v in raw.items()}
    case_id = unpack_id(d.pop("c"))
    d = {k: _s(v) for k, v in d.items()}

    def opt_dt(key: str) -> datetime | None:
        return from_stamp(d[key]) if key in d else None

    return Handoff(
        handoff_id=handoff_id,
        case_id=case_id,
        agency=AgencyCode(d["a"]),
        role=_ROLE_BACK[d["r"]],
        state=_STATE_BACK[d["s"]],
        urgency=_URG_BACK[d["u"]],
        initiative_id=d["i"],
        reference=d.get("f", ""),
        offered_at=from_stamp(d["t"]),
        accept_due_at=from_stamp(d["ad"]),
        accept_warn_at=from_stamp(d["aw"]),
        version=int(d["v"]),
        contact=d.get("n"),
        accepted_at=opt_dt("at"),
        expected_by=opt_dt("eb"),
        resolve_due_at=opt_dt("rd"),
        resolve_warn_at=opt_dt("rw"),
        warned=d.get("w") == "1",
        breached=d.get("b") == "1",
        closed_at=opt_dt("x"),
        reason=d.get("m"),
        suggested_agency=AgencyCode(d["g"]) if "g" in d else None,
    )


def encode_case(c: Case, handoff_ids: Iterable[str]) -> dict[Any, Any]:
    out: dict[Any, Any] = {
        "r": c.reference,
        "i": c.initiative_id,
        "l": c.lead.value,
        "u": _URG[c.urgency],
        "rc": str(c.route_count),
        "h": pack_ids(handoff_ids),
    }
    if c.owner != initiative_owner(c.initiative_id):
        out["o"] = c.owner
    if c.declined_by:
        out["db"] = ",".join(a.value for a in c.declined_by)
    if c.decline_count:
        out["dc"] = str(c.decline_count)
    if c.escalations:
        out["e"] = str(c.escalations)
    return out


def decode_case(case_id: str, raw: dict[Any, Any]) -> tuple[Case, list[str]]:
    d = {_s(k): v for k, v in raw.items()}
    handoff_ids = unpack_ids(d.pop("h", None))
    d = {k: _s(v) for k, v in d.items()}
    case = Case(
        case_id=case_id,
        reference=d["r"],
        initiative_id=d["i"],
        owner=d.get("o") or initiative_owner(d["i"]),
        lead=AgencyCode(d["l"]),
        urgency=_URG_BACK[d["u"]],
        declined_by=tuple(AgencyCode(a) for a in d.get("db", "").split(",") if a),
        decline_count=int(d.get("dc", 0)),
        route_count=int(d.get("rc", 0)),
        escalations=int(d.get("e", 0)),
    )
    return case, handoff_ids


@dataclass(frozen=True)
class TimelineEntry:
    """One event on a case timeline (for desk staff; the status page maps kinds to Dutch)."""

    event_id: str
    kind: str
    at: datetime
    agency: str | None = None
    handoff_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self, handoff_index: dict[str, int] | None = None) -> str:
        """Compact JSON; the handoff is stored as its index in the case's handoff list."""
        body: dict[str, Any] = {"i": short_id(self.event_id), "k": self.kind, "t": ms(self.at)}
        if self.agency:
            body["a"] = self.agency
        if self.handoff_id:
            index = (handoff_index or {}).get(self.handoff_id)
            body["h"] = index if index is not None else self.handoff_id
        if self.detail:
            body["d"] = self.detail
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes, handoff_ids: list[str] | None = None) -> TimelineEntry:
        body = json.loads(raw)
        ref = body.get("h")
        if isinstance(ref, int):
            ref = handoff_ids[ref] if handoff_ids and 0 <= ref < len(handoff_ids) else None
        return cls(
            event_id=body["i"],
            kind=body["k"],
            at=from_ms(body["t"]),
            agency=body.get("a"),
            handoff_id=ref,
            detail=body.get("d", {}),
        )


def timeline_entry(event: Message, event_id: str, at: datetime, route_seq: int | None = None
                   ) -> TimelineEntry:  # fmt: skip
    """The timeline entry of an event: what desk staff need, no question text, no BSN."""
    kind = KIND.get(type(event), type(event).__name__)
    agency = getattr(event, "agency", None)
    detail: dict[str, Any] = {}
    if isinstance(event, CaseRouted):
        # compact: the lead is the entry's agency; cause and agencies only when not obvious
        agency = event.lead
        detail = {"seq": route_seq}
        if event.cause is not RouteCause.INITIAL:
            detail["cause"] = event.cause.value
        agencies = [a.agency.value for a in event.assignments]
        if agencies != [event.lead.value]:
            detail["agencies"] = agencies
    elif isinstance(event, HandoffOffered):
        if event.role is not AgencyRole.LEAD:
            detail = {"role": event.role.value}
    elif isinstance(event, HandoffAccepted):
        detail = {"contact": event.contact.name}
        if event.expected_by:
            detail["expected_by"] = ms(event.expected_by)
    elif isinstance(event, HandoffDeclined):
        detail = {
            "reason": event.reason,
            "suggested": event.suggested_agency.value,
            "count": event.decline_count,
        }
    elif isinstance(event, HandoffEscalated):
        detail = {"reason": event.reason.value, "to": event.escalate_to.value}
        if event.note:
            detail["note"] = event.note
    elif isinstance(event, HandoffResolved):
        detail = {"summary": event.summary} if event.summary else {}
    elif isinstance(event, HandoffSlaWarning | HandoffSlaBreached):
        detail = {"sla": event.sla.value, "due": ms(event.due_at)}
    elif isinstance(event, HandoffResponseRejected):
        detail = {"reason": event.reason}
    elif isinstance(event, ConsentWithdrawn):
        detail = {"consent_id": event.consent_id, "categories": [c.value for c in event.categories]}
    elif isinstance(event, ConsentGiven):
        detail = {
            "consent_id": event.consent.consent_id,
            "categories": [c.value for c in event.consent.categories],
        }
    return TimelineEntry(
        event_id=event_id,
        kind=kind,
        at=at,
        agency=agency.value if isinstance(agency, AgencyCode) else None,
        handoff_id=getattr(event, "handoff_id", None),
        detail=detail,
    )


# --------------------------------------------------------------------------- loaded case


@dataclass
class LoadedCase:
    """A case as read from Redis under its lock: projection + applied event ids."""

    projection: Projection
    applied: set[str]
    route_seqs: dict[str, int]
    """CaseRouted event short id -> its route sequence number."""
    lease_until: float = float("inf")
    """Event-loop time at which the case lock may expire (inf: no lock taken here). A
    publish is bounded by it (see :mod:`loket_handoff.handlers`)."""
    lock_key: str = ""
    token: str = ""
    """The case lock held for this load ("": none). :meth:`HandoffStore.apply` writes
    only while Redis still holds this token under ``lock_key`` (checked in the same
    script as the writes): after the lock expired another session may own the case, and
    a write from this stale load would undo its changes."""
    release_on_write: bool = False
    """The next write also releases the case lock (after it, this load may not be
    written again)."""
    released: bool = False
    staged: Writes | None = None
    """Set for a case of a batch session (:meth:`HandoffStore.lock_load_many`):
    :meth:`HandoffStore.apply` updates the loaded case in memory and collects its writes
    here; :meth:`HandoffStore.write_many` runs them (fenced by the lock token) and
    releases the lock, for every case of the batch in one round trip."""
    after_write: list[Callable[[bool], None]] = field(default_factory=list)
    """Called with the outcome of the staged writes (True: written) once
    :meth:`HandoffStore.write_many` ran (or failed); only for staged cases."""

    def lease_left(self) -> float:
        return self.lease_until - asyncio.get_running_loop().time()

    @property
    def case(self) -> Case | None:
        return self.projection.case


@dataclass(frozen=True)
class Applied:
    """What applying a batch changed (for metrics and the caller)."""

    new_events: list[tuple[str, Message]]
    route_seq: int | None = None


_HELD: ContextVar[frozenset[str]] = ContextVar("handoff_case_locks_held", default=frozenset())


WRITE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local i = 3
local n = #ARGV
while i <= n do
  local c = tonumber(ARGV[i + 2])
  redis.call(ARGV[i], KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + c))
  i = i + 3 + c
end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
end
return 1
"""
"""Run the writes collected by :class:`Writes` if the case lock (KEYS[1]) still holds
the token ARGV[1] ('' : no lock to check); 0 when it does not (nothing written). With
ARGV[2] = '1' the lock is released after the writes (the session's last write: saves
the separate release round trip)."""


WRITE_MANY = """
local out = {}
local i = 2
for c = 1, tonumber(ARGV[1]) do
  local base = tonumber(ARGV[i])
  local lock = KEYS[base + 1]
  local stop = i + 3 + tonumber(ARGV[i + 2])
  if redis.call('GET', lock) == ARGV[i + 1] then
    i = i + 3
    while i < stop do
      local n = tonumber(ARGV[i + 2])
      redis.call(ARGV[i], KEYS[base + tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + n))
      i = i + 3 + n
    end
    redis.call('DEL', lock)
    out[c] = 1
  else
    out[c] = 0
  end
  i = stop
end
return out
"""
"""The staged writes of several cases (a batch session) in one call. ARGV[1] = number
of cases; then per case: its KEYS offset (its lock is KEYS[offset + 1], its other keys
follow, numbered as in :class:`Writes`), its lock token, the number of ARGV items of its
commands, the commands. A case's commands run, and its lock is released, only while its
lock still holds the token (the B4 fencing, per case); returns 1/0 per case."""


class Writes:
    """Projection writes collected for ONE :data:`WRITE` script call.

    The subset of the pipeline interface :meth:`HandoffStore.apply` uses. ARGV per
    command: name, index of its key in KEYS, number of arguments, the arguments; KEYS[1]
    is the case lock. One command with every argument instead of a MULTI/EXEC pipeline
    of ~15 commands: one request to pack and one reply to parse (the pipeline cost more
    client CPU than the rest of a routing, docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self.keys: list[str | bytes] = []
        self.args: list[Any] = []
        self._index: dict[str | bytes, int] = {}

    def _op(self, command: str, key: str | bytes, values: Sequence[Any]) -> None:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys) + 1  # KEYS[1] is the lock
        self.args += (command, index, len(values), *values)

    def hset(self, key: str | bytes, field: Any = None, value: Any = None, *,
             mapping: dict[Any, Any] | None = None) -> None:  # fmt: skip
        values: list[Any] = [field, value] if field is not None else []
        for k, v in (mapping or {}).items():
            values += (k, v)
        self._op("HSET", key, values)

    def hdel(self, key: str | bytes, *fields: Any) -> None:
        self._op("HDEL", key, fields)

    def hincrby(self, key: str | bytes, field: Any, amount: int) -> None:
        self._op("HINCRBY", key, (field, amount))

    def zadd(self, key: str | bytes, mapping: dict[Any, float]) -> None:
        values: list[Any] = []
        for member, score in mapping.items():
            values += (repr(float(score)), member)
        self._op("ZADD", key, values)

    def zrem(self, key: str | bytes, *members: Any) -> None:
        self._op("ZREM", key, members)

    def zremrangebyrank(self, key: str | bytes, start: int, stop: int) -> None:
        self._op("ZREMRANGEBYRANK", key, (start, stop))

    def append(self, key: str | bytes, value: Any) -> None:
        self._op("APPEND", key, (value,))

    def lpush(self, key: str | bytes, *values: Any) -> None:
        self._op("LPUSH", key, values)

    def ltrim(self, key: str | bytes, start: int, stop: int) -> None:
        self._op("LTRIM", key, (start, stop))


class CaseLock:
    """A short Redis lock per case (SET NX PX + token; released by compare-and-delete).

    Re-entrant within one asyncio context: a handler that already holds the case lock
    (e.g. an in-memory test broker delivering our own publish synchronously) re-enters.
    """

    _RELEASE = (
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
        "else return 0 end"
    )

    def __init__(self, redis: Redis, key: str, ttl_ms: int, wait_s: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.wait_s = wait_s
        self.token = secrets.token_hex(8)
        self._reentered = False
        self._token_ctx: Token[frozenset[str]] | None = None

    async def __aenter__(self) -> CaseLock:
        held = _HELD.get()
        if self.key in held:
            self._reentered = True
            return self
        self._reentered = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        delay = 0.002
        while not await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            if loop.time() > deadline:
                raise CaseBusy(f"case lock {self.key} busy for {self.wait_s}s")
            await asyncio.sleep(delay)  # lock held by another decider; poll with backoff
            delay = min(delay * 2, 0.05)
        self._token_ctx = _HELD.set(held | {self.key})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reentered:
            return
        if self._token_ctx is not None:
            _HELD.reset(self._token_ctx)
        await self.redis.eval(self._RELEASE, 1, self.key, self.token)


class HandoffStore:
    """Projection writes (apply) and the read/query interface (operator page, API)."""

    CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, m in ipairs(due) do
  if redis.call('ZREM', KEYS[1], m) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[3], m)
    out[#out + 1] = m
  end
end
return out
"""
    REAP = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, m in ipairs(stale) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], m)
end
return #stale
"""

    LOCK_LOAD = """
if ARGV[1] ~= '' and not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
local out = {redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[3])}
local packed = redis.call('HGET', KEYS[2], 'h')
if packed then
  local i = 1
  while i <= #packed do
    local n = string.byte(packed, i)
    out[#out + 1] = redis.call('HGETALL', ARGV[3] .. string.sub(packed, i + 1, i + n))
    i = i + 1 + n
  end
end
return out
"""
    """Take the case lock (unless ARGV[1] is empty) and read the whole case in one round
    trip: case hash, timeline, and every handoff hash listed in the case's ``h`` field
    (keys derived inside the script: single-node Redis, as everywhere in Loket)."""

    LOCK_LOAD_MANY = """
local out = {}
for c = 1, #KEYS / 3 do
  local b = (c - 1) * 3
  if redis.call('SET', KEYS[b + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    local one = {redis.call('HGETALL', KEYS[b + 2]), redis.call('GET', KEYS[b + 3])}
    local packed = redis.call('HGET', KEYS[b + 2], 'h')
    if packed then
      local i = 1
      while i <= #packed do
        local n = string.byte(packed, i)
        one[#one + 1] = redis.call('HGETALL', ARGV[3] .. string.sub(packed, i + 1, i + n))
        i = i + 1 + n
      end
    end
    out[c] = one
  else
    out[c] = false
  end
end
return out
"""
    """:data:`LOCK_LOAD` for several cases (KEYS: lock, case hash, timeline per case):
    each case whose lock is free is locked and read; false for a case locked elsewhere."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        calendar: SlaCalendar,
        *,
        lock_ttl_ms: int = 10_000,
        lock_wait_s: float = 10.0,
    ) -> None:
        self.redis = redis
        self.p = prefix
        self.calendar = calendar
        self.lock_ttl_ms = lock_ttl_ms
        self.lock_wait_s = lock_wait_s
        self._claim = redis.register_script(self.CLAIM)
        self._reap = redis.register_script(self.REAP)
        self._lock_load = redis.register_script(self.LOCK_LOAD)
        self._release = redis.register_script(CaseLock._RELEASE)
        self._write = redis.register_script(WRITE)
        self._lock_load_many = redis.register_script(self.LOCK_LOAD_MANY)
        self._write_many = redis.register_script(WRITE_MANY)

    # ------------------------------------------------------------------ keys

    def k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    def kid(self, kind: str, ident: str) -> bytes:
        """Key of one case/handoff: prefix, kind and the packed id (binary, compact)."""
        return f"{self.p}{kind}:".encode() + pack_id(ident)

    @property
    def timers_key(self) -> str:
        return self.k("timers")

    @property
    def ready_key(self) -> str:
        return self.k("ready")

    def lock(self, case_id: str) -> CaseLock:
        return CaseLock(self.redis, self.k("lock", case_id), self.lock_ttl_ms, self.lock_wait_s)

    # ------------------------------------------------------------------ marker

    async def is_ready(self) -> bool:
        return bool(await self.redis.exists(self.ready_key))

    async def mark_ready(self, info: str = "1") -> None:
        await self.redis.set(self.ready_key, info)

    # ------------------------------------------------------------------ load

    async def load(self, case_id: str) -> LoadedCase:
        """The case with its handoffs and applied event ids (one round trip)."""
        raw = await self._lock_load(
            keys=[b"", self.kid("c", case_id), self.kid("tl", case_id)],
            args=["", 0, self.kid("h", "")],
        )
        return self._loaded(case_id, raw)

    @contextlib.asynccontextmanager
    async def session(self, case_id: str) -> AsyncIterator[LoadedCase]:
        """Hold the case lock and the loaded case; lock and load in ONE round trip.

        Same lock as :meth:`lock` (re-entrant within one asyncio context).
        """
        lock = self.lock(case_id)
        held = _HELD.get()
        if lock.key in held:
            yield await self.load(case_id)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lock.wait_s
        delay = 0.002
        while True:
            sent = loop.time()  # the lock's PX countdown starts after this
            raw = await self._lock_load(
                keys=[lock.key, self.kid("c", case_id), self.kid("tl", case_id)],
                args=[lock.token, lock.ttl_ms, self.kid("h", "")],
            )
            if raw:
                break
            if loop.time() > deadline:
                raise CaseBusy(f"case lock {lock.key} busy for {lock.wait_s}s")
            await asyncio.sleep(delay)  # lock held by another decider; poll with backoff
            delay = min(delay * 2, 0.05)
        ctx = _HELD.set(held | {lock.key})
        loaded = self._loaded(case_id, raw)
        loaded.lease_until = sent + lock.ttl_ms / 1000
        loaded.lock_key = lock.key
        loaded.token = lock.token
        try:
            yield loaded
        finally:
            _HELD.reset(ctx)
            if not loaded.released:
                await self._release(keys=[lock.key], args=[lock.token])

    async def lock_load_many(self, case_ids: Sequence[str]) -> dict[str, LoadedCase | None]:
        """Lock and load many cases in ONE round trip (a batch session).

        case id -> its :class:`LoadedCase` (locked with one token for the batch, lease as
        :meth:`session`, writes staged: see :meth:`write_many`), or None when its lock is
        held elsewhere (the caller falls back to :meth:`session`, which waits for it).
        Every returned case must go to :meth:`write_many` (which releases its lock).
        """
        if not case_ids:
            return {}
        token = secrets.token_hex(8)
        keys: list[str | bytes] = []
        for case_id in case_ids:
            keys += (self.k("lock", case_id), self.kid("c", case_id), self.kid("tl", case_id))
        sent = asyncio.get_running_loop().time()  # the locks' PX countdown starts after this
        raw = await self._eval_large(
            self._lock_load_many, keys, [token, self.lock_ttl_ms, self.kid("h", "")]
        )
        out: dict[str, LoadedCase | None] = {}
        for case_id, lock_key, one in zip(case_ids, keys[::3], raw, strict=True):
            if not one:
                out[case_id] = None
                continue
            loaded = self._loaded(case_id, one)
            loaded.lease_until = sent + self.lock_ttl_ms / 1000
            loaded.lock_key = str(lock_key)
            loaded.token = token
            loaded.staged = Writes()
            out[case_id] = loaded
        return out

    async def write_many(self, sessions: Sequence[LoadedCase]) -> list[bool]:
        """Run the staged writes of every case of a batch session and release their
        locks, in ONE round trip (:data:`WRITE_MANY`).

        Per case: True when written; False when its lock no longer held the batch's
        token (the lease ran out: nothing of that case written, as :meth:`apply` does
        with :class:`LeaseExpired`). Then each case's ``after_write`` callbacks run with
        its outcome; if the call itself fails they run with False and the error is
        raised (the locks expire with their lease).
        """
        if not sessions:
            return []
        keys: list[str | bytes] = []
        args: list[Any] = [len(sessions)]
        for loaded in sessions:
            staged = loaded.staged
            assert staged is not None, "not a batch-session case"
            args += (len(keys), loaded.token, len(staged.args), *staged.args)
            keys.append(loaded.lock_key)
            keys += staged.keys
        try:
            raw = await self._eval_large(self._write_many, keys, args)
        except BaseException:
            self.abandon(sessions)
            raise
        done = [bool(int(x)) for x in raw]
        for loaded, ok in zip(sessions, done, strict=True):
            loaded.released = True
            loaded.staged = None
            callbacks, loaded.after_write = loaded.after_write, []
            for callback in callbacks:
                callback(ok)
        return done

    @staticmethod
    def abandon(sessions: Sequence[LoadedCase]) -> None:
        """The staged writes of ``sessions`` will not be written (their ``after_write``
        callbacks run with False; the locks expire with their lease)."""
        for loaded in sessions:
            loaded.staged = None
            callbacks, loaded.after_write = loaded.after_write, []
            for callback in callbacks:
                callback(False)

    async def _eval_large(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)`` for calls with thousands of arguments.

        The command is packed by hiredis (C) instead of redis-py's Python packer, which
        cost ~0.6 us per argument (a batch write has ~120 per routing: more client CPU
        than the rest of the write path). Sent on a connection of the client's pool;
        a connection whose reply was not read completely is closed, not reused.
        """
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._send_packed(command)
        except NoScriptError:  # Redis restarted or flushed its scripts: load it again
            script.sha = await self.redis.script_load(script.script)
            return await self._send_packed(("EVALSHA", script.sha, *command[2:]))

    async def _send_packed(self, command: tuple[Any, ...]) -> Any:
        packed = hiredis.pack_command(command)
        pool = self.redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed)
            return await conn.read_response()
        except ResponseError:
            raise  # the reply was read completely: the connection is fine
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    def _loaded(self, case_id: str, raw: list[Any]) -> LoadedCase:
        raw_case = _pairs(raw[0])
        projection = Projection()
        applied: set[str] = set()
        seqs: dict[str, int] = {}
        for line in split_timeline(raw[1]):
            entry = TimelineEntry.from_json(line)
            applied.add(entry.event_id)
            if entry.kind == "routed" and entry.detail.get("seq") is not None:
                seqs[entry.event_id] = int(entry.detail["seq"])
        if raw_case:
            case, ids = decode_case(case_id, raw_case)
            projection.case = case
            for hid, raw_handoff in zip(ids, raw[2:], strict=False):
                fields = _pairs(raw_handoff)
                if fields:
                    projection.handoffs[hid] = decode_handoff(hid, fields)
        return LoadedCase(projection, applied, seqs)

    async def get_handoff(self, handoff_id: str) -> Handoff | None:
        raw = await self.redis.hgetall(self.kid("h", handoff_id))
        return decode_handoff(handoff_id, raw) if raw else None

    async def get_case(self, case_id: str) -> Case | None:
        raw = await self.redis.hgetall(self.kid("c", case_id))
        return decode_case(case_id, raw)[0] if raw else None

    # ------------------------------------------------------------------ apply

    @staticmethod
    def route_seq(loaded: LoadedCase, event_id: str) -> int:
        """The route sequence number the CaseRouted ``event_id`` has (or will get when
        applied to ``loaded``): the number of distinct routings of the case before it."""
        sid = short_id(event_id)
        if sid in loaded.applied:
            return loaded.route_seqs.get(sid) or 0
        return loaded.case.route_count if loaded.case else 0

    async def apply(
        self,
        loaded: LoadedCase,
        items: Sequence[tuple[str, Message, datetime]],
    ) -> Applied:
        """Apply events (``(event_id, event, time)``) of ONE case, idempotently.

        Call under the case lock with ``loaded`` from :meth:`load`; ``loaded`` is updated
        in place, so several batches can follow one load. Events already applied (their
        id is on the timeline) are skipped. All writes run in ONE Lua script (atomic, one
        round trip); it raises :class:`LeaseExpired` (writing nothing) when the case lock
        of ``loaded`` is no longer held. For a case of a batch session (``staged``) the
        writes are only collected; :meth:`write_many` runs them.
        """
        projection = loaded.projection
        before = dict(projection.handoffs)
        case_before = projection.case
        new: list[tuple[str, Message]] = []
        entries: list[TimelineEntry] = []
        route_seq: int | None = None
        stats: dict[str, int] = {}
        latencies: list[str] = []
        escalations: list[str] = []
        for event_id, event, at in items:
            sid = short_id(event_id)
            if sid in loaded.applied:
                if isinstance(event, CaseRouted):
                    route_seq = loaded.route_seqs.get(sid)
                continue
            loaded.applied.add(sid)
            seq: int | None = None
            if isinstance(event, CaseRouted | HandoffEvent):
                if isinstance(event, CaseRouted):
                    seq = projection.case.route_count if projection.case else 0
                    route_seq = seq
                    loaded.route_seqs[sid] = seq
                prior = projection.handoffs.get(getattr(event, "handoff_id", ""))
                evolve(projection, event, self.calendar)
                _count(stats, event, prior, latencies, escalations)
            entries.append(timeline_entry(event, event_id, at, seq))
            new.append((event_id, event))
        if not entries:
            return Applied([], route_seq)
        case = projection.case
        case_id = case.case_id if case else new[0][1].case_id
        pipe = loaded.staged if loaded.staged is not None else Writes()
        if case is not None:
            pipe.hset(self.kid("c", case_id), mapping=encode_case(case, projection.handoffs))
            if case_before is None:
                pipe.hset(self.k("refs"), case.reference, pack_id(case_id))
        for hid, handoff in projection.handoffs.items():
            if before.get(hid) != handoff:
                self._write_handoff(pipe, handoff, before.get(hid))
        index = {hid: i for i, hid in enumerate(projection.handoffs)}
        pipe.append(self.kid("tl", case_id), "".join(e.to_json(index) + "\n" for e in entries))
        for name, n in stats.items():
            pipe.hincrby(self.k("stats"), name, n)
        if latencies:
            pipe.lpush(self.k("lat"), *latencies)
            pipe.ltrim(self.k("lat"), 0, LATENCY_KEEP - 1)
        if escalations:
            pipe.lpush(self.k("esc"), *escalations)
            pipe.ltrim(self.k("esc"), 0, ESCALATIONS_KEEP - 1)
        if loaded.staged is not None:
            return Applied(new, route_seq)  # written by write_many with the whole batch
        release = loaded.release_on_write and bool(loaded.token)
        done = await self._write(
            keys=[loaded.lock_key or "-", *pipe.keys],
            args=[loaded.token, "1" if release else "", *pipe.args],
        )
        if done and release:
            loaded.released = True
            loaded.release_on_write = False
        if not done:
            raise LeaseExpired(
                f"case lock of {case_id} lost before the write (lease ran out): nothing "
                "written from the stale load"
            )
        return Applied(new, route_seq)

    def _write_handoff(self, pipe: Any, h: Handoff, old: Handoff | None) -> None:
        """Write a changed handoff and its index entries.

        ``old`` is the handoff as loaded from Redis under the case lock (None: new), so
        only what differs is written: changed hash fields, and index entries whose
        membership or score changed (the timer entry is always written).
        """
        hid = pack_id(h.handoff_id)
        key = self.kid("h", h.handoff_id)
        fields = encode_handoff(h)
        if old is None:
            pipe.hset(key, mapping=fields)
        else:
            before = encode_handoff(old)
            gone = [f for f in before if f not in fields]
            changed = {f: v for f, v in fields.items() if before.get(f) != v}
            if gone:
                pipe.hdel(key, *gone)
            if changed:
                pipe.hset(key, mapping=changed)
        offered = ms(h.offered_at) / 1000
        if h.is_open:
            if old is None or not old.is_open or old.offered_at != h.offered_at:
                pipe.zadd(self.k("oa", h.agency.value), {hid: offered})
                pipe.zadd(self.k("oi", h.initiative_id), {hid: offered})
        elif old is None or old.is_open:
            pipe.zrem(self.k("oa", h.agency.value), hid)
            pipe.zrem(self.k("oi", h.initiative_id), hid)
            closed = self.k("ca", h.agency.value)
            pipe.zadd(closed, {hid: ms(h.closed_at or h.offered_at) / 1000})
            pipe.zremrangebyrank(closed, 0, -CLOSED_KEEP - 1)
        nxt = h.next_timer()
        if nxt is not None:
            pipe.zadd(self.timers_key, {hid: ms(nxt) / 1000})
        else:
            pipe.zrem(self.timers_key, hid)
        band = _risk_band(h)
        if old is not None and band == _risk_band(old):
            return
        if band is not None and band[0] == "breached":
            pipe.zrem(self.k("risk"), hid)
            pipe.zadd(self.k("breached"), {hid: band[1]})
        elif band is not None:
            pipe.zadd(self.k("risk"), {hid: band[1]})
            pipe.zrem(self.k("breached"), hid)
        else:
            pipe.zrem(self.k("risk"), hid)
            pipe.zrem(self.k("breached"), hid)

    # ------------------------------------------------------------------ timers

    async def claim_due(self, now: datetime, limit: int, lease_s: float) -> list[str]:
        """Atomically claim up to ``limit`` due timers (only one instance gets each)."""
        t = ms(now) / 1000
        members = await self._claim(
            keys=[self.timers_key, self.k("inflight")], args=[t, limit, t + lease_s]
        )
        return [unpack_id(m) for m in members]

    async def release(self, handoff_id: str) -> None:
        """A claimed timer was handled: drop its lease (apply has rescheduled it)."""
        await self.redis.zrem(self.k("inflight"), pack_id(handoff_id))

    async def reschedule(self, handoff: Handoff) -> None:
        nxt = handoff.next_timer()
        pipe = self.redis.pipeline(transaction=True)
        if nxt is not None:
            pipe.zadd(self.timers_key, {pack_id(handoff.handoff_id): ms(nxt) / 1000})
        pipe.zrem(self.k("inflight"), pack_id(handoff.handoff_id))
        await pipe.execute()

    async def reap_leases(self, now: datetime) -> int:
        """Give timers whose claimer died (lease expired) back to the due set."""
        t = ms(now) / 1000
        return int(await self._reap(keys=[self.timers_key, self.k("inflight")], args=[t]))

    # ------------------------------------------------------------------ queries

    async def _handoffs(self, ids: Sequence[str]) -> list[Handoff]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for hid in ids:
            pipe.hgetall(self.kid("h", hid))
        return [
            decode_handoff(hid, raw)
            for hid, raw in zip(ids, await pipe.execute(), strict=True)
            if raw
        ]

    async def open_handoffs(
        self,
        *,
        agency: AgencyCode | str | None = None,
        initiative_id: str | None = None,
        state: HandoffState | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Handoff]:
        """Open handoffs (offered/accepted) of an agency or initiative, oldest first.

        ``state`` filters on offered/accepted; closed states come from
        :meth:`closed_handoffs`.
        """
        if agency is not None:
            key = self.k("oa", AgencyCode(agency).value)
        elif initiative_id is not None:
            key = self.k("oi", initiative_id)
        else:
            raise ValueError("agency or initiative_id is required")
        if state is None:
            ids = [unpack_id(m) for m in await self.redis.zrange(key, offset, offset + limit - 1)]
            return await self._handoffs(ids)
        out: list[Handoff] = []
        start = 0
        page = max(limit, 200)
        while len(out) < offset + limit:
            ids = [unpack_id(m) for m in await self.redis.zrange(key, start, start + page - 1)]
            if not ids:
                break
            out.extend(h for h in await self._handoffs(ids) if h.state is state)
            start += page
        return out[offset : offset + limit]

    async def closed_handoffs(
        self, agency: AgencyCode | str, *, state: HandoffState | None = None, limit: int = 100
    ) -> list[Handoff]:
        """The most recently closed handoffs of an agency (declined/resolved/escalated)."""
        key = self.k("ca", AgencyCode(agency).value)
        ids = [unpack_id(m) for m in await self.redis.zrevrange(key, 0, CLOSED_KEEP - 1)]
        found = [h for h in await self._handoffs(ids) if state is None or h.state is state]
        return found[:limit]

    async def open_counts_by_agency(self) -> dict[str, int]:
        """Open handoffs per agency code (all 17 codes, zeros included)."""
        pipe = self.redis.pipeline(transaction=False)
        for code in AgencyCode:
            pipe.zcard(self.k("oa", code.value))
        return {
            code.value: int(n) for code, n in zip(AgencyCode, await pipe.execute(), strict=True)
        }

    async def open_counts_by_initiative(self, initiative_ids: Iterable[str]) -> dict[str, int]:
        """Open handoffs per initiative (pass the catalog's ids)."""
        ids = list(initiative_ids)
        pipe = self.redis.pipeline(transaction=False)
        for iid in ids:
            pipe.zcard(self.k("oi", iid))
        return {iid: int(n) for iid, n in zip(ids, await pipe.execute(), strict=True)}

    async def at_risk(self, limit: int = 100) -> list[Handoff]:
        """Open handoffs past 75% of their SLA (not yet breached), soonest due first."""
        ids = [unpack_id(m) for m in await self.redis.zrange(self.k("risk"), 0, limit - 1)]
        return await self._handoffs(ids)

    async def breached(self, limit: int = 100) -> list[Handoff]:
        """Open handoffs whose SLA ran out (oldest due first)."""
        ids = [unpack_id(m) for m in await self.redis.zrange(self.k("breached"), 0, limit - 1)]
        return await self._handoffs(ids)

    async def stats(self) -> dict[str, int]:
        """Counters: ``offered:<agency>``, ``accepted:<agency>``, ``declined:<agency>``,
        ``resolved:<agency>``, ``escalated:<reason>``, ``escalated_from:<agency>``,
        ``sla_warning:<accept|resolve>``, ``sla_breached:<accept|resolve>``."""
        raw = await self.redis.hgetall(self.k("stats"))
        return {_s(k): int(v) for k, v in raw.items()}

    async def accept_latencies(self, agency: AgencyCode | str | None = None) -> list[float]:
        """Recent accept latencies in seconds (offer -> accept, wall clock)."""
        raw = await self.redis.lrange(self.k("lat"), 0, -1)
        want = AgencyCode(agency).value if agency else None
        out: list[float] = []
        for code, seconds in _latencies(raw):
            if want is None or code == want:
                out.append(seconds)
        return out

    async def accept_latencies_by_agency(self) -> dict[str, list[float]]:
        """Recent accept latencies in seconds for every agency, in ONE round trip.

        agency code -> the list :meth:`accept_latencies` returns for that agency (same
        values, same order); agencies without accepts are absent. One ``LRANGE`` of the
        latency list instead of one per agency (the operator page needs all of them).
        """
        raw = await self.redis.lrange(self.k("lat"), 0, -1)
        out: dict[str, list[float]] = {}
        for code, seconds in _latencies(raw):
            out.setdefault(code, []).append(seconds)
        return out

    async def median_time_to_accept(self, agency: AgencyCode | str | None = None) -> float | None:
        """Median seconds from offer to accept over the last 10000 accepts (None: none)."""
        values = await self.accept_latencies(agency)
        return statistics.median(values) if values else None

    async def decline_rate(self, agency: AgencyCode | str | None = None) -> float | None:
        """Declines / (accepts + declines), per agency or overall (None: no responses)."""
        stats = await self.stats()
        suffix = f":{AgencyCode(agency).value}" if agency else None

        def total(kind: str) -> int:
            return sum(
                n
                for name, n in stats.items()
                if name.startswith(kind + ":") and (suffix is None or name.endswith(suffix))
            )

        declined = total("declined")
        answered = declined + total("accepted")
        return declined / answered if answered else None

    async def escalations(self, limit: int = 100) -> list[dict[str, Any]]:
        """Most recent escalations, newest first: case_id, handoff_id, agency, reason, at."""
        raw = await self.redis.lrange(self.k("esc"), 0, limit - 1)
        return [json.loads(r) for r in raw]

    async def timeline(self, case_id: str) -> list[TimelineEntry]:
        """Every event of a case in order (routing, offers, responses, SLA, consent)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.kid("c", case_id), "h")
        pipe.get(self.kid("tl", case_id))
        packed, blob = await pipe.execute()
        ids = unpack_ids(packed)
        return [TimelineEntry.from_json(r, ids) for r in split_timeline(blob)]

    async def case_view(self, case_id: str) -> tuple[Case, list[Handoff]] | None:
        """A case with all its handoffs (open and closed)."""
        raw = await self.redis.hgetall(self.kid("c", case_id))
        if not raw:
            return None
        case, ids = decode_case(case_id, raw)
        return case, await self._handoffs(ids)

    async def case_id_for_reference(self, reference: str) -> str | None:
        raw = await self.redis.hget(self.k("refs"), reference)
        return unpack_id(raw) if raw is not None else None

    async def record_only(self, case_id: str, event_id: str, event: Message, at: datetime) -> bool:
        """Add an event that changes no state (consent) to a case timeline, idempotently."""
        async with self.lock(case_id):
            loaded = await self.load(case_id)
            applied = await self.apply(loaded, [(event_id, event, at)])
        return bool(applied.new_events)


def _pairs(raw: Any) -> dict[Any, Any]:
    """A hash as returned from Lua (flat ``[field, value, ...]``) as a dict."""
    if not raw:
        return {}
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


def _latencies(raw: Iterable[Any]) -> Iterable[tuple[str, float]]:
    """Entries of the ``lat`` list (``agency:seconds``) as (agency code, seconds)."""
    for item in raw:
        code, _, seconds = _s(item).partition(":")
        yield code, float(seconds)


def _risk_band(h: Handoff) -> tuple[str, float] | None:
    """Which SLA index an open handoff belongs to (``risk``/``breached``) and its score."""
    due = h.due_at
    if not h.is_open or due is None:
        return None
    if h.breached:
        return ("breached", ms(due) / 1000)
    if h.warned:
        return ("risk", ms(due) / 1000)
    return None


def _count(
    stats: dict[str, int],
    event: CaseRouted | HandoffEvent,
    prior: Handoff | None,
    latencies: list[str],
    escalations: list[str],
) -> None:
    def inc(name: str) -> None:
        stats[name] = stats.get(name, 0) + 1

    if isinstance(event, HandoffOffered) and prior is None:
        inc(f"offered:{event.agency.value}")
    elif isinstance(event, HandoffAccepted) and prior and prior.state is HandoffState.OFFERED:
        inc(f"accepted:{event.agency.value}")
        seconds = max(0.0, (event.occurred_at - prior.offered_at).total_seconds())
        latencies.append(f"{event.agency.value}:{seconds:.0f}")
    elif isinstance(event, HandoffDeclined):
        inc(f"declined:{event.agency.value}")
    elif isinstance(event, HandoffResolved):
        inc(f"resolved:{event.agency.value}")
    elif isinstance(event, HandoffEscalated):
        inc(f"escalated:{event.reason.value}")
        inc(f"escalated_from:{event.agency.value}")
        escalations.append(
            json.dumps(
                {
                    "case_id": event.case_id,
                    "handoff_id": event.handoff_id,
                    "agency": event.agency.value,
                    "reason": event.reason.value,
                    "at": event.occurred_at.isoformat(),
                },
                separators=(",", ":"),
            )
        )
    elif isinstance(event, HandoffSlaWarning):
        inc(f"sla_warning:{event.sla.value}")
    elif isinstance(event, HandoffSlaBreached):
        inc(f"sla_breached:{event.sla.value}")
