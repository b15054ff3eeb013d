"""The demo generator's pieces: questions intake accepts, BSNs, plans, metrics parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from loket_handoff import demo
from loket_intake.domain import QuestionIn, parse_question
from loket_schemas.catalog import load_initiatives
from loket_schemas.vocabulary import bsn_is_valid


def test_generated_questions_pass_intake_validation() -> None:
    rng = random.Random(7)
    initiatives = load_initiatives().initiatives
    seen = {"urgent": 0, "vulnerable": 0, "consent": 0, "business": 0, "health": 0}
    channels = set()
    for _ in range(400):
        initiative = rng.choice(initiatives)
        body = demo.question_body(initiative, rng)
        parsed = parse_question(body)
        assert isinstance(parsed, QuestionIn), (body, parsed)
        assert body["initiative"] == initiative.id
        channels.add(body["channel"])
        seen["urgent"] += body["urgent"]
        seen["vulnerable"] += body["vulnerable"]
        seen["consent"] += "consent" in body
        seen["business"] += body.get("requester", {}).get("kind") == "business"
        seen["health"] += "health" in body.get("consent", {}).get("categories", [])
    assert all(n > 0 for n in seen.values()), seen
    assert seen["consent"] < 400  # some people give no consent
    assert {"balie", "telefoon", "chat", "web"} <= channels


def test_random_bsn_passes_the_eleven_test() -> None:
    rng = random.Random(1)
    assert all(bsn_is_valid(demo.random_bsn(rng)) for _ in range(200))


def test_offer_plans_are_fractions_of_the_sla_window() -> None:
    d = demo.Demo(demo.parse_args(["--seed", "3"]))
    now = datetime.now(UTC)
    offer = {
        "agency": "uwv",
        "offered_at": now.isoformat(),
        "accept_due_at": (now + timedelta(seconds=32)).isoformat(),
    }
    plans = [d.plan_offer(offer, 1000.0) for _ in range(500)]
    actions = {p.action for p in plans}
    assert actions == {"accept", "accept_slow", "decline", "ignore"}
    assert all(1000.0 < p.at <= 1000.0 + 32 for p in plans)
    mwl = [d.plan_offer({**offer, "agency": "maatwerkloket"}, 0.0) for _ in range(200)]
    assert "decline" not in {p.action for p in mwl}  # the escalation point cannot decline


def test_parse_metrics_reads_the_operator_gauges() -> None:
    text = "\n".join(
        [
            "# HELP loket_handoff_open Open handoffs",
            'loket_handoff_open{agency="uwv"} 3.0',
            'loket_handoff_open{agency="duo"} 2.0',
            "loket_handoff_at_risk_total_open 4.0",
            "loket_handoff_breached_total_open 1.0",
            'loket_handoff_escalations_by_reason{reason="sla"} 5.0',
            'loket_handoff_escalations_by_reason{reason="bounce_limit"} 2.0',
            "loket_handoff_median_accept_seconds NaN",
            "loket_handoff_time_scale 1800.0",
        ]
    )
    figures = demo.parse_metrics(text)
    assert figures == {
        "open": 5.0,
        "at_risk": 4.0,
        "breached": 1.0,
        "esc_sla": 5.0,
        "esc_bounce_limit": 2.0,
        "escalations": 7.0,
        "time_scale": 1800.0,
    }
    line = demo.DemoStats().line(figures)
    assert "open 5, at risk 4, SLA breached 1, escalations 7 (sla 5, bounce 2)" in line


def test_arguments() -> None:
    args = demo.parse_args(["--duration", "5", "--rate", "2"])
    assert args.duration == 5 and args.rate == 2 and args.intake_url.startswith("http")
    with pytest.raises(SystemExit):
        demo.parse_args(["--rate", "0"])


async def test_demo_exits_2_with_a_hint_when_the_stack_is_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from loket_runtime.testing import free_port

    port = free_port()
    args = demo.parse_args(
        ["--intake-url", f"http://127.0.0.1:{port}", "--handoff-url", f"http://127.0.0.1:{port}"]
    )
    assert await demo.Demo(args).run() == 2
    assert "make up" in capsys.readouterr().out
