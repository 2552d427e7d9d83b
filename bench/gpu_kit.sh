#!/usr/bin/env bash
# `make gpu-kit`: download here the wheels bench/gpu_kit.txt lists, for the GPU box (CPython 3.12,
# manylinux x86_64) and for this machine's Python (tests/bench/test_gpu_kit.py installs them here),
# into KIT (default .whl/, which git ignores and the device tool carries). Needs PyPI, once.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.whl}
LIST=bench/gpu_kit.txt
PY=${PY:-python3}
MAX_MIB=60 # the whole working tree that travels to the box is 64 MiB at most

mkdir -p "$KIT"
pins=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$LIST")
binary=$(grep -v '^antlr4-python3-runtime' <<<"$pins")
platforms=(manylinux_2_28_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any)
here=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
for version in 3.12 "$here"; do # multiprocess has a wheel per Python version; the rest are shared
  # shellcheck disable=SC2086  # one argument per pin
  "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$version" \
    "${platforms[@]/#/--platform=}" -d "$KIT" $binary
done
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) has no wheel on PyPI: build its pure-Python one.
"$PY" -m pip wheel -q --no-deps -w "$KIT" "$(grep '^antlr4-python3-runtime' <<<"$pins")"

bytes=$(du -cb "$KIT"/*.whl | tail -1 | cut -f1)
echo "gpu kit: $(ls "$KIT"/*.whl | wc -l) wheels, $((bytes / 1048576)) MiB in $KIT"
if [ "$bytes" -gt $((MAX_MIB * 1048576)) ]; then
  echo "gpu kit: over $MAX_MIB MiB; drop an optional wheel (transformers, liger-kernel) from $LIST" >&2
  exit 1
fi
