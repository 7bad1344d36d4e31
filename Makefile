# fattag: make features train infer.  `make help` lists the targets.
# Every stage target takes CONFIG=configs/<name>.yaml and OVERRIDES="key=value ...".

SHELL := /bin/bash
MAKEFLAGS += --no-print-directory
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
OVERRIDES ?=
STAGE = $(PY) -m pipeline.$(1) --config $(CONFIG) $(OVERRIDES)
# NPROC=N (N > 1): warmup and train run data-parallel on N processes of this machine (torchrun; a killed rank
# restarts the group RESTARTS times, resuming from last.pt). Several machines: torchrun itself (README).
NPROC ?= 1
RESTARTS ?= 0
TRAIN_STAGE = $(if $(filter-out 0 1,$(NPROC)),$(PY) -m pipeline.torchrun --standalone --nproc_per_node=$(NPROC) \
	--max-restarts=$(RESTARTS) -m pipeline.$(1) --config $(CONFIG) $(OVERRIDES),$(call STAGE,$(1)))

.DEFAULT_GOAL := help
.PHONY: help setup demo-data real-data features folds warmup train summary infer ensemble bundle score compare report demo test lint format browser bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'
	@echo "  Options: CONFIG=configs/<name>.yaml (default $(CONFIG))  OVERRIDES=\"key=value ...\""
	@echo "           NPROC=N: warmup and train on N processes (torchrun, data-parallel)  RESTARTS=n: torchrun --max-restarts"

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

setup: $(STAMP) ## make .venv and install the pinned requirements (redone when they change)

demo-data: $(STAMP) ## build the embedded demo dataset in data/demo (DEMO_FLAGS="--preset tiny ...")
	$(PY) -m pipeline.datasets.demo --out data/demo $(DEMO_FLAGS)

real-data: $(STAMP) ## build the real-sound set in data/real from Debian packages (REAL_FLAGS="--preset tiny", "--verify")
	$(PY) -m pipeline.datasets.real --out data/real $(REAL_FLAGS)

features: $(STAMP) ## log-mel feature cache of every split (a no-op when up to date; SHARD=i/n: one shard; VERIFY=1)
	$(call STAGE,features) $(if $(SHARD),--shard $(SHARD)) $(if $(VERIFY),--verify)

folds: $(STAMP) ## multi-label stratified folds of the curated set
	$(call STAGE,folds)

warmup: $(STAMP) ## stage 1: warm up the network on the noisy set
	$(call TRAIN_STAGE,warmup)

train: $(STAMP) ## K-fold training on the curated set (train.mode: supervised, teacher_student, ...)
	$(call TRAIN_STAGE,train)

summary: $(STAMP) ## rebuild train/oof.csv, summary.json, curves.png from every finished fold
	$(call STAGE,summary)

infer: $(STAMP) ## predict the test set with every fold model (TTA), then ensemble into submissions/
	$(call STAGE,infer)

ensemble: $(STAMP) ## average fold (and infer.runs) predictions into submissions/<run.name>.csv
	$(call STAGE,ensemble)

bundle: $(STAMP) ## bundles/<run.name>/: models, manifest and code that predict offline (BUNDLE_FLAGS=--wheels)
	$(call STAGE,bundle) $(BUNDLE_FLAGS)

.PHONY: export tensorboard
export: $(STAMP) ## exports/<run.name>/: the fold models as .safetensors + manifest, for another run's infer.runs
	$(call STAGE,bundle) --export

tensorboard: $(STAMP) ## serve the training curves of every run (runs/<run>/tb/), live (TB_FLAGS="--port 6007")
	$(VENV)/bin/tensorboard --logdir runs $(TB_FLAGS)

score: $(STAMP) ## score submissions/<run.name>.csv against <data.root>/test_labels.csv
	$(call STAGE,score)

demo: $(STAMP) ## the whole chain on the embedded demo set, printing the test lwlrap last
	$(MAKE) demo-data
	$(MAKE) features folds warmup train infer score CONFIG=configs/demo.yaml OVERRIDES="$(OVERRIDES)"

compare: $(STAMP) ## is run B better than A? RUNS="a b [c ...]": paired OOF (and test) lwlrap differences, 95% intervals
	@test -n "$(RUNS)" || { echo 'make compare: give the runs, e.g. make compare RUNS="a b"' >&2; exit 2; }
	$(PY) -m pipeline.compare $(RUNS)

report: $(STAMP) ## runs/<run.name>/report.html: per-class scores, curves, pseudo-labels, hardest clips
	$(call STAGE,report)

browser: ## Debian's headless Chromium, for the report's browser test (apt-get when root; skipped otherwise)
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell) \
	      >/dev/null; \
	  else echo "no headless Chromium and no root to install it: the report's browser check will be skipped"; fi

LINT_PATHS := pipeline models tests bench

lint: $(STAMP) ## ruff (pyproject.toml): lint and format check of pipeline models tests bench; make test runs it first
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: $(STAMP) ## ruff: apply its safe fixes (import order, ...) and its layout to what make lint checks
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test: $(STAMP) lint browser ## lint, then the test suite (unit tests and one end-to-end run on tiny data)
	$(PY) -m pytest -q tests

bench: $(STAMP) ## throughput and memory: bench/features.py, bench/train_step.py (~10 min; docs/benchmarks.md)
	$(PY) bench/features.py
	$(PY) bench/train_step.py

.PHONY: gpu-check
gpu-check: $(STAMP) ## on a CUDA machine: every CUDA path once, and the GPU's figures (~8 min; GPU_FLAGS="--docs")
	@$(PY) bench/gpu_check.py $(GPU_FLAGS)

clean: ## remove outputs (runs, submissions); `make clean ALL=1` also removes data/demo, cache and .venv
	rm -rf runs submissions/*.csv submissions/*.json
	$(if $(ALL),rm -rf data/demo cache $(VENV))
