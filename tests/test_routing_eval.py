"""Quality guard of the routing engine on the labelled (synthetic) sets.

Targets from the issue: lead accuracy >= 90%, agency micro recall >= 90% and precision >= 85%,
over the whole team set (dev + dev-holdout) and over the independent set
(tests/data/routing_eval_independent.jsonl, written by another engineer before reading the team
set or the catalog). See docs/routing.md for the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loket_router.classify import evaluate, load_labelled, split_rows
from loket_schemas.vocabulary import AgencyCode

EVAL_SET = Path(__file__).parent / "data" / "routing_eval.jsonl"
INDEPENDENT_SET = Path(__file__).parent / "data" / "routing_eval_independent.jsonl"


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return load_labelled(EVAL_SET)


def test_eval_set_is_large_and_covers_every_agency(rows: list[dict[str, object]]) -> None:
    assert len(rows) >= 240
    covered = {code for row in rows for code in row["agencies"]}  # type: ignore[attr-defined]
    assert covered == {code.value for code in AgencyCode}
    holdout = split_rows(rows, "holdout")
    assert 0.2 <= len(holdout) / len(rows) <= 0.3
    assert EVAL_SET.read_text(encoding="utf-8").splitlines()[0].find("SYNTHETIC") > 0


def test_routing_quality_targets(rows: list[dict[str, object]]) -> None:
    figures = evaluate(rows)
    report = figures.summary("all") + "\n" + "\n".join(figures.errors)
    assert figures.lead_accuracy >= 0.90, report
    assert figures.recall >= 0.90, report
    assert figures.precision >= 0.85, report


@pytest.fixture(scope="module")
def independent_rows() -> list[dict[str, object]]:
    return load_labelled(INDEPENDENT_SET)


def test_independent_set_is_large_and_covers_every_agency(
    independent_rows: list[dict[str, object]],
) -> None:
    assert len(independent_rows) >= 150
    covered = [code for row in independent_rows for code in row["agencies"]]  # type: ignore[attr-defined]
    assert set(covered) == {code.value for code in AgencyCode}
    multi = [row for row in independent_rows if len(row["agencies"]) >= 2]  # type: ignore[arg-type]
    assert len(multi) >= 0.2 * len(independent_rows)
    assert INDEPENDENT_SET.read_text(encoding="utf-8").splitlines()[0].find("SYNTHETIC") > 0


def test_routing_quality_targets_on_independent_set(
    independent_rows: list[dict[str, object]],
) -> None:
    figures = evaluate(independent_rows)
    report = figures.summary("independent") + "\n" + "\n".join(figures.errors)
    assert figures.lead_accuracy >= 0.90, report
    assert figures.recall >= 0.90, report
    assert figures.precision >= 0.85, report
