"""Command line for the routing engine.

``python -m loket_router.classify`` reads JSON lines ``{"id", "text", "vulnerable"?}`` on stdin
and writes ``{"id", "lead", "agencies", "reasons"}`` lines on stdout. A bad line gets a clear
error on stderr naming its line number; the rest is processed and the exit code is 1.

``python -m loket_router.classify --evaluate FILE [--split all|dev|holdout] [--errors]``
prints lead accuracy and agency micro precision/recall over a labelled set (lines with
``"lead"`` and ``"agencies"``; a line with ``"_comment"`` only is skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from loket_router.routing import RoutingDecision, classify


def decision_json(case_id: Any, decision: RoutingDecision) -> dict[str, Any]:
    """The output line for one routed question."""
    return {
        "id": case_id,
        "lead": decision.lead.value,
        "agencies": [a.agency.value for a in decision.assignments],
        "reasons": decision.reasons,
    }


class BadLine(ValueError):
    """An input line that cannot be routed."""


def parse_line(line: str) -> tuple[Any, str, bool]:
    """(id, text, vulnerable) of one input line, or BadLine with the reason."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadLine(f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise BadLine("expected a JSON object")
    if "id" not in obj or not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
        raise BadLine('"id" (string or integer) is required')
    text = obj.get("text")
    if not isinstance(text, str):
        raise BadLine('"text" (string) is required')
    vulnerable = obj.get("vulnerable", False)
    if not isinstance(vulnerable, bool):
        raise BadLine('"vulnerable" must be true or false')
    return obj["id"], text, vulnerable


def run_stream(lines: Iterable[str], out: IO[str], err: IO[str]) -> int:
    """Classify JSON lines; returns the exit code (1 if any line was bad)."""
    bad = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            case_id, text, vulnerable = parse_line(line)
        except BadLine as exc:
            bad += 1
            print(f"line {number}: {exc}", file=err)
            continue
        decision = classify(text, vulnerable=vulnerable)
        out.write(json.dumps(decision_json(case_id, decision), ensure_ascii=False) + "\n")
        out.flush()
    if bad:
        print(f"{bad} bad line(s)", file=err)
    return 1 if bad else 0


# --------------------------------------------------------------------------- evaluation


@dataclass
class Figures:
    """Evaluation figures over a labelled set."""

    cases: int = 0
    lead_correct: int = 0
    true_positive: int = 0
    predicted: int = 0
    expected: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def lead_accuracy(self) -> float:
        return self.lead_correct / self.cases if self.cases else 0.0

    @property
    def precision(self) -> float:
        return self.true_positive / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positive / self.expected if self.expected else 0.0

    def summary(self, title: str) -> str:
        return (
            f"{title}: n={self.cases} lead_accuracy={self.lead_accuracy:.3f} "
            f"precision={self.precision:.3f} recall={self.recall:.3f}"
        )


def load_labelled(path: Path) -> list[dict[str, Any]]:
    """Labelled examples of an evaluation file (comment lines skipped)."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if "_comment" in obj:
            continue
        for key in ("id", "text", "lead", "agencies"):
            if key not in obj:
                raise ValueError(f"{path}:{number}: missing {key!r}")
        rows.append(obj)
    return rows


def evaluate(rows: Sequence[dict[str, Any]]) -> Figures:
    """Lead accuracy and agency micro precision/recall."""
    figures = Figures()
    for row in rows:
        decision = classify(row["text"], vulnerable=bool(row.get("vulnerable", False)))
        got = [a.agency.value for a in decision.assignments]
        want = list(row["agencies"])
        figures.cases += 1
        figures.lead_correct += decision.lead.value == row["lead"]
        figures.true_positive += len(set(got) & set(want))
        figures.predicted += len(set(got))
        figures.expected += len(set(want))
        if decision.lead.value != row["lead"] or set(got) != set(want):
            figures.errors.append(
                f"{row['id']}: want {row['lead']} {want} got {got} {decision.reasons} "
                f"| {row['text'][:160]}"
            )
    return figures


def split_rows(rows: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Rows of a split: all, dev (not holdout) or holdout (``"split": "holdout"``)."""
    if split == "all":
        return list(rows)
    holdout = split == "holdout"
    return [r for r in rows if (r.get("split") == "holdout") == holdout]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loket_router.classify", description="Route questions to agencies."
    )
    parser.add_argument("--evaluate", type=Path, help="labelled JSON lines file to evaluate")
    parser.add_argument("--split", choices=("all", "dev", "holdout"), default=None)
    parser.add_argument("--errors", action="store_true", help="list misrouted examples")
    args = parser.parse_args(argv)
    if args.evaluate is None:
        return run_stream(sys.stdin, sys.stdout, sys.stderr)
    rows = load_labelled(args.evaluate)
    splits = [args.split] if args.split else ["all", "dev", "holdout"]
    for split in splits:
        figures = evaluate(split_rows(rows, split))
        print(figures.summary(split))
        if args.errors:
            for error in figures.errors:
                print("  " + error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
