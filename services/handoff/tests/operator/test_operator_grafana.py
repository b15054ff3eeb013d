"""deploy/grafana/loket-dashboard.json is valid and uses only metrics the service exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from loket_handoff.app import create_app
from loket_handoff.operator import METRIC_NAMES, operator_state
from loket_handoff.settings import HandoffSettings
from loket_runtime.testing import repo_root

DASHBOARD = repo_root() / "deploy" / "grafana" / "loket-dashboard.json"
METRIC = re.compile(r"\bloket_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum", "_created"),
}


def exported_names() -> set[str]:
    """Every series name the handoff app's registry can expose (labelled or not)."""
    app = create_app(HandoffSettings(handoff_dev_keys=True))
    operator_state(app)  # registers the operator gauges (normally at start-up)
    names: set[str] = set()
    for family in app.state.runtime.registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    exprs = [n["expr"] for n in walk(dashboard["panels"]) if "expr" in n]
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    exported = exported_names()
    missing = sorted(used - exported)
    assert not missing, f"dashboard uses metrics the service does not export: {missing}"
    # every operator gauge is on the dashboard
    assert set(METRIC_NAMES) <= used, sorted(set(METRIC_NAMES) - used)
    ids = [p["id"] for p in walk(dashboard["panels"]) if "gridPos" in p]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
