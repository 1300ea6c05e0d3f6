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
LAUNCHER ?= local
NODES ?= 1
# GPUS=N: one training process per GPU under torchrun (DistributedDataParallel).
# LAUNCHER=slurm: submit to Slurm instead (an experiment as one job of NODES nodes with
# GPUS GPUs each; a sweep as WORKERS jobs of one array) and wait for it.
ifeq ($(LAUNCHER),slurm)
EXPERIMENT = $(PY) -m pixelexp experiment --launcher slurm --nodes $(NODES) $(if $(GPUS),--gpus $(GPUS))
else
EXPERIMENT = $(if $(GPUS),$(VENV)/bin/torchrun --standalone --nproc_per_node $(GPUS) -m,$(PY) -m) pixelexp experiment
endif
ARGS ?=
RUN ?=
N ?= 64
PYTEST_ARGS ?=
PORT ?= 5000

.DEFAULT_GOAL := help
.PHONY: help setup lint test test-slow experiment smoke sweep report sample resume rerun bench ui jobs cancel clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: EXP=$(EXP) SWEEP=$(SWEEP) WORKERS=$(WORKERS) LAUNCHER=$(LAUNCHER) ARGS=\"key=value ...\" RUN=<run id> N=$(N)"

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

test: $(STAMP) ## run the test suite, but for the end-to-end tests marked slow (about 5 minutes on 2 cores)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) ## the slow end-to-end tests: servers, signals, browser, Slurm (CI runs both)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

experiment: $(STAMP) ## run experiments/$(EXP).yaml, track it in MLflow, write reports/$(EXP)/ [GPUS=N] [LAUNCHER=slurm NODES=M]
	$(EXPERIMENT) experiments/$(EXP).yaml $(ARGS)

smoke: $(STAMP) ## the one-minute end-to-end check (experiments/smoke.yaml)
	$(PY) -m pixelexp experiment experiments/smoke.yaml $(ARGS)

sweep: $(STAMP) ## run (or resume) the Optuna study of sweeps/$(SWEEP).yaml with WORKERS processes [LAUNCHER=slurm]
	$(PY) -m pixelexp sweep sweeps/$(SWEEP).yaml --workers $(WORKERS) --launcher $(LAUNCHER) $(ARGS)

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

jobs: $(STAMP) ## the Slurm jobs submitted from here: state, MLflow runs, Optuna trials
	$(PY) -m pixelexp jobs $(ARGS)

cancel: $(STAMP) ## cancel the Slurm jobs submitted from here that are still queued or running
	$(PY) -m pixelexp cancel $(ARGS)

clean: ## remove caches (keeps .venv, mlflow.db, mlartifacts/ and reports/)
	rm -rf .pytest_cache $$(find . -name __pycache__ -not -path './.venv/*')
