# Serving image: the scoring stack (docker/serve.requirements.txt, generated from the
# project's constraints.txt by `python -m deploy.azure.environment`) on Azure ML's inference base
# image, for managed online deployments that run deploy/scoring/score.py.
#
# `python -m deploy target=azureml` builds this file in the workspace as the deployment's
# environment (build context: this file + serve.requirements.txt); Azure mounts the model
# (AZUREML_MODEL_DIR) and the scoring code, and starts azureml-inference-server-http
# (`azmlinfsrv`, port 5001) from this image's PATH.
#
# Local build and run, from the repository root (needs a Docker engine; this project's
# dev/CI machines have none: tests/deploy/azure/test_environment.py checks the pins statically, and
# tests/deploy/scoring/test_score_in_azmlinfsrv.py runs score.py under azmlinfsrv from the same
# requirements). The code folder is the deployment's snapshot: score.py with common/ beside it
# (deploy/azure/entities.py:scoring_code_dir).
#   docker build -f docker/serve.Dockerfile -t finetune-phi-serve docker
#   docker run -p 127.0.0.1:5001:5001 -v /path/to/mlflow/model:/model -e AZUREML_MODEL_DIR=/model \
#     -v /path/to/snapshot:/app finetune-phi-serve azmlinfsrv --entry_script /app/score.py
FROM mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest

# The base image's conda makes a Python 3.11 prefix; everything else comes from the pins.
COPY serve.requirements.txt /tmp/serve.requirements.txt
RUN conda create -y -p /opt/serve python=3.11 pip \
    && /opt/serve/bin/pip install --no-cache-dir -r /tmp/serve.requirements.txt \
    && conda clean -afy

# Azure's runit script for the server puts $AZUREML_CONDA_ENVIRONMENT_PATH/lib first on
# LD_LIBRARY_PATH, or else the base image's conda lib: name this prefix, as azureml-examples'
# custom-container Dockerfiles do (cli/endpoints/online/custom-container/minimal/single-model).
ENV AZUREML_CONDA_ENVIRONMENT_PATH=/opt/serve \
    PATH=/opt/serve/bin:$PATH \
    LD_LIBRARY_PATH=/opt/serve/lib:$LD_LIBRARY_PATH \
    PYTHONUNBUFFERED=1
