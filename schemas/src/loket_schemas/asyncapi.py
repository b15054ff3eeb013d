"""Generate an AsyncAPI 3.0 document for each service (``docs/asyncapi/<service>.yaml``).

Run ``python -m loket_schemas.asyncapi`` (``make schemas`` runs it after the JSON Schema
generation); ``--check`` writes nothing and exits 1 when a document on disk is stale (a
test does the same).

What is described where:

* :data:`CHANNELS`: every topic of DESIGN.md with every message type that may travel on
  it (``loket.agency.{code}.v1`` is one channel with the agency code as parameter). A
  service document lists the channels it uses, each with all of its messages.
* :data:`SERVICES`: per service what it sends and receives (operations), with the
  consumer group of each receive. This is the one hand-written part; a cross-service test
  (``tests/test_asyncapi_services.py``) holds it to the code of the services.
* Every message: the CloudEvents 1.0 binary-mode headers exactly as
  :func:`loket_schemas.kafka.encode` writes them (``ce_*``, ``content-type``, W3C
  ``traceparent``), the Kafka key (the case id), and the payload as a ``$ref`` to the
  generated JSON Schema in ``schemas/jsonschema/<type>.json`` (relative to the documents'
  folder ``docs/asyncapi/``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from loket_schemas import topics
from loket_schemas.events import (
    AcceptHandoff,
    CaseDelivered,
    CaseRouted,
    ConsentGiven,
    ConsentWithdrawn,
    DataErasureRequested,
    DataShareLogged,
    DeclineHandoff,
    EscalateHandoff,
    HandoffAccepted,
    HandoffDeclined,
    HandoffEscalated,
    HandoffOffered,
    HandoffResolved,
    HandoffResponseRejected,
    HandoffSlaBreached,
    HandoffSlaWarning,
    Message,
    MessageDeadLettered,
    QuestionReceived,
    ResolveHandoff,
)
from loket_schemas.generate import generator_cli
from loket_schemas.kafka import (
    CONTENT_TYPE,
    SOURCE_URN_PREFIX,
    SPECVERSION,
    schema_uri,
    service_source,
)
from loket_schemas.tracing import TRACEPARENT_HEADER
from loket_schemas.vocabulary import AgencyCode

ASYNCAPI_VERSION: Final = "3.0.0"
KAFKA_BINDING_VERSION: Final = "0.5.0"
AGENCY_TOPIC_TEMPLATE: Final = "loket.agency.{code}.v1"
"""``topics.agency_topic(code)`` with the code as an AsyncAPI channel parameter."""
JSONSCHEMA_REF_BASE: Final = "../../schemas/jsonschema/"
"""Where the payload schemas are, relative to ``docs/asyncapi/``."""

DEFAULT_OUT = Path(__file__).resolve().parents[3] / "docs" / "asyncapi"
"""``docs/asyncapi`` of the source tree (the package is installed editable)."""

Action = Literal["send", "receive"]


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ChannelSpec:
    """One Kafka topic and every message type that may travel on it."""

    address: str
    description: str
    messages: tuple[type[Message], ...]
    parameterised: bool = False


@dataclass(frozen=True)
class Flow:
    """One operation of a service: it sends or receives these messages on a channel."""

    action: Action
    channel: str
    messages: tuple[type[Message], ...]
    summary: str
    group_id: str | None = None
    """Consumer group (receive only)."""


@dataclass(frozen=True)
class ServiceSpec:
    title: str
    description: str
    flows: tuple[Flow, ...]


HANDOFF_EVENTS: Final[tuple[type[Message], ...]] = (
    HandoffOffered,
    HandoffAccepted,
    HandoffDeclined,
    HandoffResolved,
    HandoffEscalated,
    HandoffSlaWarning,
    HandoffSlaBreached,
    HandoffResponseRejected,
)
COMMANDS: Final[tuple[type[Message], ...]] = (
    AcceptHandoff,
    DeclineHandoff,
    ResolveHandoff,
    EscalateHandoff,
)

CHANNELS: Final[dict[str, ChannelSpec]] = {
    "questions": ChannelSpec(
        topics.QUESTIONS,
        "Every accepted question, once (from any door and channel of any initiative).",
        (QuestionReceived,),
    ),
    "consent": ChannelSpec(
        topics.CONSENT,
        "Consent given or withdrawn for a case.",
        (ConsentGiven, ConsentWithdrawn),
    ),
    "agency": ChannelSpec(
        AGENCY_TOPIC_TEMPLATE,
        "One topic per agency: the cases routed to it (only the data its sharing manifest "
        "allows) and requests to erase data whose consent was withdrawn.",
        (CaseDelivered, DataErasureRequested),
        parameterised=True,
    ),
    "handoffs": ChannelSpec(
        topics.HANDOFFS,
        "The handoff lifecycle of every case: routing decisions (router) and offers, "
        "acceptances, declines, resolutions, escalations, SLA events and refused "
        "responses (handoff).",
        (CaseRouted, *HANDOFF_EVENTS),
    ),
    "handoffResponses": ChannelSpec(
        topics.HANDOFF_RESPONSES,
        "Responses of agencies to handoffs (commands; a refusal is published as "
        "nl.loket.handoff.response-rejected.v1 on loket.handoffs.v1).",
        COMMANDS,
    ),
    "audit": ChannelSpec(
        topics.AUDIT,
        'One record per data share, after the standard "Logboek Dataverwerkingen".',
        (DataShareLogged,),
    ),
    "dlq": ChannelSpec(
        topics.DLQ,
        "Records that could not be processed (poison), with the reason and their "
        "original topic, partition, offset, value and headers.",
        (MessageDeadLettered,),
    ),
}

SERVICES: Final[dict[str, ServiceSpec]] = {
    "intake": ServiceSpec(
        "Loket intake",
        "Captures a question once, from any channel of any practice initiative (HTTP API, "
        "desk page, e-mail), and publishes it; publishes consent withdrawals. A question "
        "is answered 202 only after Kafka acknowledged the record (acks=all). The consent "
        "given with a question travels inside nl.loket.question.received.v1.",
        (
            Flow(
                "send",
                "questions",
                (QuestionReceived,),
                "Publish an accepted question (ce_id deterministic per case, so a "
                "republished question is recognisable).",
            ),
            Flow(
                "send",
                "consent",
                (ConsentWithdrawn,),
                "Publish the withdrawal of a case's consent.",
            ),
        ),
    ),
    "router": ServiceSpec(
        "Loket router",
        "Decides which agencies act on a question and delivers the case to each, with "
        "only the data consent or a recorded legal basis allows. Consume-transform-produce "
        "in Kafka transactions (read_committed): every output of one input record and the "
        "input's offset commit are one transaction. Re-routes declined and escalated "
        "handoffs; requests erasure when consent is withdrawn.",
        (
            Flow(
                "receive",
                "questions",
                (QuestionReceived,),
                "Route each question.",
                group_id="loket-router",
            ),
            Flow(
                "send",
                "agency",
                (CaseDelivered,),
                "Deliver the case to every chosen agency (cause initial, decline or escalation).",
            ),
            Flow("send", "audit", (DataShareLogged,), "Log every data share."),
            Flow(
                "send",
                "handoffs",
                (CaseRouted,),
                "Publish the routing decision (assignments with roles; on re-routing the "
                "handoff it replaces).",
            ),
            Flow(
                "receive",
                "handoffs",
                (HandoffDeclined, HandoffEscalated),
                "Re-route a declined handoff (decline_count < 2) or an escalated one; "
                "every other message on the topic is skipped.",
                group_id="loket-router-reroute",
            ),
            Flow(
                "receive",
                "consent",
                (ConsentGiven, ConsentWithdrawn),
                "Record withdrawals (no further consent-based shares); consent given is skipped.",
                group_id="loket-router-consent",
            ),
            Flow(
                "send",
                "agency",
                (DataErasureRequested,),
                "Ask every agency that received data on a withdrawn consent to erase it.",
            ),
            Flow(
                "send",
                "dlq",
                (MessageDeadLettered,),
                "Dead-letter a poison record (in the same transaction as its offset).",
            ),
        ),
    ),
    "handoff": ServiceSpec(
        "Loket handoff",
        "Warm handoffs between agencies: opens one handoff per assignment of a routing "
        "decision, validates agency responses (from Kafka or its HTTP API) and publishes "
        "their outcome, runs the SLA timers and escalates to maatwerkloket. Its state in "
        "Redis is a projection of loket.handoffs.v1 and loket.consent.v1 and is rebuilt "
        "from them when missing.",
        (
            Flow(
                "receive",
                "handoffs",
                (CaseRouted, *HANDOFF_EVENTS),
                "Open handoffs from each routing decision; project every lifecycle event "
                "(its own echoes included) into the case state.",
                group_id="loket-handoff",
            ),
            Flow(
                "receive",
                "handoffResponses",
                COMMANDS,
                "Carry out agency responses (accept, decline, resolve, escalate).",
                group_id="loket-handoff",
            ),
            Flow(
                "receive",
                "consent",
                (ConsentGiven, ConsentWithdrawn),
                "Keep the consent state of cases.",
                group_id="loket-handoff",
            ),
            Flow(
                "send",
                "handoffs",
                HANDOFF_EVENTS,
                "Publish offers and the outcome of every response and SLA timer "
                "(a refused response: nl.loket.handoff.response-rejected.v1).",
            ),
            Flow(
                "send",
                "dlq",
                (MessageDeadLettered,),
                "Dead-letter a poison record (awaiting the ack before committing).",
            ),
        ),
    ),
}


# --------------------------------------------------------------------------- building

HEADERS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "CloudEvents 1.0 attributes in Kafka binary content mode (NL GOV "
    "profile) plus the W3C trace context; all values UTF-8 strings.",
    "required": [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "ce_dataschema",
        "content-type",
        TRACEPARENT_HEADER,
    ],
    "properties": {
        "ce_specversion": {"type": "string", "const": SPECVERSION},
        "ce_id": {
            "type": "string",
            "minLength": 1,
            "description": "Unique per event (a UUID, or a deterministic id so a "
            "republished event is recognisable).",
        },
        "ce_source": {
            "type": "string",
            "description": f"URN of the sending service, {SOURCE_URN_PREFIX}<service> "
            "(agency systems: their own URI).",
            "examples": [service_source("router")],
        },
        "ce_type": {"type": "string", "description": "The event type (reverse DNS, .vN)."},
        "ce_time": {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339, UTC, milliseconds, Z.",
        },
        "ce_subject": {
            "type": "string",
            "description": "The case id: equals the record key and case_id in the data.",
        },
        "ce_dataschema": {
            "type": "string",
            "description": "URN of the JSON Schema of the data (its $id).",
        },
        "content-type": {"type": "string", "const": CONTENT_TYPE},
        TRACEPARENT_HEADER: {
            "type": "string",
            "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context, carried end to end (each hop a child span).",
        },
    },
}


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def _message(cls: type[Message]) -> dict[str, Any]:
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    kind = "command" if cls in COMMANDS else "event"
    return {
        "name": cls.__name__,
        "title": f"{cls.__name__} ({kind})",
        "summary": doc,
        "contentType": CONTENT_TYPE,
        "headers": {
            "allOf": [
                _ref("components", "schemas", "CloudEventsHeaders"),
                {
                    "type": "object",
                    "properties": {
                        "ce_type": {"const": cls.EVENT_TYPE},
                        "ce_dataschema": {"const": schema_uri(cls.EVENT_TYPE)},
                    },
                },
            ]
        },
        "payload": {"$ref": f"{JSONSCHEMA_REF_BASE}{cls.EVENT_TYPE}.json"},
        "correlationId": {
            "description": "W3C trace context of the event.",
            "location": f"$message.header#/{TRACEPARENT_HEADER}",
        },
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "The case id (one case, one partition)."},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "x-loket-event-type": cls.EVENT_TYPE,
    }


def _channel(channel_id: str, spec: ChannelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "address": spec.address,
        "description": spec.description,
        "messages": {
            cls.__name__: _ref("components", "messages", cls.__name__) for cls in spec.messages
        },
    }
    if spec.parameterised:
        out["parameters"] = {
            "code": {
                "description": "The agency code (DESIGN.md); maatwerkloket is the escalation "
                "point.",
                "enum": [code.value for code in AgencyCode],
            }
        }
    else:
        out["bindings"] = {
            "kafka": {"topic": spec.address, "bindingVersion": KAFKA_BINDING_VERSION}
        }
    return out


def _operation_id(flow: Flow) -> str:
    names = "".join(cls.__name__ for cls in flow.messages) if len(flow.messages) <= 2 else ""
    return f"{flow.action}{names or flow.channel[0].upper() + flow.channel[1:]}"


def build_document(service: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of one service (a plain JSON-compatible dict)."""
    spec = SERVICES[service]
    channel_ids = list(dict.fromkeys(flow.channel for flow in spec.flows))
    messages = {
        cls.__name__: _message(cls) for cid in channel_ids for cls in CHANNELS[cid].messages
    }
    operations: dict[str, Any] = {}
    for flow in spec.flows:
        unknown = [c.__name__ for c in flow.messages if c not in CHANNELS[flow.channel].messages]
        if unknown:
            raise ValueError(f"{service}: {unknown} do not travel on {flow.channel}")
        op_id = _operation_id(flow)
        if op_id in operations:
            raise ValueError(f"{service}: duplicate operation {op_id}")
        operation: dict[str, Any] = {
            "action": flow.action,
            "channel": _ref("channels", flow.channel),
            "summary": flow.summary,
            "messages": [
                _ref("channels", flow.channel, "messages", c.__name__) for c in flow.messages
            ],
        }
        if flow.group_id:
            operation["bindings"] = {
                "kafka": {
                    "groupId": {"type": "string", "enum": [flow.group_id]},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
        operations[op_id] = operation
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"{SOURCE_URN_PREFIX}{service}",
        "info": {
            "title": f"{spec.title} events",
            "version": _version(),
            "description": spec.description
            + "\n\nEvery record: key = case id; value = the event data as JSON; CloudEvents "
            "1.0 attributes as ce_* headers (binary content mode); W3C traceparent. Topic "
            "names may carry a deployment prefix (LOKET_TOPIC_PREFIX, empty in production).",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "protocolVersion": "4.1",
                "description": "Development broker (make up; deploy/local/kafka.sh).",
            }
        },
        "channels": {cid: _channel(cid, CHANNELS[cid]) for cid in channel_ids},
        "operations": operations,
        "components": {
            "schemas": {"CloudEventsHeaders": HEADERS_SCHEMA},
            "messages": messages,
        },
    }


def _version() -> str:
    try:
        return version("loket-schemas")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "0.0.0"


def build_documents() -> dict[str, dict[str, Any]]:
    """Service name -> its AsyncAPI document."""
    return {service: build_document(service) for service in SERVICES}


def render(document: dict[str, Any]) -> str:
    """The exact text written to disk (YAML, keys in the order built, stable)."""
    header = "# Generated by `python -m loket_schemas.asyncapi` (make schemas). Do not edit.\n"
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return header + body


def write(out_dir: Path) -> list[Path]:
    """Write ``<service>.yaml`` for every service into ``out_dir``; remove stale ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = build_documents()
    written: list[Path] = []
    for service, document in documents.items():
        path = out_dir / f"{service}.yaml"
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    for path in out_dir.glob("*.yaml"):
        if path.stem not in documents:
            path.unlink()
    return written


def stale(out_dir: Path) -> list[str]:
    """Names of documents in ``out_dir`` that are missing, differ, or should not be there."""
    documents = build_documents()
    problems: list[str] = []
    for service, document in documents.items():
        path = out_dir / f"{service}.yaml"
        if not path.is_file():
            problems.append(f"missing: {path.name}")
        elif path.read_text(encoding="utf-8") != render(document):
            problems.append(f"stale: {path.name}")
    if out_dir.is_dir():
        for path in sorted(out_dir.glob("*.yaml")):
            if path.stem not in documents:
                problems.append(f"unexpected: {path.name}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the documents, or with ``--check`` report stale ones (exit 1)."""
    return generator_cli(
        argv,
        prog="python -m loket_schemas.asyncapi",
        description="Generate the AsyncAPI document of each service.",
        default_out=DEFAULT_OUT,
        what="AsyncAPI documents",
        write_all=write,
        find_stale=stale,
    )


if __name__ == "__main__":
    sys.exit(main())
