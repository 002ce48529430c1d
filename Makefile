# Everything bootstraps from a bare Python 3.11+: a private venv with a pinned uv, then
# one locked environment for the whole workspace.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run test test-unit lint format clean bench-ingest bench-stage-engine bench-scoring bench-campaigns

install: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages --compile-bytecode --python $(PYTHON)
	touch $@

run: install ## the whole stack on this machine; Ctrl-C stops it
	$(BIN)/clm-dev run

test: install ## unit + integration + local-stack tests against a real broker and database
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check libs services tests
	$(BIN)/ruff format --check libs services tests
	$(BIN)/mypy libs/events/src libs/devstack/src services/*/src

# Benchmarks print their figures next to baselines measured in the same run.
bench-ingest: install
	$(BIN)/python services/ingest/bench/bench_ingest.py

bench-stage-engine: install
	$(BIN)/python services/stage-engine/bench/bench_stage_engine.py

bench-scoring: install
	$(BIN)/python services/scoring/bench/bench_scoring.py

bench-campaigns: install
	$(BIN)/python services/campaigns/bench/bench_campaigns.py

format: install
	$(BIN)/ruff check --fix libs services tests
	$(BIN)/ruff format libs services tests

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
