# Lingua control plane. Every target sets up what it needs itself (virtualenv, dependencies, redis-server).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup redis engines proto run test test-fast lint check bench soak clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,engines]'
	touch $(STAMP)

setup: $(STAMP) redis engines ## Create .venv, install the package with dev tools, install redis-server and the engines' Debian packages if missing

redis: ## Install redis-server (and redis-cli, for the Redis Cluster tests) from Debian's packages when missing (as root, or through sudo)
	@scripts/apt-ensure.sh redis-server=redis-server redis-cli=redis-tools
	@redis-server --version

engines: ## Install the reference node's engines from Debian's packages when missing: espeak-ng (TTS), apertium with its en<>es pair (translation)
	@scripts/apt-ensure.sh espeak-ng=espeak-ng apertium=apertium /usr/share/apertium/modes/eng-spa.mode=apertium-eng-spa
	@espeak-ng --version

proto: $(STAMP) ## Regenerate Python code from proto/ (commit the result)
	$(PY) scripts/gen_protos.py

run: setup ## Start a scheduler on embedded Redis with one local node agent of real engines for en>es (`.venv/bin/lingua-dev --synthetic` for stand-in ones)
	$(VENV)/bin/lingua-dev

test: setup ## Run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup ## Run the unit and integration tests only
	$(PY) -m pytest -m "not e2e and not fault and not slow" $(PYTEST_ARGS)

lint: setup ## ruff, mypy and buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint

check: lint test ## lint, then test

bench: setup ## Benchmarks with baselines (figures in README): offered-load sweep (goodput at 0.5-5x capacity, bursts and steady, TTS on then off), job throughput, audio ingest, real-time overhead + idle RSS, burst, overload (2x one instance's capacity), two instances (sessions on one, nodes on the other), real engines (each stage's real-time factor). Every run prints every utterance's fate and fails when one is neither answered nor skipped
	$(VENV)/bin/lingua-bench --sweep --json bench-sweep.json --fates-file bench-fates.jsonl
	$(VENV)/bin/lingua-bench --sessions 100 --utterances 20 --whole-utterances --idle-sessions 0 --json bench-jobs.json
	$(VENV)/bin/lingua-bench --sessions 100 --utterances 10 --idle-sessions 0 --json bench-ingest.json
	$(VENV)/bin/lingua-bench --realtime --sessions 100 --utterances 10 --idle-sessions 10000 --json bench-realtime.json
	$(VENV)/bin/lingua-bench --realtime --lockstep --sessions 100 --utterances 10 --idle-sessions 0 --json bench-burst.json
	$(VENV)/bin/lingua-bench --realtime --sessions 400 --utterances 30 --ramp-s 30 --idle-sessions 0 --skip-baselines --json bench-overload.json
	$(VENV)/bin/lingua-bench --realtime --sessions 100 --utterances 10 --idle-sessions 0 --skip-baselines --nodes-on-second-instance --json bench-two-instances.json
	$(VENV)/bin/lingua-bench --real-engines --realtime --nodes 1 --node-concurrency 2 --sessions 4 --utterances 6 --idle-sessions 0 --skip-baselines --json bench-real-engines.json

MINUTES ?= 10
SEED ?=
REDIS_CLUSTER ?=
soak: setup ## Chaos soak (README "Chaos testing"): three schedulers, one Redis (REDIS_CLUSTER=1: a three-master Redis Cluster), synthetic nodes, seeded random faults, invariants checked; make soak MINUTES=10 SEED=7
	$(PY) -m tests.soak --minutes $(MINUTES) $(if $(SEED),--seed $(SEED)) $(if $(REDIS_CLUSTER),--redis-cluster) --json out/soak-report.json

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
