# Training image: the project's pinned stack (constraints.txt, exactly) on Python 3.11. torch
# 2.13.0's PyPI wheels are CUDA 13.0 builds that bring the CUDA libraries as nvidia-* wheels
# (torch pins cuda-toolkit 13.0.3), so the base image only adds the NVIDIA container settings;
# hosts need a driver >= 580. The base is Azure ML's own newest CUDA image, from Microsoft's
# registry (the tag azureml-mlflow's azureml_base_images.json lists; azureml-examples use it):
# an ACR task pulling from Docker Hub instead runs into its anonymous pull limits. It holds
# dependencies only: the code comes from the Azure ML job's code snapshot, or from the checkout
# mounted at run time, so code changes never rebuild the image.
#
# Local build and run (from the repository root; docker/train.Dockerfile.dockerignore keeps
# the context to constraints.txt):
#   docker build -f docker/train.Dockerfile -t finetune-phi-train .
#   docker run --gpus all --user "$(id -u):$(id -g)" -e HOME=/workspace -v "$PWD":/workspace \
#     finetune-phi-train python -m train +profile=a100
# (your uid writes outputs/ and the caches in .cache/ of the checkout, both gitignored).
# `python -m train target=azureml` builds the same file in the workspace (a build context of
# this Dockerfile and constraints.txt). Not buildable on this project's dev/CI machines: they
# have no Docker engine; tests/train/test_azureml_environment.py checks it against
# constraints.txt statically.
FROM mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:20260121.v1

# uv from PyPI (the base image's conda Python installs it), the same version as the Makefile's.
RUN python -m pip install --no-cache-dir uv==0.13.9

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# git: the recipe tags models with the commit they were trained from. Unpinned on purpose:
# Ubuntu's security updates replace the exact versions; the Python stack is what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/*

# The exact local set: every pin in constraints.txt, nothing re-resolved.
COPY constraints.txt /opt/finetune-phi/constraints.txt
RUN uv venv --python 3.11.7 /opt/venv \
    && uv pip install --python /opt/venv/bin/python -r /opt/finetune-phi/constraints.txt \
    && uv pip check --python /opt/venv/bin/python

# Train as an unprivileged user (uid 1000 is the base image's `ubuntu`); numeric, so hosts
# without this user name still run it unprivileged.
RUN useradd --create-home --uid 1001 --user-group trainer
USER 1001
# Caches (hub downloads, the tiny model, prepared data) default to $HOME/.cache.
WORKDIR /workspace
CMD ["python", "-m", "train", "--help"]
