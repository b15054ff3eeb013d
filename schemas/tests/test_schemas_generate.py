"""The committed JSON Schemas in schemas/jsonschema are up to date with the models."""

from __future__ import annotations

from pathlib import Path

from loket_schemas import generate
from loket_schemas.events import MESSAGE_TYPES
from loket_schemas.kafka import schema_uri

COMMITTED = Path(__file__).resolve().parents[1] / "jsonschema"


def test_committed_schemas_are_not_stale(tmp_path: Path) -> None:
    generate.write(tmp_path)
    fresh = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in COMMITTED.glob("*.json")}
    assert sorted(committed) == sorted(fresh), "run: make schemas"
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale; run: make schemas"
    assert generate.stale(COMMITTED) == []


def test_one_schema_per_message_type_with_id_and_title() -> None:
    schemas = generate.build_schemas()
    for cls in MESSAGE_TYPES:
        schema = schemas[cls.EVENT_TYPE]
        assert schema["$id"] == schema_uri(cls.EVENT_TYPE)
        assert cls.EVENT_TYPE in schema["title"]
        assert schema["type"] == "object"
    assert {"catalog.agencies", "catalog.initiatives"} <= set(schemas)
    assert len(schemas) == len(MESSAGE_TYPES) + 2


def test_check_flag_reports_stale_and_unexpected_files(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path), "--check"]) == 1
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.main(["--out", str(tmp_path), "--check"]) == 0
    target = tmp_path / "nl.loket.question.received.v1.json"
    target.write_text("{}\n", encoding="utf-8")
    (tmp_path / "nl.loket.gone.v1.json").write_text("{}\n", encoding="utf-8")
    problems = generate.stale(tmp_path)
    assert "stale: nl.loket.question.received.v1.json" in problems
    assert "unexpected: nl.loket.gone.v1.json" in problems
    assert generate.main(["--out", str(tmp_path), "--check"]) == 1
    generate.write(tmp_path)
    assert generate.stale(tmp_path) == []
