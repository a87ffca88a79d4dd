# hyperrec — the front door. `make help` lists the verbs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
HYPERREC := $(VENV)/bin/hyperrec
UV_VERSION := 0.13.9
# The stamp changes whenever the lock or the project metadata does, so `make` reinstalls
# exactly then and is a no-op otherwise.
STAMP := $(VENV)/.installed
MOVIELENS ?= ../shared/data/ml-latest-small
UI_PORT ?= 8000
UI_DEMO_DAYS ?= 0
export TF_USE_LEGACY_KERAS := 1
export DO_NOT_TRACK := true
export TF_CPP_MIN_LOG_LEVEL := 2

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast bench ui lock lint clean-data clean

help: ## list the verbs
	@grep -hE '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --no-deps -e .
	@touch $@

install: $(STAMP) ## create .venv and install the locked dependency set (idempotent)

demo: $(STAMP) ## generate a world, train through kfp.local, register in MLflow, serve, recommend
	$(HYPERREC) demo

# Two workers, a test file each at a time (module fixtures stay in one process): most of the
# slow tests wait on servers they start, so two overlap on two cores (17:08 -> 9:55 on
# 2026-12-07, 2-core AMD EPYC).
test: $(STAMP) ## run the whole test suite (unit + integration on real servers)
	$(PY) -m pytest -n 2 --dist loadfile

test-fast: $(STAMP) ## unit tests only (skips the slow end-to-end tests)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP) ## run the benchmarks (tables printed, JSON under var/bench/, summary in BENCHMARKS.md)
	$(HYPERREC) bench features --home var/bench-home --out var/bench/features.json
	$(HYPERREC) bench index --out var/bench/index.json
	$(HYPERREC) bench serving --out var/bench/serving.json
	$(HYPERREC) bench freshness --out var/bench/freshness.json
	$(HYPERREC) bench detection --out var/bench/detection.json
	$(HYPERREC) bench import --out var/bench/import.json
	$(HYPERREC) bench faults --out var/bench/faults.json
	$(HYPERREC) bench cluster --out var/bench/cluster.json
	@if [ -d $(MOVIELENS) ]; then $(HYPERREC) bench quality --path $(MOVIELENS) --home var/bench-home --out var/bench/quality.json; \
	else echo "skipping bench quality: no MovieLens folder at $(MOVIELENS) (set MOVIELENS=...)"; fi
	$(HYPERREC) bench report --bench-dir var/bench --out BENCHMARKS.md

ui: $(STAMP) ## monitoring dashboard (Evidently UI on UI_PORT) over `hyperrec monitor`'s windows; UI_DEMO_DAYS=14 seeds synthetic days into an empty one
	$(PY) -m monitoring.ui --workspace var/monitoring/evidently --port $(UI_PORT) --demo-days $(UI_DEMO_DAYS)

lock: ## re-resolve requirements.lock from pyproject.toml
	@test -x $(VENV)/bin/uv || { python3 -m venv $(VENV) && $(PY) -m pip install -q uv==$(UV_VERSION); }
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11 --generate-hashes

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check hyperrec components pipelines serving monitoring feature_repo tests

clean-data: ## remove generated data, registry and run artifacts (keeps .venv)
	rm -rf var/

clean: clean-data ## remove everything generated, the venv included
	rm -rf $(VENV) .pytest_cache
