# Conveyor: the same commands for local runs and CI.  `make help` lists the targets.

# Dockerfile.dev sets VENV to the image's virtualenv (/opt/venv).
VENV ?= .venv
BIN := $(VENV)/bin
# The interpreter that creates the venv: python3.11 when it runs, else python3.
PYTHON := $(shell for p in python3.11 python3; do $$p -c '' >/dev/null 2>&1 && { echo $$p; break; }; done)

.DEFAULT_GOAL := help
.PHONY: help venv install run migrate test lint bench soak churn

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The stamp is rebuilt, and the project reinstalled, whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

venv: install ## create .venv (if missing) and install the project with its dev extras
install: $(VENV)/.installed ## same as venv

run: install ## the whole stack on embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set
	$(BIN)/conveyor dev

migrate: install ## alembic upgrade head on DATABASE_URL
	$(BIN)/conveyor migrate

test: install ## the test suite, in parallel (pytest-xdist)
	$(BIN)/pytest -n auto

lint: install ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install ## the benchmark suite on real PostgreSQL and Redis: prints the table (bench/README.md)
	$(BIN)/python -m bench.suite

soak: install ## steady load for SOAK_S seconds (default 1800) sampling memory; prints growth %
	$(BIN)/python -m bench.soak

churn: install ## long-polls and live tails dropped by their clients; what they leave behind, per phase
	$(BIN)/python -m bench.churn
