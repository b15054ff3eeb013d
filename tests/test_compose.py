"""docker-compose.yml agrees with the settings classes (ports, LOKET_* env names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loket_handoff.settings import HandoffSettings
from loket_intake.settings import IntakeSettings
from loket_router.settings import RouterSettings
from loket_runtime.settings import BaseServiceSettings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, type[BaseServiceSettings]] = {
    "intake": IntakeSettings,
    "router": RouterSettings,
    "handoff": HandoffSettings,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _env_names(cls: type[BaseServiceSettings]) -> set[str]:
    return {f"LOKET_{name.upper()}" for name in cls.model_fields}


@pytest.mark.parametrize("svc", list(SETTINGS))
def test_service_ports_and_env_match_settings(compose: dict[str, Any], svc: str) -> None:
    cls = SETTINGS[svc]
    spec = compose["services"][svc]
    port = cls.model_fields["port"].default
    assert spec["ports"] == [f"{port}:{port}"]
    env = {k: str(v) for k, v in spec["environment"].items()}
    assert env["LOKET_PORT"] == str(port)
    assert env["LOKET_HOST"] == "0.0.0.0"
    unknown = {k for k in env if k.startswith("LOKET_")} - _env_names(cls)
    assert not unknown, f"{svc}: env vars that no settings field reads: {unknown}"
    assert env["LOKET_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"
    assert env["LOKET_REDIS_URL"].startswith("redis://redis:6379")
    assert spec["build"]["dockerfile"] == f"services/{svc}/Dockerfile"
    assert (ROOT / spec["build"]["dockerfile"]).is_file()
    for dep in ("kafka", "redis"):
        assert spec["depends_on"][dep]["condition"] == "service_healthy"
    assert str(port) in " ".join(spec["healthcheck"]["test"])


def test_infrastructure(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    default_bootstrap = BaseServiceSettings.model_fields["kafka_bootstrap"].default
    assert f"{default_bootstrap.split(':')[1]}:9092" in kafka["ports"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert "healthcheck" in kafka and "healthcheck" in redis


def test_dockerfiles_default_port(compose: dict[str, Any]) -> None:
    for svc, cls in SETTINGS.items():
        text = (ROOT / "services" / svc / "Dockerfile").read_text()
        assert f"LOKET_PORT={cls.model_fields['port'].default}" in text
        assert f"loket_{svc}" in text
