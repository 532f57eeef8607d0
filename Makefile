# Developer commands. `make check` is the test command CI runs; `make run` starts the
# whole service on a machine without Docker. Both install what they need on first use.

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .devstack/uv/bin/uv
BIN := .venv/bin
STACK := $(BIN)/python -m devstack

.DEFAULT_GOAL := help
.PHONY: help install check lint test run up down status destroy schemas faults faults-short bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .devstack/uv
	.devstack/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.installed: pyproject.toml uv.lock | $(UV)
	UV_PYTHON=$(PYTHON) $(UV) sync --frozen --quiet
	touch $@

install: .venv/.installed ## Create .venv with the service and its dev tools

lint: install ## ruff, mypy and the import contracts of the layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install ## pytest (starts Kafka and PostgreSQL if no endpoints are given)
	$(BIN)/pytest

check: lint test ## Everything CI runs: lint, types and the whole test suite

up: install ## Start the native Kafka and PostgreSQL and print their endpoints
	@$(STACK) up

status: install ## Show the native services
	@$(STACK) status

down: install ## Stop the native services (data is kept)
	@$(STACK) down

destroy: install ## Stop the native services and delete their data
	@$(STACK) destroy

run: install ## Start the stack, create topics, migrate, seed demo customers (and their states) and run the worker
	@eval "$$($(STACK) up)" && \
	  $(BIN)/customer-service create-topics && \
	  $(BIN)/customer-service migrate && \
	  $(BIN)/customer-service seed --count 10 && \
	  $(BIN)/customer-service backfill --all && \
	  exec $(BIN)/customer-service worker

schemas: install ## Regenerate the JSON Schema and AsyncAPI files from the models
	$(BIN)/python -m schemas

faults: install ## The whole fault-injection suite (its own Kafka and PostgreSQL)
	$(BIN)/python -m faults

faults-short: install ## The fault-injection suite's short form (it also runs in `make check`)
	$(BIN)/python -m faults --short

bench: install ## Throughput and latency against the naive baseline; prints one JSON line
	$(BIN)/python -m bench
