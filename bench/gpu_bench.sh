#!/usr/bin/env bash
# `make bench-gpu`, on a bare CUDA box (torch, transformers, accelerate, peft; no network), from a
# checkout with the kit in .whl/ (`make gpu-kit` here; the device tool carries .whl). Installs the kit
# offline, checks the box (python -m bench.gpu_preflight), then benchmarks the Phi-3-mini and
# Phi-3.5-mini architectures (random weights, synthetic data, +profile=h200) in BUDGET_S seconds in
# all: the recipe, the seed recipe and the knobs one by one, every variant in a process of its own
# (bench.isolate). Results: bench/results/<date>-<gpu>.json and .md, copied to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.whl}
BUDGET_S=${BUDGET_S:-480}  # everything, the install included
PROFILE=${PROFILE:-h200}
PHI35_S=${PHI35_S:-150}    # kept back for Phi-3.5-mini's recipe and seed recipe
# Phi-3-mini's knobs, most wanted first (the budget cuts the tail): the memory plans of the targets
# (full 36 GiB, LoRA 11 GiB), LoRA's speed, sdpa's quadratic attention on packed rows, the rest.
KNOBS=${KNOBS:-[checkpointing,lora,lora_low_memory,sdpa,selective_checkpointing,liger]}
SITE=${SITE:-/tmp/finetune-phi-gpu-kit}
PYTHON=${PYTHON:-python3}  # the box's, which holds torch
# For a try-out without a GPU (tests/bench/test_gpu_kit.py): PREFLIGHT_ARGS=--no-gpu BENCH_ARGS=bench.dry_run=true
PREFLIGHT_ARGS=${PREFLIGHT_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:-}
start=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - start))); }

"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  --find-links "$KIT" -r bench/gpu_kit.txt || exit 1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# shellcheck disable=SC2086  # PREFLIGHT_ARGS: words
"$PYTHON" -m bench.gpu_preflight $PREFLIGHT_ARGS || exit 1

marker=$(mktemp)
common=("+profile=$PROFILE" bench.weights=random bench.data=synthetic bench.untimed_steps=3 bench.steps=6)
bench() { # bench SECONDS ARGS...: one bench.train run; its own budget ends 30 s early to write results
  local seconds=$1
  shift
  if [ "$seconds" -lt 90 ]; then
    echo "== skipped, ${seconds} s left: python -m bench.train $*"
    return
  fi
  echo "== python -m bench.train $* (${seconds} s)"
  # shellcheck disable=SC2086  # BENCH_ARGS: words
  timeout "$seconds" "$PYTHON" -m bench.train "${common[@]}" "$@" bench.time_budget_s=$((seconds - 30)) $BENCH_ARGS ||
    echo "== bench.train ended with status $?"
}
bench $(($(left) - PHI35_S)) model=phi3_mini_4k "bench.ablations=$KNOBS"
bench "$(left)" model=phi35_mini

echo "== $((SECONDS - start)) s in all; results:"
find bench/results -newer "$marker" -name '*.md' -exec cat {} \;
if [ -n "${OUT:-}" ]; then
  find bench/results -newer "$marker" -type f -exec cp {} "$OUT"/ \;
fi
