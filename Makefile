# pixelexp: `make help` lists the targets. Every target sets up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXP ?= rnn_vs_cnn
SWEEP ?= rnn_dims
WORKERS ?= 1
GPUS ?=
# GPUS=N: one training process per GPU under torchrun (DistributedDataParallel).
LAUNCH = $(if $(GPUS),$(VENV)/bin/torchrun --standalone --nproc_per_node $(GPUS) -m,$(PY) -m)
ARGS ?=
RUN ?=
N ?= 64
PYTEST_ARGS ?=
PORT ?= 5000

.DEFAULT_GOAL := help
.PHONY: help setup lint test experiment smoke sweep report sample resume rerun bench ui clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: EXP=$(EXP) SWEEP=$(SWEEP) WORKERS=$(WORKERS) ARGS=\"key=value ...\" RUN=<run id> N=$(N)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing pixelexp and its dependencies into $(VENV) (first time: a few minutes)"
	@set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | \
	  { grep -v "^WARNING: Location" || true; }
	@$(PY) -c "import pixelexp.runs.tracking, pixelexp.models" && touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (done by every target when needed)

lint: $(STAMP) ## ruff (lint, import order) and the import layers (pyproject.toml's contracts)
	$(VENV)/bin/ruff check pixelexp tests scripts
	$(VENV)/bin/lint-imports

test: $(STAMP) ## run the test suite
	$(PY) -m pytest $(PYTEST_ARGS)

experiment: $(STAMP) ## run experiments/$(EXP).yaml, track it in MLflow, write reports/$(EXP)/ [GPUS=N]
	$(LAUNCH) pixelexp experiment experiments/$(EXP).yaml $(ARGS)

smoke: $(STAMP) ## the one-minute end-to-end check (experiments/smoke.yaml)
	$(PY) -m pixelexp experiment experiments/smoke.yaml $(ARGS)

sweep: $(STAMP) ## run (or resume) the Optuna study of sweeps/$(SWEEP).yaml with WORKERS processes
	$(PY) -m pixelexp sweep sweeps/$(SWEEP).yaml --workers $(WORKERS) $(ARGS)

report: $(STAMP) ## rewrite reports/$(EXP)/ (or reports/$(SWEEP)/ with SWEEP=...) from the stores
	@if [ "$(origin SWEEP)" = "command line" ]; then $(PY) -m pixelexp report --sweep sweeps/$(SWEEP).yaml $(ARGS); \
	else $(PY) -m pixelexp report $(EXP) $(ARGS); fi

sample: $(STAMP) ## draw N samples from run RUN's checkpoint: make sample RUN=<id> N=64
	@test -n "$(RUN)" || { echo "error: give a run id: make sample RUN=<run id> [N=64]" >&2; exit 2; }
	$(PY) -m pixelexp sample $(RUN) --n $(N) $(ARGS)

resume: $(STAMP) ## continue a killed or crashed run from its last checkpoint: make resume RUN=<id>
	@test -n "$(RUN)" || { echo "error: give a run id: make resume RUN=<run id>" >&2; exit 2; }
	$(PY) -m pixelexp resume $(RUN) $(ARGS)

rerun: $(STAMP) ## start a new run from exactly the config of run RUN: make rerun RUN=<id> [ARGS=key=value]
	@test -n "$(RUN)" || { echo "error: give a run id: make rerun RUN=<run id>" >&2; exit 2; }
	$(PY) -m pixelexp rerun $(RUN) $(ARGS)

bench: $(STAMP) ## time every model, fast paths vs plain, into reports/bench/<device>.{json,md} [ARGS=--quick]
	$(PY) -m pixelexp bench $(ARGS)

ui: $(STAMP) ## serve the MLflow UI of the store; prints each experiment's chart view [PORT=5000]
	$(PY) -m pixelexp ui --port $(PORT)

clean: ## remove caches (keeps .venv, mlflow.db, mlartifacts/ and reports/)
	rm -rf .pytest_cache $$(find . -name __pycache__ -not -path './.venv/*')
