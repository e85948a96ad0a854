# Every target creates .venv and installs what it needs; only Python 3.11+ and make are assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test demo bench chaos worker clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the same checks as .pre-commit-config.yaml: lint, formatting, types (package and tests), layers
lint: $(STAMP)
	$(BIN)/ruff check saga workers tests bench
	$(BIN)/ruff format --check saga workers tests bench
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/python -m tests.lint_layers

test: lint
	$(BIN)/python -m pytest tests

# the long soak: CHAOS_SECONDS of runs under kills and a Redis restart (default 10 minutes)
CHAOS_SECONDS ?= 600
chaos: $(STAMP)
	CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/python -m pytest tests/chaos -s -p no:cacheprovider

# saga vs a plain Celery chain, side by side (a few minutes); writes bench/last-run.md
bench: $(STAMP)
	$(BIN)/python -m bench.run

demo: $(STAMP)
	$(BIN)/python -m workers.demo

worker: $(STAMP)
	$(BIN)/celery -A workers worker --loglevel=INFO

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
