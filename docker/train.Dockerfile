# Training image: the project's pinned stack (constraints.txt) on Python 3.11.
# torch==2.13.0 from PyPI on linux/x86_64 is the CUDA build and carries its CUDA runtime
# as nvidia-* wheels, so a slim Python base is enough; the host (or Azure ML node) provides
# the driver. Build from the repository root:
#   docker build -f docker/train.Dockerfile -t finetune-phi-train .
#   docker run --gpus all finetune-phi-train +profile=a100
# (Not buildable on this project's dev/CI machines: they have no Docker engine.)
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    HF_HOME=/cache/huggingface \
    FINETUNE_PHI_CACHE=/cache/finetune-phi

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first, so code changes do not reinstall the stack.
COPY pyproject.toml constraints.txt README.md ./
RUN pip install uv==0.13.9 \
    && mkdir -p train deploy && touch train/__init__.py deploy/__init__.py \
    && uv pip install --system -c constraints.txt -e . \
    && rm -rf train deploy

COPY conf ./conf
COPY train ./train
COPY deploy ./deploy

ENTRYPOINT ["python", "-m", "train"]
