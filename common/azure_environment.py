"""Azure ML environments versioned by their content: one rule for the training and serving images.

An environment is either a Docker build context (a Dockerfile and the files it copies) built
by the workspace, or an image already pushed. Its version is a hash of that content, so an
unchanged stack reuses what the workspace built before, and a changed pin gets a new version
instead of silently replacing the old one.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def content_version(context_dir: Path, names: tuple[str, ...]) -> str:
    """A short hash of the named files of a build context (names included, order fixed)."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (context_dir / name).read_bytes())
    return h.hexdigest()[:16]


def versioned_environment(
    name: str, description: str, *, image: str | None = None, context_dir: Path | None = None, files=()
):
    """The Environment to register: `image` as is, or a build of `context_dir` (its Dockerfile
    and `files`), versioned by a hash of what it is made of."""
    from azure.ai.ml.entities import BuildContext, Environment

    if image:
        version = hashlib.sha256(image.encode()).hexdigest()[:16]
        return Environment(name=name, version=version, image=image, description=description)
    return Environment(
        name=name,
        version=content_version(context_dir, ("Dockerfile", *files)),
        build=BuildContext(path=str(context_dir), dockerfile_path="Dockerfile"),
        description=description,
    )


def ensure_environment(ml_client, environment):
    """The registered environment of this name and version, created when missing."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        existing = ml_client.environments.get(environment.name, version=environment.version)
        log.info("environment %s:%s exists; reusing it", environment.name, environment.version)
        return existing
    except ResourceNotFoundError:
        log.info("registering environment %s:%s", environment.name, environment.version)
        return ml_client.environments.create_or_update(environment)
