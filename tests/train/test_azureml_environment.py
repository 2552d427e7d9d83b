"""The training image and the job's environment are the local stack: checked statically
(no Docker engine here), against constraints.txt, the Makefile and this interpreter."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

from azure.ai.ml import load_environment
from omegaconf import OmegaConf

from common.paths import PROJECT_ROOT
from train.azureml.environment import CONSTRAINTS, DOCKERFILE, environment_entity, write_build_context

DOCKERFILE_TEXT = DOCKERFILE.read_text()
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n\s*", " ", DOCKERFILE_TEXT).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def pins(text: str) -> dict[str, str]:
    return {m[0].lower(): m[1] for m in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", text, re.M)}


def test_image_installs_exactly_constraints_txt():
    runs = [i for i in INSTRUCTIONS if i.startswith("RUN ")]
    install = next(r for r in runs if "uv pip install" in r)
    # The pinned set itself (-r), not a re-resolution of loose requirements.
    assert "-r /opt/finetune-phi/constraints.txt" in install
    assert "COPY constraints.txt /opt/finetune-phi/constraints.txt" in INSTRUCTIONS
    assert "uv pip check" in install
    # No version in the Dockerfile contradicts constraints.txt (uv, the installer, is the Makefile's: below).
    constraints = pins(CONSTRAINTS.read_text())
    for name, version in pins("\n".join(re.findall(r"([A-Za-z0-9_.\-]+==\S+)", DOCKERFILE_TEXT))).items():
        assert constraints.get(name) == version or name == "uv", (
            f"{name}=={version} in the Dockerfile, not in constraints.txt"
        )


def test_image_python_and_uv_match_the_local_setup():
    python = re.search(r"uv venv --python (\d+)\.(\d+)\.\d+", DOCKERFILE_TEXT)
    assert python and (int(python[1]), int(python[2])) == sys.version_info[:2]
    makefile_uv = re.search(r"^UV_VERSION := (\S+)", (PROJECT_ROOT / "Makefile").read_text(), re.M)[1]
    assert f"pip install --no-cache-dir uv=={makefile_uv}" in DOCKERFILE_TEXT  # from PyPI, as make setup does


def test_image_is_an_azure_ml_gpu_base_from_microsofts_registry_and_runs_as_non_root():
    (base,) = [i for i in INSTRUCTIONS if i.startswith("FROM ")]
    image, tag = base.removeprefix("FROM ").rsplit(":", 1)
    # The base images and tags Azure's own MLflow plugin builds on (its package data).
    plugin = Path(importlib.util.find_spec("azureml.mlflow").submodule_search_locations[0])
    listed = json.loads((plugin / "deploy" / "_mms" / "azureml_base_images.json").read_text())
    assert image.startswith("mcr.microsoft.com/azureml/") and "-cuda" in image and listed[image] == tag
    users = [i.split()[1] for i in INSTRUCTIONS if i.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_dockerignore_lets_only_what_the_dockerfile_copies_into_the_context():
    ignore = (DOCKERFILE.parent / "train.Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore
    copied = {i.split()[1] for i in INSTRUCTIONS if i.startswith("COPY ") and "--from" not in i}
    assert copied == allowed == {"constraints.txt"}


def test_environment_build_context_is_the_repo_files_and_versioned_by_content(tmp_path):
    context = write_build_context(tmp_path / "ctx")
    assert (context / "Dockerfile").read_bytes() == DOCKERFILE.read_bytes()
    assert (context / "constraints.txt").read_bytes() == CONSTRAINTS.read_bytes()
    env_cfg = OmegaConf.create({"name": "finetune-phi-train", "image": None})
    env = environment_entity(env_cfg, context)
    env.dump(tmp_path / "environment.yaml")
    loaded = load_environment(tmp_path / "environment.yaml")
    assert loaded.build.path == str(context) and loaded.version == env.version

    (context / "constraints.txt").write_text(
        CONSTRAINTS.read_text().replace("torch==2.13.0", "torch==2.12.0")
    )
    assert environment_entity(env_cfg, context).version != env.version  # a changed pin: a new version

    prebuilt = environment_entity(
        OmegaConf.create({"name": "e", "image": "myacr.azurecr.io/train:1"}), context
    )
    assert prebuilt.image == "myacr.azurecr.io/train:1" and prebuilt.build is None
