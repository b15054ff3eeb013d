"""The operator view: handoff SLAs, backlogs, declines and escalations at a glance (Dutch).

``build_operator_router()`` returns the routes; ``create_app`` includes them:

* ``GET /operator``: the overview page (server-rendered Jinja2). A small plain script
  (``/operator/static/operator.js``) fetches ``GET /operator/fragment`` every few seconds
  and swaps that server-rendered fragment in place (no SPA, no CDN); a pause button stops
  it; the key figures sit in an ``aria-live="polite"`` region that only changes when the
  figures do.
* ``GET /operator/cases/{case_id}``: drill-down to one case: owner, handoffs with state
  and SLA deadlines, the timeline in order. ``GET /operator/zoek?referentie=`` finds a
  case by its reference.
* ``GET|POST /operator/login``, ``POST /operator/logout``: a browser logs in with an
  operator key and gets an HttpOnly, SameSite=Strict session cookie (HMAC-signed, 8 h);
  scripts send ``X-API-Key`` instead. Keys are the service's operator keys
  (``LOKET_HANDOFF_OPERATOR_KEYS``, sha256) and, in development, ``dev-operator``.

Prometheus gauges for the same figures (``OperatorMetrics``) live in the service's registry
and are refreshed from the store every few seconds by a task in this router's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, FastAPI, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import RedisError

from loket_handoff.businesshours import AMSTERDAM
from loket_handoff.domain import OPERATOR, Handoff, HandoffState
from loket_handoff.errors import Retryable
from loket_handoff.settings import hash_key
from loket_handoff.store import HandoffStore, TimelineEntry
from loket_runtime.logging import get_logger
from loket_runtime.tasks import stop_task
from loket_schemas.catalog import load_agencies, load_initiatives
from loket_schemas.vocabulary import AgencyCode

log = get_logger("loket.handoff.operator")

COOKIE = "loket_operator"
SESSION_S = 8 * 3600
REFRESH_S = 5
"""Seconds between fragment refreshes in the browser."""
GAUGE_REFRESH_S = 5.0
"""Seconds between refreshes of the operator gauges from the store."""
CACHE_S = 1.0
"""An overview is reused for this long (page, fragment and gauges share one read)."""
LIST_LIMIT = 25
"""Rows shown in the at-risk, breached and escalation tables."""
SCAN_LIMIT = 1000
"""At-risk/breached handoffs read for the per-agency counts (totals are exact)."""
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
STATIC = {"operator.js": "text/javascript", "operator.css": "text/css"}

STATE_NL = {
    HandoffState.OFFERED: "Aangeboden",
    HandoffState.ACCEPTED: "Geaccepteerd",
    HandoffState.DECLINED: "Afgewezen",
    HandoffState.RESOLVED: "Afgehandeld",
    HandoffState.ESCALATED: "Geëscaleerd",
}
KIND_NL = {
    "routed": "Gerouteerd",
    "offered": "Aangeboden",
    "accepted": "Geaccepteerd",
    "declined": "Afgewezen",
    "resolved": "Afgehandeld",
    "escalated": "Geëscaleerd",
    "sla_warning": "SLA-waarschuwing",
    "sla_breached": "SLA verlopen",
    "rejected": "Reactie geweigerd",
    "consent_given": "Toestemming gegeven",
    "consent_withdrawn": "Toestemming ingetrokken",
}
REASON_NL = {
    "sla": "SLA verlopen",
    "bounce_limit": "Twee keer afgewezen",
    "manual": "Handmatig geëscaleerd",
}
SLA_NL = {"accept": "acceptatie", "resolve": "afhandeling"}
ROLE_NL = {"lead": "hoofdbehandelaar", "supporting": "ondersteunend"}
CAUSE_NL = {"initial": "eerste routering", "decline": "na afwijzing", "escalation": "escalatie"}
MONTHS_NL = "jan feb mrt apr mei jun jul aug sep okt nov dec".split()


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class AgencyRow:
    code: str
    name: str
    open: int
    at_risk: int
    breached: int
    offered: int
    accepted: int
    declined: int
    resolved: int
    escalated_from: int
    decline_rate: float | None
    median_accept_s: float | None


@dataclass(frozen=True)
class InitiativeRow:
    id: str
    name: str
    region: str
    open: int


@dataclass(frozen=True)
class EscalationRow:
    case_id: str
    handoff_id: str
    agency: str
    agency_name: str
    reason: str
    reason_label: str
    at: datetime | None
    reference: str = ""


@dataclass(frozen=True)
class Overview:
    """Every figure on the operator page (and behind the operator gauges)."""

    generated_at: datetime
    agencies: list[AgencyRow]
    initiatives: list[InitiativeRow]
    at_risk: list[Handoff]
    breached: list[Handoff]
    at_risk_total: int
    breached_total: int
    open_total: int
    median_accept_s: float | None
    decline_rate: float | None
    escalations: list[EscalationRow]
    escalations_by_reason: dict[str, int]
    sla_warnings: dict[str, int]
    sla_breaches: dict[str, int]
    time_scale: float = 1.0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def escalations_total(self) -> int:
        return sum(self.escalations_by_reason.values())

    def summary_nl(self) -> str:
        """One sentence with the key figures (the polite live region reads it on change)."""
        return (
            f"{self.open_total} open overdrachten, {self.at_risk_total} dreigen de SLA te "
            f"overschrijden, {self.breached_total} met verlopen SLA, "
            f"{self.escalations_total} escalaties."
        )


def _rate(declined: int, accepted: int) -> float | None:
    answered = declined + accepted
    return declined / answered if answered else None


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


async def gather_overview(store: HandoffStore, *, time_scale: float = 1.0) -> Overview:
    """Read every operator figure from the projection (a handful of Redis round trips)."""
    agencies = load_agencies()
    initiatives = load_initiatives()
    codes = [a.code.value for a in agencies.agencies]
    pipe = store.redis.pipeline(transaction=False)
    pipe.zcard(store.k("risk"))
    pipe.zcard(store.k("breached"))
    risk_total, breached_total = await pipe.execute()
    open_by_agency, open_by_initiative, at_risk, breached, stats, latency_by = await asyncio.gather(
        store.open_counts_by_agency(),
        store.open_counts_by_initiative([i.id for i in initiatives.initiatives]),
        store.at_risk(limit=SCAN_LIMIT),
        store.breached(limit=SCAN_LIMIT),
        store.stats(),
        store.accept_latencies_by_agency(),  # every agency in one round trip
    )
    latencies = [latency_by.get(code, []) for code in codes]
    escalations = await store.escalations(limit=LIST_LIMIT)
    risk_by: dict[str, int] = {}
    for h in at_risk:
        risk_by[h.agency.value] = risk_by.get(h.agency.value, 0) + 1
    breached_by: dict[str, int] = {}
    for h in breached:
        breached_by[h.agency.value] = breached_by.get(h.agency.value, 0) + 1
    rows = []
    for agency in agencies.agencies:
        code = agency.code.value
        accepted = stats.get(f"accepted:{code}", 0)
        declined = stats.get(f"declined:{code}", 0)
        rows.append(
            AgencyRow(
                code=code,
                name=agency.name,
                open=open_by_agency.get(code, 0),
                at_risk=risk_by.get(code, 0),
                breached=breached_by.get(code, 0),
                offered=stats.get(f"offered:{code}", 0),
                accepted=accepted,
                declined=declined,
                resolved=stats.get(f"resolved:{code}", 0),
                escalated_from=stats.get(f"escalated_from:{code}", 0),
                decline_rate=_rate(declined, accepted),
                median_accept_s=_median(latency_by.get(code, [])),
            )
        )
    all_latencies = [v for values in latencies for v in values]
    total_accepted = sum(r.accepted for r in rows)
    total_declined = sum(r.declined for r in rows)

    def prefixed(kind: str) -> dict[str, int]:
        return {k.partition(":")[2]: v for k, v in stats.items() if k.startswith(kind + ":")}

    escalated = await asyncio.gather(
        *(store.get_handoff(str(e.get("handoff_id", ""))) for e in escalations)
    )
    esc_rows = []
    for e, handoff in zip(escalations, escalated, strict=True):
        code = str(e.get("agency", ""))
        try:
            name = agencies.get(code).name
        except (KeyError, ValueError):
            name = code
        try:
            at: datetime | None = datetime.fromisoformat(str(e.get("at")))
        except ValueError:
            at = None
        reason = str(e.get("reason", ""))
        esc_rows.append(
            EscalationRow(
                case_id=str(e.get("case_id", "")),
                handoff_id=str(e.get("handoff_id", "")),
                agency=code,
                agency_name=name,
                reason=reason,
                reason_label=REASON_NL.get(reason, reason),
                at=at,
                reference=handoff.reference if handoff else "",
            )
        )
    by_reason = {r: 0 for r in REASON_NL}
    by_reason.update(prefixed("escalated"))
    return Overview(
        generated_at=datetime.now(UTC),
        agencies=rows,
        initiatives=[
            InitiativeRow(i.id, i.name, i.region, open_by_initiative.get(i.id, 0))
            for i in initiatives.initiatives
        ],
        at_risk=at_risk,
        breached=breached,
        at_risk_total=int(risk_total),
        breached_total=int(breached_total),
        open_total=sum(open_by_agency.values()),
        median_accept_s=_median(all_latencies),
        decline_rate=_rate(total_declined, total_accepted),
        escalations=esc_rows,
        escalations_by_reason=by_reason,
        sla_warnings=prefixed("sla_warning"),
        sla_breaches=prefixed("sla_breached"),
        time_scale=time_scale,
        stats=stats,
    )


# --------------------------------------------------------------------------- metrics


class OperatorMetrics:
    """Gauges of the operator figures, set from the projection (shared by all instances).

    The counters in :mod:`loket_handoff.metrics` count what *this process* published;
    these gauges show the state of the whole projection, so any instance reports the same.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open_by_initiative = Gauge(
            "loket_handoff_open_by_initiative",
            "Open handoffs (offered or accepted) per intake initiative.",
            ["initiative"],
            registry=registry,
        )
        self.at_risk = Gauge(
            "loket_handoff_at_risk",
            "Open handoffs past the SLA warning point (75%), not yet breached, per agency.",
            ["agency"],
            registry=registry,
        )
        self.breached = Gauge(
            "loket_handoff_breached_open",
            "Open handoffs whose SLA ran out, per agency.",
            ["agency"],
            registry=registry,
        )
        self.at_risk_total = Gauge(
            "loket_handoff_at_risk_total_open",
            "Open handoffs past the SLA warning point (all agencies).",
            registry=registry,
        )
        self.breached_total = Gauge(
            "loket_handoff_breached_total_open",
            "Open handoffs with a breached SLA (all agencies).",
            registry=registry,
        )
        self.median_accept = Gauge(
            "loket_handoff_median_accept_seconds",
            "Median wall-clock seconds from offer to acceptance (last 10000 accepts).",
            registry=registry,
        )
        self.agency_median_accept = Gauge(
            "loket_handoff_agency_median_accept_seconds",
            "Median wall-clock seconds from offer to acceptance per agency.",
            ["agency"],
            registry=registry,
        )
        self.decline_ratio = Gauge(
            "loket_handoff_decline_ratio",
            "Declines / (accepts + declines), all agencies.",
            registry=registry,
        )
        self.agency_decline_ratio = Gauge(
            "loket_handoff_agency_decline_ratio",
            "Declines / (accepts + declines) per agency.",
            ["agency"],
            registry=registry,
        )
        self.escalations = Gauge(
            "loket_handoff_escalations_by_reason",
            "Escalations to maatwerkloket recorded in the projection, by reason.",
            ["reason"],
            registry=registry,
        )
        self.outcomes = Gauge(
            "loket_handoff_outcomes",
            "Handoffs recorded in the projection per agency and outcome "
            "(offered, accepted, declined, resolved, escalated_from).",
            ["agency", "outcome"],
            registry=registry,
        )
        self.sla_events = Gauge(
            "loket_handoff_sla_events",
            "SLA warnings and breaches recorded in the projection, by SLA and kind.",
            ["sla", "kind"],
            registry=registry,
        )
        self.time_scale = Gauge(
            "loket_handoff_time_scale",
            "SLA clock speed-up (1 = real business hours; demo > 1).",
            registry=registry,
        )
        self.refreshed = Gauge(
            "loket_handoff_operator_refreshed_timestamp_seconds",
            "When the operator gauges were last refreshed (unix time).",
            registry=registry,
        )

    def update(self, o: Overview) -> None:
        for row in o.agencies:
            self.at_risk.labels(row.code).set(row.at_risk)
            self.breached.labels(row.code).set(row.breached)
            self.agency_median_accept.labels(row.code).set(
                row.median_accept_s if row.median_accept_s is not None else float("nan")
            )
            self.agency_decline_ratio.labels(row.code).set(
                row.decline_rate if row.decline_rate is not None else float("nan")
            )
            for outcome in ("offered", "accepted", "declined", "resolved", "escalated_from"):
                self.outcomes.labels(row.code, outcome).set(getattr(row, outcome))
        for i in o.initiatives:
            self.open_by_initiative.labels(i.id).set(i.open)
        self.at_risk_total.set(o.at_risk_total)
        self.breached_total.set(o.breached_total)
        self.median_accept.set(o.median_accept_s if o.median_accept_s is not None else float("nan"))
        self.decline_ratio.set(o.decline_rate if o.decline_rate is not None else float("nan"))
        for reason, n in o.escalations_by_reason.items():
            self.escalations.labels(reason).set(n)
        for sla in SLA_NL:
            self.sla_events.labels(sla, "warning").set(o.sla_warnings.get(sla, 0))
            self.sla_events.labels(sla, "breach").set(o.sla_breaches.get(sla, 0))
        self.time_scale.set(o.time_scale)
        self.refreshed.set(o.generated_at.timestamp())


METRIC_NAMES = (
    "loket_handoff_open_by_initiative",
    "loket_handoff_at_risk",
    "loket_handoff_breached_open",
    "loket_handoff_at_risk_total_open",
    "loket_handoff_breached_total_open",
    "loket_handoff_median_accept_seconds",
    "loket_handoff_agency_median_accept_seconds",
    "loket_handoff_decline_ratio",
    "loket_handoff_agency_decline_ratio",
    "loket_handoff_escalations_by_reason",
    "loket_handoff_outcomes",
    "loket_handoff_sla_events",
    "loket_handoff_time_scale",
    "loket_handoff_operator_refreshed_timestamp_seconds",
)


# --------------------------------------------------------------------------- per-app state


class OperatorState:
    """Per-app operator state: gauges and a short cache of the overview."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.metrics = OperatorMetrics(app.state.runtime.registry)
        self._cached: tuple[float, Overview] | None = None
        self._lock = asyncio.Lock()

    @property
    def store(self) -> HandoffStore:
        store: HandoffStore = self.app.state.handoff_store
        return store

    @property
    def time_scale(self) -> float:
        return float(getattr(self.app.state.settings, "handoff_time_scale", 1.0))

    async def ensure_ready(self) -> None:
        service = getattr(self.app.state, "handoff_service", None)
        if service is not None:
            await service.ensure_ready()

    async def overview(self, *, max_age: float = CACHE_S) -> Overview:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < max_age:
                return self._cached[1]
            await self.ensure_ready()
            overview = await gather_overview(self.store, time_scale=self.time_scale)
            self.metrics.update(overview)
            self._cached = (time.monotonic(), overview)
            return overview


def operator_state(app: FastAPI) -> OperatorState:
    state: OperatorState | None = getattr(app.state, "operator", None)
    if state is None:
        state = OperatorState(app)
        app.state.operator = state
    return state


@contextlib.asynccontextmanager
async def operator_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Refresh the operator gauges every few seconds while the app runs."""
    state = operator_state(app)

    stopping = asyncio.Event()

    async def refresh_forever() -> None:
        while not stopping.is_set():  # ends even if a cancellation was lost (loket_runtime.tasks)
            try:
                await state.overview(max_age=GAUGE_REFRESH_S / 2)
            except asyncio.CancelledError:
                raise
            except (Retryable, RedisError, OSError) as exc:
                log.warning("operator_gauges_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            except Exception:
                log.exception("operator_gauges_crashed")
            await asyncio.sleep(GAUGE_REFRESH_S)  # the refresh period

    task = asyncio.create_task(refresh_forever(), name="handoff-operator-gauges")
    try:
        yield
    finally:
        stopping.set()
        await stop_task(task, log=log)


# --------------------------------------------------------------------------- auth


class NotAuthenticated(Exception):
    """No valid operator key or session."""


def _session_secret(request: Request) -> bytes:
    key = request.app.state.settings.pseudonym_key.get_secret_value()
    return hashlib.sha256(b"loket-operator-session\x00" + key.encode()).digest()


def make_session(request: Request, key_hash: str, now: float | None = None) -> str:
    """``<expiry>.<key id>.<hmac>``: the key id is the first 16 hex of the key's hash."""
    expires = int((now if now is not None else time.time()) + SESSION_S)
    kid = key_hash[:16]
    mac = hmac.new(_session_secret(request), f"{expires}|{kid}".encode(), "sha256").hexdigest()
    return f"{expires}.{kid}.{mac}"


def session_valid(request: Request, token: str | None, now: float | None = None) -> bool:
    if not token or token.count(".") != 2:
        return False
    expires_s, kid, mac = token.split(".")
    if not expires_s.isdigit() or int(expires_s) < (now if now is not None else time.time()):
        return False
    expected = hmac.new(_session_secret(request), f"{expires_s}|{kid}".encode(), "sha256")
    if not hmac.compare_digest(expected.hexdigest(), mac):
        return False
    table: dict[str, str] = request.app.state.handoff_keys
    # the key must still be an operator key (removing a key ends its sessions)
    return any(h.startswith(kid) and who == OPERATOR for h, who in table.items())


def operator_key_hash(request: Request, key: str) -> str | None:
    """The hash of ``key`` when it is an operator key, else None."""
    digest = hash_key(key)
    table: dict[str, str] = request.app.state.handoff_keys
    return digest if table.get(digest) == OPERATOR else None


def authenticate(request: Request) -> None:
    """An operator key in ``X-API-Key`` or a valid session cookie; else NotAuthenticated."""
    key = request.headers.get("x-api-key")
    if key:
        if operator_key_hash(request, key) is None:
            raise NotAuthenticated("not an operator key")
        return
    if not session_valid(request, request.cookies.get(COOKIE)):
        raise NotAuthenticated("no operator session")


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/operator") and "//" not in value and "\\" not in value:
        return value
    return "/operator"


# --------------------------------------------------------------------------- formatting


def fmt_time(moment: datetime | None, now: datetime | None = None) -> str:
    """Local (Amsterdam) time: ``14:03:05`` today, else ``3 mrt 14:03``."""
    if moment is None:
        return "–"
    local = moment.astimezone(AMSTERDAM)
    today = (now or datetime.now(UTC)).astimezone(AMSTERDAM).date()
    if local.date() == today:
        return local.strftime("%H:%M:%S")
    return f"{local.day} {MONTHS_NL[local.month - 1]} {local.year} {local:%H:%M}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN
        return "–"
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} u {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} u"


def fmt_remaining(due: datetime | None, now: datetime) -> str:
    if due is None:
        return "–"
    delta = (due - now).total_seconds()
    return f"nog {fmt_duration(delta)}" if delta >= 0 else f"{fmt_duration(delta)} te laat"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def fmt_owner(owner: str) -> str:
    kind, _, ident = owner.partition(":")
    if kind == "initiative":
        found = load_initiatives().get(ident)
        return f"Initiatief: {found.name if found else ident}"
    try:
        return f"Organisatie: {load_agencies().get(ident).name}"
    except (KeyError, ValueError):
        return owner


def agency_name(code: str | AgencyCode | None) -> str:
    if code is None:
        return "–"
    try:
        return load_agencies().get(code).name
    except (KeyError, ValueError):
        return str(code)


def initiative_name(initiative_id: str) -> str:
    found = load_initiatives().get(initiative_id)
    return found.name if found else initiative_id


def describe(entry: TimelineEntry) -> str:
    """The details of a timeline entry in Dutch (no personal data is ever on a timeline)."""
    d = entry.detail
    kind = entry.kind
    if kind == "routed":
        parts = [CAUSE_NL.get(str(d.get("cause", "initial")), str(d.get("cause")))]
        if d.get("agencies"):
            parts.append("naar " + ", ".join(agency_name(a) for a in d["agencies"]))
        return "; ".join(parts)
    if kind == "offered":
        return ROLE_NL.get(str(d.get("role", "lead")), str(d.get("role")))
    if kind == "accepted":
        text = f"door {d.get('contact', 'onbekend')}"
        if d.get("expected_by"):
            expected = datetime.fromtimestamp(int(d["expected_by"]) / 1000, UTC)
            text += f"; verwacht klaar {fmt_time(expected)}"
        return text
    if kind == "declined":
        return (
            f"reden: {d.get('reason', '')}; voorstel: {agency_name(d.get('suggested'))}; "
            f"afwijzing {d.get('count', '?')} van deze zaak"
        )
    if kind == "escalated":
        reason = REASON_NL.get(str(d.get("reason")), str(d.get("reason")))
        text = f"{reason}, naar {agency_name(d.get('to'))}"
        return text + (f"; notitie: {d['note']}" if d.get("note") else "")
    if kind == "resolved":
        return str(d.get("summary") or "")
    if kind in ("sla_warning", "sla_breached"):
        due = datetime.fromtimestamp(int(d.get("due", 0)) / 1000, UTC)
        return f"{SLA_NL.get(str(d.get('sla')), d.get('sla'))}-SLA, deadline {fmt_time(due)}"
    if kind == "rejected":
        return str(d.get("reason", ""))
    if kind in ("consent_given", "consent_withdrawn"):
        return "categorieën: " + ", ".join(str(c) for c in d.get("categories", []))
    return ""


def sla_state(h: Handoff) -> tuple[str, str]:
    """(css class, Dutch label) of a handoff's current SLA."""
    if not h.is_open:
        return ("", "–")
    if h.breached:
        return ("verlopen", "Verlopen")
    if h.warned:
        return ("dreigend", "Dreigend")
    return ("op-tijd", "Op tijd")


# --------------------------------------------------------------------------- templates

_ENV: jinja2.Environment | None = None


def templates() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("loket_handoff", "templates/operator"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals.update(
            fmt_time=fmt_time,
            fmt_duration=fmt_duration,
            fmt_remaining=fmt_remaining,
            fmt_pct=fmt_pct,
            fmt_owner=fmt_owner,
            agency_name=agency_name,
            initiative_name=initiative_name,
            describe=describe,
            sla_state=sla_state,
            STATE_NL=STATE_NL,
            KIND_NL=KIND_NL,
            SLA_NL=SLA_NL,
            REASON_NL=REASON_NL,
            ROLE_NL=ROLE_NL,
            REFRESH_S=REFRESH_S,
            LIST_LIMIT=LIST_LIMIT,
        )
        _ENV = env
    return _ENV


def render(name: str, **context: Any) -> str:
    return templates().get_template(name).render(**context)


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        body,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/operator/login?volgende={quote(target)}", status_code=303)


# --------------------------------------------------------------------------- router


def build_operator_router() -> APIRouter:
    """The operator page, its fragment, case drill-down, login/logout and static files."""
    router = APIRouter(lifespan=operator_lifespan, include_in_schema=False)

    def page_context(o: Overview) -> dict[str, Any]:
        return {"o": o, "now": o.generated_at}

    @router.get("/operator")
    async def overview_page(request: Request) -> Response:
        try:
            authenticate(request)
        except NotAuthenticated:
            return _login_redirect(request)
        o = await operator_state(request.app).overview()
        return _html(render("page.html", **page_context(o)))

    @router.get("/operator/fragment")
    async def overview_fragment(request: Request) -> Response:
        try:
            authenticate(request)
        except NotAuthenticated:
            return _html("<p>Niet ingelogd.</p>", 401)
        o = await operator_state(request.app).overview()
        return _html(render("fragment.html", **page_context(o)))

    @router.get("/operator/cases/{case_id}")
    async def case_page(
        request: Request, case_id: Annotated[str, Path(pattern=ID_PATTERN)]
    ) -> Response:
        try:
            authenticate(request)
        except NotAuthenticated:
            return _login_redirect(request)
        state = operator_state(request.app)
        await state.ensure_ready()
        found = await state.store.case_view(case_id)
        if found is None:
            return _html(render("notfound.html", what=f"zaak {case_id}"), 404)
        case, handoffs = found
        timeline = await state.store.timeline(case_id)
        ordered = sorted(handoffs, key=lambda h: h.offered_at)
        index = {h.handoff_id: n for n, h in enumerate(ordered, 1)}
        return _html(
            render(
                "case.html",
                case=case,
                handoffs=ordered,
                timeline=timeline,
                index=index,
                now=datetime.now(UTC),
                time_scale=state.time_scale,
            )
        )

    @router.get("/operator/zoek")
    async def find_case(
        request: Request,
        referentie: Annotated[str, Query(max_length=40)] = "",
    ) -> Response:
        try:
            authenticate(request)
        except NotAuthenticated:
            return _login_redirect(request)
        state = operator_state(request.app)
        await state.ensure_ready()
        reference = referentie.strip().upper()
        case_id = await state.store.case_id_for_reference(reference) if reference else None
        if case_id is None:
            return _html(render("notfound.html", what=f"referentie {reference or '(leeg)'}"), 404)
        return RedirectResponse(f"/operator/cases/{quote(case_id)}", status_code=303)

    @router.get("/operator/login")
    async def login_form(request: Request, volgende: str | None = None) -> Response:
        return _html(render("login.html", error=None, volgende=_safe_next(volgende)))

    @router.post("/operator/login")
    async def login(
        request: Request,
        sleutel: Annotated[str, Form(max_length=200)] = "",
        volgende: Annotated[str, Form(max_length=500)] = "/operator",
    ) -> Response:
        target = _safe_next(volgende)
        if not sleutel.strip():
            return _html(
                render("login.html", error="Vul de operatorsleutel in.", volgende=target), 422
            )
        digest = operator_key_hash(request, sleutel.strip())
        if digest is None:
            log.info("operator_login_failed")
            return _html(
                render(
                    "login.html",
                    error="Deze sleutel is onbekend of is geen operatorsleutel.",
                    volgende=target,
                ),
                401,
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            make_session(request, digest),
            max_age=SESSION_S,
            path="/operator",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        log.info("operator_login", key_id=digest[:8])
        return response

    @router.post("/operator/logout")
    async def logout() -> Response:
        response = RedirectResponse("/operator/login", status_code=303)
        response.delete_cookie(COOKIE, path="/operator", httponly=True, samesite="strict")
        return response

    @router.get("/operator/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        body = (
            resources.files("loket_handoff")
            .joinpath("templates", "operator", name)
            .read_text(encoding="utf-8")
        )
        return Response(
            body,
            media_type=STATIC[name],
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    return router


__all__ = [
    "METRIC_NAMES",
    "OperatorMetrics",
    "Overview",
    "build_operator_router",
    "gather_overview",
]
