"""The job's environment: docker/train.Dockerfile built in the workspace, or a prebuilt image.

The build context is the Dockerfile and constraints.txt only (the image holds dependencies;
code comes with the job), copied into the run dir. The environment version is a hash of
those two files, so an unchanged stack reuses the image the workspace built before, and a
changed pin gets a new version instead of silently replacing the old one.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from azure.ai.ml.entities import BuildContext, Environment

from train.config import PROJECT_ROOT

log = logging.getLogger(__name__)

DOCKERFILE = PROJECT_ROOT / "docker" / "train.Dockerfile"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"


def write_build_context(out_dir: Path) -> Path:
    """`out_dir` with Dockerfile and constraints.txt, as `docker build` sees them from the repo."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCKERFILE, out_dir / "Dockerfile")
    shutil.copyfile(CONSTRAINTS, out_dir / "constraints.txt")
    return out_dir


def context_version(context_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("Dockerfile", "constraints.txt"):
        h.update(name.encode() + b"\0" + (context_dir / name).read_bytes())
    return h.hexdigest()[:16]


def environment_entity(env_cfg, context_dir: Path) -> Environment:
    """The Environment to register: a build of `context_dir`, or `env_cfg.image` as is."""
    description = "finetune-phi training stack (constraints.txt)"
    if env_cfg.image:
        version = hashlib.sha256(env_cfg.image.encode()).hexdigest()[:16]
        return Environment(name=env_cfg.name, version=version, image=env_cfg.image, description=description)
    return Environment(
        name=env_cfg.name,
        version=context_version(context_dir),
        build=BuildContext(path=str(context_dir), dockerfile_path="Dockerfile"),
        description=description,
    )


def ensure_environment(ml_client, environment: Environment) -> Environment:
    """The registered environment of this name and version, created when missing."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        existing = ml_client.environments.get(environment.name, version=environment.version)
        log.info("environment %s:%s exists; reusing it", environment.name, environment.version)
        return existing
    except ResourceNotFoundError:
        log.info("registering environment %s:%s", environment.name, environment.version)
        return ml_client.environments.create_or_update(environment)
