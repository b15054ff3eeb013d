# Loket developer commands. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= uv
PYTEST_ARGS ?=

.PHONY: help uv sync up down test lint schemas demo kafka redis

help:
	@echo "make up      start Kafka, Redis and the three services (Ctrl-C or 'make down' stops)"
	@echo "make down    stop everything 'make up' started"
	@echo "make test    lint + the whole test suite against real Kafka and Redis"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make schemas regenerate JSON Schemas and AsyncAPI documents from the models"
	@echo "make demo    feed realistic traffic into a running stack"

uv:
	@command -v $(UV) >/dev/null 2>&1 || { echo "installing uv (pip install uv)"; python3 -m pip install --quiet uv; }

sync: uv
	$(UV) sync --all-packages --frozen

up: sync
	deploy/local/up.sh

down:
	deploy/local/down.sh

kafka:
	deploy/local/kafka.sh start

redis:
	deploy/local/redis.sh start

lint: sync
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy schemas/src libs/runtime/src services/intake/src services/router/src services/handoff/src

# The pytest plugin (loket_runtime.testing) finds or starts Kafka and Redis itself;
# starting them here first lets one broker serve the whole run (and stay for the next).
test: lint
	deploy/local/kafka.sh start
	deploy/local/redis.sh start
	bash deploy/local/chromium.sh
	$(UV) run pytest $(PYTEST_ARGS) schemas libs services tests

schemas: sync
	$(UV) run python -m loket_schemas.generate
	$(UV) run python -m loket_schemas.asyncapi

demo: sync
	$(UV) run python -m loket_handoff.demo
