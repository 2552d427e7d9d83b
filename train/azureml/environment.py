"""The job's environment: docker/train.Dockerfile built in the workspace, or a prebuilt image.

The build context is the Dockerfile and constraints.txt only (the image holds dependencies;
code comes with the job), copied into the run dir. The environment version is a hash of
those two files, so an unchanged stack reuses the image the workspace built before, and a
changed pin gets a new version instead of silently replacing the old one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common.azure_environment import ensure_environment, versioned_environment
from common.paths import PROJECT_ROOT

__all__ = ["ensure_environment", "environment_entity", "write_build_context"]

DOCKERFILE = PROJECT_ROOT / "docker" / "train.Dockerfile"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"


def write_build_context(out_dir: Path) -> Path:
    """`out_dir` with Dockerfile and constraints.txt, as `docker build` sees them from the repo."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCKERFILE, out_dir / "Dockerfile")
    shutil.copyfile(CONSTRAINTS, out_dir / "constraints.txt")
    return out_dir


def environment_entity(env_cfg, context_dir: Path):
    """The Environment to register: a build of `context_dir`, or `env_cfg.image` as is."""
    return versioned_environment(
        env_cfg.name,
        "finetune-phi training stack (constraints.txt)",
        image=env_cfg.image,
        context_dir=context_dir,
        files=("constraints.txt",),
    )
