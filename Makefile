# editbench — every target creates/updates .venv first, so each works on a fresh machine.
#   make run        the main job (offline)
#   make test       the test suite (offline)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
PYTHON ?= python3
# reinstall when pyproject.toml changes
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: help setup run run-tiny test test-slow lint tables report perf perf-batching toy-weights clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) ## create .venv and install editbench with test extras

run: setup ## the main job: every method x the toy edit suite x every metric (offline, CPU; 2 jobs at a time)
	$(BENCH) experiment=toy_default launcher=joblib $(ARGS)

run-tiny: setup ## a 1-minute smoke job, no download: SDEdit on 6 toy-world edits with the committed toy model and metrics
	$(BENCH) model=toy method=sdedit dataset=toy_shapes metrics=toy limit=6 run_name=tiny $(ARGS)

TEST_WORKERS ?= 2
test: setup ## the test suite, offline, TEST_WORKERS processes (PYTEST_ARGS="..." for more)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-slow: setup ## only the tests marked slow (CLI subprocess runs, long trainings; opt-in)
	$(PY) -m pytest -q -m "slow and not gpu" $(PYTEST_ARGS)

lint: setup ## ruff check (rules in pyproject.toml)
	$(VENV)/bin/ruff check .

tables: setup ## aggregate a results dir: make tables RESULTS=results/default
	$(BENCH) tables $(or $(RESULTS),results/default)

report: setup ## HTML report of a results dir (+ Chromium screenshot if installed): make report RESULTS=results/toy_default
	$(BENCH) report $(or $(RESULTS),results/toy_default) $(if $(shell command -v chromium chromium-browser google-chrome),--screenshot)

perf: setup ## cost per method, overhead ratio, baselines, grid reuse (on the toy model, CPU)
	$(BENCH) perf --model toy --threads 1 --no-throughput --out results/perf/toy_cpu_float32 $(ARGS)

perf-batching: setup ## items/s at B = 1, 4, 16 for every method (toy model, CPU, one thread; ~45 min)
	$(BENCH) perf --model toy --threads 1 --no-baselines --no-grid --out results/perf/toy_cpu_batching $(ARGS)

toy-weights: setup ## retrain the toy world from its seed (resumable; hours on CPU)
	$(BENCH) toy train --stage all $(ARGS)

clean: ## remove outputs and caches (keeps .venv)
	rm -rf results/*/ .cache/editbench .pytest_cache
