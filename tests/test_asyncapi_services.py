"""The hand-written part of the AsyncAPI documents (loket_schemas.asyncapi.SERVICES) holds
to the services' code: topics they consume, with which consumer group, which types they
read, and the topics they produce to."""

from __future__ import annotations

from loket_handoff import rebuild, subscribers
from loket_handoff.app import create_app as create_handoff
from loket_handoff.settings import HandoffSettings
from loket_intake.app import create_app as create_intake
from loket_intake.settings import IntakeSettings
from loket_router.handlers import ConsentProcessor, QuestionProcessor, RerouteProcessor
from loket_schemas import topics
from loket_schemas.asyncapi import CHANNELS, SERVICES, Flow


def flows(service: str, action: str) -> list[Flow]:
    return [f for f in SERVICES[service].flows if f.action == action]


def address(flow: Flow) -> str:
    return CHANNELS[flow.channel].address


def test_router_receives_what_its_processors_consume() -> None:
    documented = {(address(f), f.group_id) for f in flows("router", "receive")}
    processors = (QuestionProcessor, RerouteProcessor, ConsentProcessor)
    assert documented == {(p.input_topic, p.group_id) for p in processors}


def test_handoff_receives_what_its_consumer_reads() -> None:
    received: dict[str, set[type]] = {}
    for f in flows("handoff", "receive"):
        received.setdefault(address(f), set()).update(f.messages)
    assert received == {
        topics.HANDOFFS: set(rebuild.PROJECTED),
        topics.HANDOFF_RESPONSES: set(subscribers.COMMANDS),
        topics.CONSENT: set(rebuild.CONSENT_EVENTS),
    }
    settings = HandoffSettings()
    assert {f.group_id for f in flows("handoff", "receive")} == {settings.handoff_group_id}
    app = create_handoff(settings)
    assert set(app.state.handoff_processor.topics) == set(received)


def test_services_create_the_topics_they_send_on() -> None:
    intake = create_intake(IntakeSettings())
    assert {address(f) for f in flows("intake", "send")} == set(
        intake.state.runtime.topics_to_ensure
    )
    handoff = create_handoff(HandoffSettings())
    assert {address(f) for f in flows("handoff", "send")} <= set(
        handoff.state.runtime.topics_to_ensure
    )
