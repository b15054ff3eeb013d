"""The AsyncAPI documents in docs/asyncapi: up to date, well-formed, complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from loket_schemas import asyncapi, topics
from loket_schemas.events import REGISTRY, ConsentGiven
from loket_schemas.vocabulary import AgencyCode

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"


def load(service: str) -> dict[str, Any]:
    data = yaml.safe_load((DOCS / f"{service}.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def documents() -> dict[str, dict[str, Any]]:
    return {service: load(service) for service in asyncapi.SERVICES}


def pointer(document: Any, fragment: str) -> Any:
    """Resolve a JSON pointer (``/a/b~1c``) in a document; KeyError/IndexError if absent."""
    node = document
    for part in fragment.lstrip("/").split("/") if fragment.strip("/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def refs(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every ``$ref`` in a document with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append((path, value))
            else:
                found.extend(refs(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(refs(value, f"{path}/{i}"))
    return found


def resolve(document: dict[str, Any], ref: str) -> Any:
    target, _, fragment = ref.partition("#")
    if not target:
        return pointer(document, fragment)
    path = (DOCS / target).resolve()
    assert path.is_file(), f"{ref}: no file {path}"
    return pointer(json.loads(path.read_text(encoding="utf-8")), fragment)


# --------------------------------------------------------------------------- freshness


def test_committed_documents_are_not_stale(tmp_path: Path) -> None:
    asyncapi.write(tmp_path)
    fresh = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.yaml")}
    assert sorted(committed) == sorted(fresh) == ["handoff.yaml", "intake.yaml", "router.yaml"]
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale; run: make schemas"
    assert asyncapi.stale(DOCS) == []


def test_check_flag_reports_stale_and_unexpected_files(tmp_path: Path) -> None:
    assert asyncapi.main(["--out", str(tmp_path), "--check"]) == 1
    assert asyncapi.main(["--out", str(tmp_path)]) == 0
    assert asyncapi.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "router.yaml").write_text("asyncapi: 3.0.0\n", encoding="utf-8")
    (tmp_path / "gone.yaml").write_text("{}\n", encoding="utf-8")
    problems = asyncapi.stale(tmp_path)
    assert "stale: router.yaml" in problems and "unexpected: gone.yaml" in problems
    assert asyncapi.main(["--out", str(tmp_path), "--check"]) == 1
    asyncapi.write(tmp_path)
    assert asyncapi.stale(tmp_path) == []


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("service", sorted(asyncapi.SERVICES))
def test_document_is_asyncapi_3_and_every_ref_resolves(service: str) -> None:
    doc = load(service)
    assert doc["asyncapi"] == "3.0.0"
    assert {"info", "channels", "operations", "components"} <= set(doc)
    assert doc["info"]["title"] and doc["info"]["version"]
    for where, ref in refs(doc):
        try:
            resolve(doc, ref)
        except (KeyError, IndexError, ValueError) as exc:
            raise AssertionError(f"{service}.yaml{where}: $ref {ref} does not resolve") from exc


@pytest.mark.parametrize("service", sorted(asyncapi.SERVICES))
def test_operations_channels_and_messages_fit_together(service: str) -> None:
    doc = load(service)
    assert doc["operations"], "a service sends or receives something"
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), op_id
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), op_id
        channel_id = channel_ref.removeprefix("#/channels/")
        for message in op["messages"]:
            assert message["$ref"].startswith(f"{channel_ref}/messages/"), (op_id, message)
        if op["action"] == "receive":
            assert op["bindings"]["kafka"]["groupId"]["enum"], f"{op_id}: consumer group"
        assert channel_id in doc["channels"]
    for channel_id, channel in doc["channels"].items():
        for name, message in channel["messages"].items():
            assert message["$ref"] == f"#/components/messages/{name}", channel_id
    for name, message in doc["components"]["messages"].items():
        event_type = message["x-loket-event-type"]
        assert REGISTRY[event_type].__name__ == name
        headers = resolve(doc, message["headers"]["allOf"][0]["$ref"])
        assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject"} <= set(
            headers["required"]
        )
        assert {"content-type", "traceparent", "ce_dataschema"} <= set(headers["required"])
        own = message["headers"]["allOf"][1]["properties"]
        assert own["ce_type"]["const"] == event_type
        payload = resolve(doc, message["payload"]["$ref"])
        assert payload["x-loket-event-type"] == event_type
        assert payload["$id"] == own["ce_dataschema"]["const"]
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        assert message["correlationId"]["location"] == "$message.header#/traceparent"


def test_every_message_type_and_topic_is_documented() -> None:
    docs = documents()
    described = {
        m["x-loket-event-type"] for d in docs.values() for m in d["components"]["messages"].values()
    }
    assert set(REGISTRY) <= described, sorted(set(REGISTRY) - described)
    addresses = {c["address"] for d in docs.values() for c in d["channels"].values()}
    assert set(topics.FIXED_TOPICS) <= addresses
    assert asyncapi.AGENCY_TOPIC_TEMPLATE in addresses


def test_agency_channel_is_parameterised_by_the_agency_code() -> None:
    channel = load("router")["channels"]["agency"]
    assert channel["address"] == "loket.agency.{code}.v1"
    assert channel["parameters"]["code"]["enum"] == [c.value for c in AgencyCode]
    for code in AgencyCode:
        assert asyncapi.AGENCY_TOPIC_TEMPLATE.format(code=code.value) == topics.agency_topic(code)


def test_whatever_a_service_receives_someone_sends() -> None:
    """Receivers without a sender among the services: only what outside systems send."""
    sent: set[str] = set()
    received: set[str] = set()
    for doc in documents().values():
        messages = doc["components"]["messages"]
        for op in doc["operations"].values():
            names = {m["$ref"].rsplit("/", 1)[1] for m in op["messages"]}
            types = {messages[n]["x-loket-event-type"] for n in names}
            (sent if op["action"] == "send" else received).update(types)
    external = {cls.EVENT_TYPE for cls in asyncapi.COMMANDS} | {ConsentGiven.EVENT_TYPE}
    assert received - sent <= external, sorted(received - sent - external)
    assert sent <= set(REGISTRY)
