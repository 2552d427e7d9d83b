# finetune-phi: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# CPU machines here keep a local torch wheel in PIP_FIND_LINKS (/opt/wheels); elsewhere
# the same version comes from PyPI (the CUDA build on Linux).
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)
# MLflow 3 reports usage to mlflow-telemetry.io unless told not to; targets here talk to loopback
# only (set it to false in your environment to let it report).
export MLFLOW_DISABLE_TELEMETRY ?= true

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv and install the project with the pinned stack (constraints.txt)

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --compile-bytecode --python $(PY) -c constraints.txt $(FIND_LINKS) -e ".[dev,export]"
	$(VENV)/bin/uv pip check --python $(PY)
	@touch $@

demo: setup ## fine-tune the tiny offline model on the bundled data and register it in MLflow
	$(PY) -m train

e2e: setup ## train + register the tiny model, serve it locally, ask the chat flow a question, stop
	$(PY) -m e2e

llama-cpp: setup ## build llama-cpp-python (llama.cpp, CPU) once into a wheel cached in $FINETUNE_PHI_CACHE; install it
	nice -n 10 bash deploy/export/build_llama_cpp.sh $(PY)

test: setup llama-cpp ## run every test that can run here (GPU tests are skipped without CUDA)
	$(PY) -m pytest

lint: setup ## ruff: lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## ruff: fix what can be fixed and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

constraints: ## re-resolve constraints.txt after changing pyproject.toml (UPGRADE="-P pkg" moves pkg too)
	@# Start from the current pins so only what the change needs moves; torch's CUDA-only
	@# dependencies stay out, as torch pins them itself. Needs only uv, not a working setup.
	@test -x $(VENV)/bin/uv || { python3 -m venv $(VENV) && $(PY) -m pip install -q uv==$(UV_VERSION); }
	@# The header is kept aside first: `{ ...; } > constraints.txt` empties the file before it is read.
	@sed -n '/^#/p' constraints.txt > constraints.header
	@grep -v '^#' constraints.txt > constraints.new
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra export $(FIND_LINKS) --python-version 3.11 \
		--no-header --no-annotate -o constraints.new $(UPGRADE)
	@{ cat constraints.header; grep -v '^#' constraints.new | grep -vE '^(cuda-|nvidia-|triton==)' \
		| sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt
	@rm constraints.new constraints.header

gpu-kit: ## download the wheels bench-gpu installs on a bare CUDA box into .whl/ (bench/gpu_kit.txt, ~20 MiB)
	bash bench/gpu_kit.sh

bench-gpu: ## on a CUDA box with .whl/: install it offline, run the Phi-3-mini/3.5-mini benchmarks (8 min)
	bash bench/gpu_bench.sh

clean-outputs: ## delete local runs and the local MLflow store (asks first)
	@read -p "Delete ./outputs (all local runs and registered models)? [y/N] " a && [ "$$a" = y ] && rm -rf outputs

.PHONY: help setup demo e2e test lint format constraints gpu-kit bench-gpu clean-outputs
