# Every target installs what it needs into .venv from uv.lock; only Python 3.11+ and make are assumed.
# uv itself comes from PyPI, pinned, into .uv/ (`make lock` refreshes uv.lock after a pyproject change).
PYTHON ?= python3
UV_VERSION := 0.13.10
UV := .uv/bin/uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install lock lint test test-latest demo bench chaos worker dist clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

# --locked: refuse to install when pyproject.toml and uv.lock disagree (run `make lock`)
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --all-extras --group dev --quiet
	touch $(STAMP)

install: $(STAMP)

lock: | $(UV)
	$(UV) lock

# the same checks as .pre-commit-config.yaml: the lock, lint, formatting, types (package and tests), packages
lint: $(STAMP)
	$(UV) lock --check --quiet
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

# the same suite against the newest releases of every dependency (not the lock), in .venv-latest:
# an upstream break is seen on purpose, not by accident
test-latest: | $(UV)
	test -x .venv-latest/bin/python || $(UV) venv --quiet .venv-latest
	VIRTUAL_ENV=.venv-latest $(UV) pip install --quiet --upgrade -e '.[all]' --group dev
	.venv-latest/bin/python -m pytest tests

# the long soak: CHAOS_SECONDS of runs under kills, a Redis restart and redeploys (default 10
# minutes), then the fuzz tests with FUZZ_EXAMPLES examples each (default 2000)
CHAOS_SECONDS ?= 600
FUZZ_EXAMPLES ?= 2000
chaos: $(STAMP)
	CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/python -m pytest tests/chaos -s -p no:cacheprovider
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_bad_input.py -k fuzz -p no:cacheprovider

# saga vs a plain Celery chain, a group vs a chord, waiting, the archive, import times (about 14 minutes);
# writes bench/last-run.md
bench: $(STAMP)
	$(BIN)/python -m bench.run

demo: $(STAMP)
	$(BIN)/python -m workers.demo

worker: $(STAMP)
	$(BIN)/celery -A workers worker --loglevel=INFO

# an sdist and a wheel in dist/, checked by twine
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) .venv-latest .uv dist .pytest_cache .mypy_cache .ruff_cache
