"""Generate the JSON Schemas of every event type and of the catalogs.

Run ``python -m loket_schemas.generate`` (or ``make schemas``) after changing a model; it
writes ``schemas/jsonschema/<event-type>.json`` for every class in
:data:`loket_schemas.events.MESSAGE_TYPES` plus ``catalog.agencies.json`` and
``catalog.initiatives.json``. ``--check`` writes nothing and exits 1 when the files on
disk are stale (a test does the same).

Schemas are generated in pydantic's *validation* mode: they describe what a consumer
accepts (fields with a default are optional; unknown fields are allowed, the tolerant
reader rule). Every schema carries ``$id`` = the ``ce_dataschema`` URN of the event
type (see :func:`loket_schemas.kafka.schema_uri`) and ``title``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from loket_schemas.catalog import AgencyCatalog, InitiativeCatalog
from loket_schemas.events import MESSAGE_TYPES
from loket_schemas.kafka import schema_uri

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_MODE: Final = "validation"
CATALOG_SCHEMAS: dict[str, type[BaseModel]] = {
    "catalog.agencies": AgencyCatalog,
    "catalog.initiatives": InitiativeCatalog,
}

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "jsonschema"
"""``schemas/jsonschema`` of the source tree (the package is installed editable)."""


def _schema(model: type[BaseModel], name: str, title: str) -> dict[str, Any]:
    body = model.model_json_schema(mode=SCHEMA_MODE)
    head: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_uri(name),
        "title": title,
    }
    body.pop("title", None)
    return head | body


def build_schemas() -> dict[str, dict[str, Any]]:
    """File name (without ``.json``) -> JSON Schema, for every event type and catalog."""
    out: dict[str, dict[str, Any]] = {}
    for cls in MESSAGE_TYPES:
        schema = _schema(cls, cls.EVENT_TYPE, f"{cls.__name__} ({cls.EVENT_TYPE})")
        schema["x-loket-event-type"] = cls.EVENT_TYPE
        out[cls.EVENT_TYPE] = schema
    for name, model in CATALOG_SCHEMAS.items():
        out[name] = _schema(model, name, model.__name__)
    return out


def render(schema: dict[str, Any]) -> str:
    """The exact text written to disk (stable: indent 2, UTF-8, trailing newline)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write(out_dir: Path) -> list[Path]:
    """Write every schema into ``out_dir`` (created if needed); remove stale ``*.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    schemas = build_schemas()
    written: list[Path] = []
    for name, schema in sorted(schemas.items()):
        path = out_dir / f"{name}.json"
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    for path in out_dir.glob("*.json"):
        if path.stem not in schemas:
            path.unlink()
    return written


def stale(out_dir: Path) -> list[str]:
    """Names of files in ``out_dir`` that are missing, differ, or should not be there."""
    schemas = build_schemas()
    problems: list[str] = []
    for name, schema in sorted(schemas.items()):
        path = out_dir / f"{name}.json"
        if not path.is_file():
            problems.append(f"missing: {path.name}")
        elif path.read_text(encoding="utf-8") != render(schema):
            problems.append(f"stale: {path.name}")
    if out_dir.is_dir():
        for path in sorted(out_dir.glob("*.json")):
            if path.stem not in schemas:
                problems.append(f"unexpected: {path.name}")
    return problems


def generator_cli(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    default_out: Path,
    what: str,
    write_all: Callable[[Path], list[Path]],
    find_stale: Callable[[Path], list[str]],
) -> int:
    """The command line of a generator: write the files, or with ``--check`` report stale
    ones (exit 1). Shared by the JSON Schema and the AsyncAPI generators."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--out", type=Path, default=default_out, help=f"output folder (default {default_out})"
    )
    parser.add_argument(
        "--check", action="store_true", help=f"write nothing; exit 1 when {what} are stale"
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    if args.check:
        problems = find_stale(out_dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"run: python -m {prog.removeprefix('python -m ')}", file=sys.stderr)
            return 1
        print(f"{out_dir}: up to date")
        return 0
    written = write_all(out_dir)
    print(f"wrote {len(written)} {what} to {out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the schemas, or with ``--check`` report stale files (exit 1)."""
    return generator_cli(
        argv,
        prog="python -m loket_schemas.generate",
        description="Generate the JSON Schemas.",
        default_out=DEFAULT_OUT,
        what="schemas",
        write_all=write,
        find_stale=stale,
    )


if __name__ == "__main__":
    sys.exit(main())
