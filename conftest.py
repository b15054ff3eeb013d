"""Root conftest: real Kafka/Redis fixtures for every test in the repository."""

pytest_plugins = ["loket_runtime.testing"]
