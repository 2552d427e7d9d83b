#!/usr/bin/env bash
# Build llama-cpp-python (and so llama.cpp) ONCE into a wheel cached in $FINETUNE_PHI_CACHE, then
# install it. llama-cpp-python ships no binary wheel on PyPI; a build costs ~8 CPU-minutes, so CI
# and every later `make setup` reuse the cached wheel. The source distribution is kept too: it
# carries llama.cpp's own convert_hf_to_gguf.py, which deploy/export/gguf.py runs.
# Usage: deploy/export/build_llama_cpp.sh [python]   (default .venv/bin/python)
set -euo pipefail
VERSION=0.3.36
PY=${1:-.venv/bin/python}
CACHE=${FINETUNE_PHI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune-phi}/llama-cpp-python-$VERSION
mkdir -p "$CACHE"
if ! ls "$CACHE"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$CACHE" "llama-cpp-python==$VERSION"
fi
if [ ! -f "$CACHE/llama.cpp/convert_hf_to_gguf.py" ]; then
  # llama.cpp's converter (a script, its `conversion` package and its own gguf-py), kept beside the wheel
  tar -xzf "$CACHE"/llama_cpp_python-*.tar.gz -C "$CACHE" --strip-components=2 --wildcards \
    '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
fi
if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  # CPU only and minimal: no server, tools, examples or tests; -j2 on a shared 2-core machine.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF}"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
  "$PY" -m pip wheel -q --no-deps -w "$CACHE" "$CACHE"/llama_cpp_python-*.tar.gz
fi
"$PY" -m pip install -q --no-deps "$CACHE"/llama_cpp_python-*.whl
echo "$CACHE"
