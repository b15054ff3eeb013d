"""``make demo``: realistic traffic for a running stack (``python -m loket_handoff.demo``).

* **Front desks**: the 25 practice initiatives post questions to intake
  (``POST /api/v1/questions`` with their development key ``dev-<initiative-id>``): plain
  Dutch questions that touch one to three agencies, on the channel that fits the desk,
  sometimes urgent or from a vulnerable person, with varied consent choices.
* **Agency responders**: every agency polls its offered handoffs on the handoff service
  (``GET /api/v1/handoffs?agency=<code>&state=offered`` with ``dev-<code>``) and mostly
  accepts with a named contact person, sometimes declines with a reason and a suggested
  agency, and sometimes does nothing, so SLA warnings, breaches and escalations happen.
  Accepted handoffs are resolved later (a few are left to run into the resolve SLA).
  Response delays are fractions of each handoff's own SLA window, so the demo behaves the
  same at any ``LOKET_HANDOFF_TIME_SCALE``; with ``LOKET_HANDOFF_TIME_SCALE=1800 make up``
  a normal acceptance SLA (16 business hours) lasts 32 seconds.

Runs until Ctrl-C (or ``--duration``), printing a one-line summary every few seconds.
Development keys only: never point it at a production deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from loket_schemas.catalog import Initiative, InitiativeKind, load_agencies, load_initiatives
from loket_schemas.vocabulary import AgencyCode, bsn_is_valid

DEMO_TIME_SCALE = 1800

# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Scenario:
    text: str
    categories: tuple[str, ...] = ()
    """Data categories a consenting person would typically share for this question."""
    business: bool = False
    urgent_chance: float = 0.08
    vulnerable_chance: float = 0.12


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "Ik heb een studieschuld bij DUO en kan de aflossing niet meer betalen sinds ik mijn "
        "baan kwijt ben. Ik krijg nu een WW-uitkering van het UWV.",
        ("income", "debts", "benefits"),
    ),
    Scenario(
        "Mijn huurtoeslag is stopgezet en ik moet ruim 1.800 euro terugbetalen. Ik begrijp "
        "de brief niet en weet niet hoe ik een betalingsregeling kan treffen.",
        ("income", "household", "debts"),
        vulnerable_chance=0.3,
    ),
    Scenario(
        "Ik heb een boete van het CJIB gekregen voor een auto die al maanden niet meer op "
        "mijn naam staat. Bij de RDW staat het kenteken nog steeds op mij.",
        ("identity",),
    ),
    Scenario(
        "Mijn moeder krijgt AOW van de SVB en moet een eigen bijdrage aan het CAK betalen "
        "voor haar thuiszorg. Die rekening is veel hoger dan vorig jaar.",
        ("income", "benefits", "health"),
        vulnerable_chance=0.4,
    ),
    Scenario(
        "Ik ben mijn baan kwijtgeraakt en wil bijstand aanvragen bij de gemeente. Ik heb "
        "ook een achterstand bij de zorgverzekeraar en de energieleverancier.",
        ("income", "debts", "household"),
        urgent_chance=0.2,
        vulnerable_chance=0.35,
    ),
    Scenario(
        "Mijn verblijfsvergunning moet verlengd worden, maar de IND reageert al maanden "
        "niet. Mijn werkgever wil een bewijs dat ik mag blijven werken.",
        ("residence_status", "identity"),
        urgent_chance=0.2,
    ),
    Scenario(
        "Ik ben net als zzp'er begonnen. Moet ik me inschrijven bij de KVK en kan ik "
        "subsidie van RVO krijgen voor een elektrische bestelbus?",
        ("business",),
        business=True,
    ),
    Scenario(
        "De aanslag van het waterschap is te hoog en ik kan hem niet betalen. Bij de "
        "gemeente heb ik al kwijtschelding gevraagd, maar ik hoor niets.",
        ("income", "debts"),
    ),
    Scenario(
        "Ik heb een verklaring omtrent het gedrag nodig voor mijn nieuwe baan in de zorg. "
        "Mijn aanvraag bij Justis staat al drie weken op 'in behandeling'.",
        ("identity",),
        urgent_chance=0.15,
    ),
    Scenario(
        "Mijn zoon studeert en krijgt ineens geen studiefinanciering meer van DUO. Ook "
        "zijn zorgtoeslag is stopgezet. Hoe kan dat?",
        ("income", "household"),
    ),
    Scenario(
        "Door werkzaamheden aan de snelweg van Rijkswaterstaat is er schade aan ons huis. "
        "Bij wie kan ik een schadeclaim indienen?",
        ("contact",),
    ),
    Scenario(
        "Ik weet niet waar ik moet beginnen: ik heb schulden, een brief van de "
        "Belastingdienst over een naheffing en mijn uitkering van het UWV is gestopt.",
        ("income", "debts", "benefits", "household"),
        urgent_chance=0.25,
        vulnerable_chance=0.5,
    ),
    Scenario(
        "Ik ontvang een Wajong-uitkering en ga meer uren werken. Wat betekent dat voor "
        "mijn uitkering en voor mijn huurtoeslag?",
        ("income", "benefits"),
    ),
    Scenario(
        "Na de scheiding moet ik de kinderopvangtoeslag en het kindgebonden budget "
        "opnieuw regelen. Ook de kinderbijslag moet naar mijn rekening.",
        ("income", "household", "benefits"),
        vulnerable_chance=0.25,
    ),
    Scenario(
        "Ik heb een aanmaning van het CJIB voor een verkeersboete die ik al betaald heb. "
        "Nu is de boete verhoogd en dreigt er beslag op mijn loon.",
        ("debts", "income"),
        urgent_chance=0.3,
    ),
    Scenario(
        "Mijn vader is overleden. Ik moet zijn AOW stopzetten, de aangifte inkomstenbelasting "
        "regelen en er is nog een openstaande rekening van het CAK.",
        ("identity", "income"),
        vulnerable_chance=0.3,
    ),
    Scenario(
        "Ik wil mijn bedrijf uitschrijven bij de KVK omdat ik stop als zelfstandige. Wat "
        "moet ik doen voor de btw bij de Belastingdienst?",
        ("business",),
        business=True,
    ),
    Scenario(
        "Mijn werkgever is failliet en betaalt mijn loon niet meer. Kan het UWV het loon "
        "overnemen? Ik heb ook mijn huur nog niet betaald.",
        ("income", "debts"),
        urgent_chance=0.35,
    ),
    Scenario(
        "Ik ben met mijn gezin naar Nederland gekomen en heb een verblijfsvergunning. Hoe "
        "vraag ik kinderbijslag en zorgtoeslag aan?",
        ("residence_status", "household"),
    ),
    Scenario(
        "Mijn rijbewijs is ingevorderd en ik heb een brief van het CBR en de RDW gekregen. "
        "Ik heb mijn auto nodig voor mijn werk.",
        ("identity",),
    ),
    Scenario(
        "Wij hebben een boerenbedrijf en hebben vragen over de mestregels en een "
        "subsidieregeling van RVO. De gemeente verwijst ons door.",
        ("business",),
        business=True,
    ),
    Scenario(
        "Ik krijg een brief dat ik te veel WW heb ontvangen en dat ik 2.400 euro moet "
        "terugbetalen. Ik heb daar geen geld voor en ik heb al andere schulden.",
        ("income", "debts", "benefits"),
        vulnerable_chance=0.4,
    ),
    Scenario(
        "Ons huis stond onder water na de storm. Wie is verantwoordelijk voor de sloot "
        "achter ons huis: het waterschap of de gemeente?",
        ("contact",),
    ),
    Scenario(
        "Ik heb een conflict met mijn verhuurder over achterstallig onderhoud en hij dreigt "
        "met ontruiming. Waar kan ik juridisch advies krijgen?",
        ("household", "income"),
        urgent_chance=0.4,
        vulnerable_chance=0.35,
    ),
    Scenario(
        "Mijn zorgkosten zijn hoog door een chronische ziekte. Kan ik een tegemoetkoming "
        "krijgen van de gemeente en klopt mijn eigen bijdrage bij het CAK?",
        ("health", "income"),
        vulnerable_chance=0.45,
    ),
    Scenario(
        "De Belastingdienst heeft mijn voorlopige aanslag verhoogd en ik begrijp niet "
        "waarom. Ik heb ook een nieuwe baan sinds april.",
        ("income",),
    ),
    Scenario(
        "Ik heb een aanvraag voor een Tozo-achtige regeling gedaan bij de gemeente maar "
        "moet nu geld terugbetalen. Tegelijk loopt er een belastingschuld.",
        ("income", "debts", "business"),
        business=True,
    ),
    Scenario(
        "Mijn kind van 17 gaat naar het mbo. Wanneer krijgt hij studiefinanciering en "
        "stopt dan de kinderbijslag van de SVB?",
        ("household",),
    ),
)

FIRST = (
    "Fatima",
    "Joost",
    "Sanne",
    "Mohamed",
    "Anouk",
    "Pieter",
    "Noor",
    "Daan",
    "Emma",
    "Youssef",
    "Lotte",
    "Bram",
    "Ayşe",
    "Kevin",
    "Iris",
    "Sem",
    "Eva",
    "Ruben",
    "Priya",
    "Tom",
)
LAST = (
    "de Vries",
    "Jansen",
    "el Amrani",
    "Bakker",
    "Visser",
    "Smit",
    "Meijer",
    "de Boer",
    "Mulder",
    "Yılmaz",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
    "van Dijk",
    "Kaya",
    "de Groot",
    "Brouwer",
    "Dekker",
    "Verbeek",
)

DECLINE_SUGGEST: dict[str, tuple[str, ...]] = {
    "belastingdienst": ("toeslagen", "cjib", "gemeente"),
    "toeslagen": ("belastingdienst", "gemeente", "svb"),
    "uwv": ("gemeente", "svb", "belastingdienst"),
    "svb": ("uwv", "gemeente", "toeslagen"),
    "duo": ("uwv", "toeslagen", "belastingdienst"),
    "cjib": ("rdw", "justis", "gemeente"),
    "cak": ("gemeente", "svb", "belastingdienst"),
    "ind": ("gemeente", "juridisch-loket", "svb"),
    "rdw": ("cjib", "rijkswaterstaat", "gemeente"),
    "justis": ("ind", "cjib", "gemeente"),
    "rvo": ("kvk", "belastingdienst", "gemeente"),
    "kvk": ("rvo", "belastingdienst", "gemeente"),
    "gemeente": ("uwv", "waterschap", "juridisch-loket"),
    "waterschap": ("gemeente", "rijkswaterstaat", "belastingdienst"),
    "rijkswaterstaat": ("waterschap", "gemeente", "rdw"),
    "juridisch-loket": ("gemeente", "cjib", "uwv"),
}
DECLINE_REASONS = (
    "Deze vraag valt niet onder onze regelingen; {name} gaat hierover.",
    "Wij hebben geen dossier van deze persoon; de vraag hoort bij {name}.",
    "Het gaat om een besluit van {name}; wij kunnen dat niet wijzigen.",
    "Geen taak van ons volgens de wet; graag doorzetten naar {name}.",
)


def random_bsn(rng: random.Random) -> str:
    """A random 9-digit number that passes the eleven-test (fake, demo only)."""
    while True:
        digits = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(7)]
        total = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True))
        check = total % 11
        if check < 10:
            bsn = "".join(map(str, digits)) + str(check)
            if bsn_is_valid(bsn):
                return bsn


def channel_for(initiative: Initiative, rng: random.Random) -> str:
    if initiative.kind is InitiativeKind.ONLINE:
        if "chat" in initiative.id:
            return "chat"
        if "web" in initiative.id:
            return rng.choice(("web", "web", "email"))
        return "telefoon"
    return rng.choices(("balie", "telefoon", "email", "brief"), (70, 20, 7, 3))[0]


def question_body(initiative: Initiative, rng: random.Random) -> dict[str, Any]:
    """A realistic question from one initiative: text, channel, flags, requester, consent."""
    scenario = rng.choice(SCENARIOS)
    body: dict[str, Any] = {
        "channel": channel_for(initiative, rng),
        "initiative": initiative.id,
        "text": scenario.text,
        "urgent": rng.random() < scenario.urgent_chance,
        "vulnerable": rng.random() < scenario.vulnerable_chance,
    }
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    contact = {"name": name, "email": f"burger{rng.randint(1000, 9999)}@example.nl"}
    if scenario.business:
        body["requester"] = {
            "kind": "business",
            "kvk_number": f"{rng.randint(10_000_000, 99_999_999)}",
            "trade_name": f"{name.split()[-1]} Advies",
            "contact": contact,
        }
    elif rng.random() < 0.75:
        body["requester"] = {"kind": "person", "bsn": random_bsn(rng), "contact": contact}
    choice = rng.random()
    if choice < 0.7:  # consents to what the question needs
        categories = ["identity", "contact", "question_text", *scenario.categories]
        body["consent"] = {
            "categories": sorted(set(categories)),
            "explicit": "health" in categories,
        }
    elif choice < 0.88:  # only the question itself
        body["consent"] = {"categories": ["question_text"]}
    # else: no consent: only what a legal basis allows travels
    return body


# --------------------------------------------------------------------------- state


@dataclass
class Plan:
    action: str  # accept | accept_slow | decline | ignore | resolve | hold
    at: float


@dataclass
class DemoStats:
    started: float = field(default_factory=time.monotonic)
    counts: Counter[str] = field(default_factory=Counter)

    def line(self, figures: dict[str, float] | None) -> str:
        c = self.counts
        elapsed = int(time.monotonic() - self.started)
        parts = [
            f"[demo {elapsed // 60:02d}:{elapsed % 60:02d}]",
            f"questions {c['questions']} sent, {c['question_errors']} failed",
            f"| offers {c['offers_seen']}: accepted {c['accepted']}, declined {c['declined']}, "
            f"ignored {c['ignored']}, resolved {c['resolved']}",
        ]
        if c["response_errors"]:
            parts.append(f"({c['response_errors']} responses refused)")
        if figures is not None:
            parts.append(
                f"| handoff: open {figures.get('open', 0):.0f}, at risk "
                f"{figures.get('at_risk', 0):.0f}, SLA breached {figures.get('breached', 0):.0f}, "
                f"escalations {figures.get('escalations', 0):.0f} (sla "
                f"{figures.get('esc_sla', 0):.0f}, bounce {figures.get('esc_bounce_limit', 0):.0f})"
            )
        else:
            parts.append("| handoff metrics unavailable")
        return " ".join(parts)


def parse_metrics(text: str) -> dict[str, float]:
    """The handoff figures the summary line needs, from Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        if number != number:  # NaN
            continue
        name = name_labels.split("{", 1)[0]
        if name == "loket_handoff_open":
            out["open"] = out.get("open", 0) + number
        elif name == "loket_handoff_at_risk_total_open":
            out["at_risk"] = number
        elif name == "loket_handoff_breached_total_open":
            out["breached"] = number
        elif name == "loket_handoff_escalations_by_reason":
            reason = name_labels.split('reason="', 1)[-1].split('"', 1)[0]
            out[f"esc_{reason}"] = number
            out["escalations"] = out.get("escalations", 0) + number
        elif name == "loket_handoff_time_scale":
            out["time_scale"] = number
    return out


# --------------------------------------------------------------------------- demo


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.stats = DemoStats()
        self.stop = asyncio.Event()
        self.plans: dict[str, Plan] = {}
        self.initiatives = load_initiatives().initiatives
        self.agencies = load_agencies()
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))

    def out(self, text: str) -> None:
        print(text, flush=True)

    async def preflight(self) -> bool:
        for name, url in (("intake", self.args.intake_url), ("handoff", self.args.handoff_url)):
            try:
                response = await self.http.get(f"{url}/readyz")
            except httpx.HTTPError as exc:
                self.out(f"demo: {name} is not reachable at {url} ({type(exc).__name__}).")
                self.out("demo: start the stack first: LOKET_HANDOFF_TIME_SCALE=1800 make up")
                return False
            if response.status_code != 200:
                self.out(f"demo: {name} at {url} is not ready: {response.text[:200]}")
                return False
        figures = await self.figures()
        scale = (figures or {}).get("time_scale")
        self.out(
            f"demo: intake {self.args.intake_url}, handoff {self.args.handoff_url}; "
            f"{self.args.rate:g} questions/s from {len(self.initiatives)} initiatives, "
            f"{len(self.agencies.agencies)} agency responders"
        )
        self.out(
            f"demo: operator page {self.args.handoff_url}/operator "
            "(development key: dev-operator); Ctrl-C stops"
        )
        if scale is not None and scale < 60:
            self.out(
                f"demo: WARNING: the handoff SLA clock runs at {scale:g}x (real business "
                "hours), so SLA warnings and escalations will take hours. For a demo restart "
                f"the stack with: make down && LOKET_HANDOFF_TIME_SCALE={DEMO_TIME_SCALE} make up"
            )
        elif scale is not None:
            accept = 16 * 3600 / scale
            self.out(
                f"demo: SLA clock {scale:g}x: a normal acceptance SLA (16 business hours) "
                f"lasts {accept:.0f} s, so warnings and escalations show within a minute"
            )
        return True

    async def figures(self) -> dict[str, float] | None:
        try:
            response = await self.http.get(f"{self.args.handoff_url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        return parse_metrics(response.text)

    # ------------------------------------------------------------------ desks

    async def desks(self) -> None:
        interval = 1.0 / self.args.rate
        while not self.stop.is_set():
            initiative = self.rng.choice(self.initiatives)
            body = question_body(initiative, self.rng)
            try:
                response = await self.http.post(
                    f"{self.args.intake_url}/api/v1/questions",
                    json=body,
                    headers={
                        "X-API-Key": f"dev-{initiative.id}",
                        "Idempotency-Key": str(uuid.uuid4()),
                    },
                )
                if response.status_code == 202:
                    self.stats.counts["questions"] += 1
                else:
                    self.stats.counts["question_errors"] += 1
                    if self.stats.counts["question_errors"] <= 3:
                        self.out(f"demo: intake said {response.status_code}: {response.text[:300]}")
            except httpx.HTTPError as exc:
                self.stats.counts["question_errors"] += 1
                if self.stats.counts["question_errors"] <= 3:
                    self.out(f"demo: intake unreachable: {type(exc).__name__}")
            await self.sleep(self.rng.expovariate(1.0 / interval))

    # ------------------------------------------------------------------ agencies

    def contact(self, agency: str) -> dict[str, str]:
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        local = f"{first}.{last}".lower().replace(" ", "")
        return {
            "name": f"{first} {last}",
            "email": f"{local}@{agency}.example.nl",
            "phone": f"088-{self.rng.randint(1000000, 9999999)}",
        }

    def plan_offer(self, h: dict[str, Any], now: float) -> Plan:
        """What this agency will do with an offer, and when (a fraction of its SLA window)."""
        offered = datetime.fromisoformat(h["offered_at"])
        due = datetime.fromisoformat(h["accept_due_at"])
        window = max(1.0, (due - offered).total_seconds())
        left = max(0.0, (due - datetime.now(UTC)).total_seconds())
        roll = self.rng.random()
        if h["agency"] == AgencyCode.MAATWERKLOKET.value:  # cannot decline; rarely slow
            action, frac = ("accept", self.rng.uniform(0.1, 0.5)) if roll < 0.85 else ("ignore", 0)
        elif roll < 0.60:
            action, frac = "accept", self.rng.uniform(0.05, 0.55)
        elif roll < 0.70:
            action, frac = "accept_slow", self.rng.uniform(0.8, 0.95)  # after the warning
        elif roll < 0.84:
            action, frac = "decline", self.rng.uniform(0.1, 0.5)
        else:
            action, frac = "ignore", 0.0
        delay = min(window * frac, left) if action != "ignore" else 0.0
        return Plan(action, now + max(0.3, delay))

    def plan_resolve(self, h: dict[str, Any], now: float) -> Plan:
        accepted = datetime.fromisoformat(h.get("accepted_at") or h["offered_at"])
        due_s = h.get("resolve_due_at")
        window = (datetime.fromisoformat(due_s) - accepted).total_seconds() if due_s else 30.0
        if self.rng.random() < 0.1:
            return Plan("hold", float("inf"))  # left open: the resolve SLA fires
        return Plan("resolve", now + max(0.5, window * self.rng.uniform(0.05, 0.5)))

    async def respond(self, code: str, h: dict[str, Any], action: str) -> None:
        url = f"{self.args.handoff_url}/api/v1/handoffs/{h['handoff_id']}"
        headers = {"X-API-Key": f"dev-{code}"}
        if action in ("accept", "accept_slow"):
            body: dict[str, Any] = {"contact": self.contact(code)}
            if self.rng.random() < 0.5:
                days = self.rng.randint(2, 20)
                body["expected_by"] = (datetime.now(UTC) + timedelta(days=days)).isoformat()
            response = await self.http.post(f"{url}/accept", json=body, headers=headers)
            kind = "accepted"
        elif action == "decline":
            suggested = self.rng.choice(DECLINE_SUGGEST.get(code, ("gemeente",)))
            reason = self.rng.choice(DECLINE_REASONS).format(name=self.agencies.get(suggested).name)
            response = await self.http.post(
                f"{url}/decline",
                json={"reason": reason, "suggested_agency": suggested},
                headers=headers,
            )
            kind = "declined"
        else:
            response = await self.http.post(
                f"{url}/resolve",
                json={"summary": "Vraag beantwoord en afgehandeld."},
                headers=headers,
            )
            kind = "resolved"
        if response.status_code == 200:
            self.stats.counts[kind] += 1
        else:  # e.g. 409: escalated in the meantime
            self.stats.counts["response_errors"] += 1

    async def agency(self, code: str) -> None:
        headers = {"X-API-Key": f"dev-{code}"}
        base = f"{self.args.handoff_url}/api/v1/handoffs"
        while not self.stop.is_set():
            try:
                for state in ("offered", "accepted"):
                    response = await self.http.get(
                        base, params={"agency": code, "state": state, "limit": 200}, headers=headers
                    )
                    response.raise_for_status()
                    now = time.monotonic()
                    for h in response.json()["handoffs"]:
                        key = f"{h['handoff_id']}:{state}"
                        plan = self.plans.get(key)
                        if plan is None:
                            if state == "offered":
                                plan = self.plan_offer(h, now)
                                self.stats.counts["offers_seen"] += 1
                                if plan.action == "ignore":
                                    self.stats.counts["ignored"] += 1
                            else:
                                plan = self.plan_resolve(h, now)
                            self.plans[key] = plan
                        if plan.action not in ("ignore", "hold") and plan.at <= now:
                            plan.action = "done:" + plan.action
                            action = plan.action.removeprefix("done:")
                            await self.respond(code, h, action)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.stats.counts["poll_errors"] += 1
                if self.stats.counts["poll_errors"] <= 3:
                    self.out(f"demo: {code} responder: {type(exc).__name__}: {exc}"[:300])
            await self.sleep(self.args.poll * self.rng.uniform(0.8, 1.2))

    # ------------------------------------------------------------------ loop

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    async def reporter(self) -> None:
        while not self.stop.is_set():
            await self.sleep(self.args.summary_every)
            self.out(self.stats.line(await self.figures()))

    async def run(self) -> int:
        try:
            if not await self.preflight():
                return 2
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop.set)
            tasks = [asyncio.create_task(self.desks(), name="desks")]
            tasks += [
                asyncio.create_task(self.agency(a.code.value), name=f"agency-{a.code.value}")
                for a in self.agencies.agencies
            ]
            tasks.append(asyncio.create_task(self.reporter(), name="reporter"))
            if self.args.duration:
                await self.sleep(self.args.duration)
                self.stop.set()
            await self.stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.out(self.stats.line(await self.figures()))
            self.out("demo: stopped")
            return 0
        finally:
            await self.http.aclose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loket_handoff.demo",
        description="Feed realistic traffic into a running Loket stack (make up).",
    )
    parser.add_argument(
        "--intake-url",
        default=os.environ.get("LOKET_INTAKE_URL", "http://127.0.0.1:8000"),
        help="intake base URL (env LOKET_INTAKE_URL)",
    )
    parser.add_argument(
        "--handoff-url",
        default=os.environ.get("LOKET_HANDOFF_URL", "http://127.0.0.1:8002"),
        help="handoff base URL (env LOKET_HANDOFF_URL)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="questions per second (1)")
    parser.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    parser.add_argument("--poll", type=float, default=1.0, help="agency poll interval (1 s)")
    parser.add_argument("--summary-every", type=float, default=5.0, help="summary period (5 s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.poll <= 0 or args.summary_every <= 0 or args.duration < 0:
        parser.error("rate, poll and summary-every must be positive; duration >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(Demo(args).run())
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
