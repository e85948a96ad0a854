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

# every test on one private Redis, then the store's own tests, the engine, recovery and a chaos
# pass again with the store on a private 3-master Redis Cluster (the broker on a plain Redis)
CLUSTER_TESTS := tests/test_store.py tests/test_hot_tier.py tests/test_engine.py tests/test_recovery.py \
	tests/test_fencing.py tests/test_archive.py tests/test_waiting.py tests/test_contract.py tests/chaos
test: lint
	$(BIN)/python -m pytest tests
	TEST_STORE=cluster $(BIN)/python -m pytest $(CLUSTER_TESTS)

# the long soak: CHAOS_SECONDS of runs under kills, a Redis restart and redeploys (default 10
# minutes), then the fuzz tests with FUZZ_EXAMPLES examples each (default 2000)
CHAOS_SECONDS ?= 600
FUZZ_EXAMPLES ?= 2000
chaos: $(STAMP)
	CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/python -m pytest tests/chaos -s -p no:cacheprovider
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_bad_input.py -k fuzz -p no:cacheprovider

# saga vs a plain Celery chain, a group vs a chord, waiting, the archive (about 14 minutes); writes bench/last-run.md
bench: $(STAMP)
	$(BIN)/python -m bench.run

demo: $(STAMP)
	$(BIN)/python -m workers.demo

worker: $(STAMP)
	$(BIN)/celery -A workers worker --loglevel=INFO

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
