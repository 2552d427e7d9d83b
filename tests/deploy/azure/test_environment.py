"""The serving environment is defined once: the generated spec matches constraints.txt."""

from __future__ import annotations

import re

from deploy.azure import environment


def test_serve_requirements_file_is_generated_from_constraints():
    # Fails when constraints.txt changes without `python -m deploy.azure.environment`.
    assert environment.REQUIREMENTS.read_text(encoding="utf-8") == environment.serving_requirements()


def test_serving_pins_are_the_project_pins_and_the_dockerfile_installs_them():
    pins = environment.pinned_versions()
    lines = [line for line in environment.serving_requirements().splitlines() if not line.startswith("#")]
    assert lines[:-1] == [f"{p}=={pins[p]}" for p in environment.SERVING_PACKAGES]
    assert lines[-1] == environment.AZURE_SERVER
    dockerfile = environment.DOCKERFILE.read_text(encoding="utf-8")
    assert "COPY serve.requirements.txt" in dockerfile and "-r /tmp/serve.requirements.txt" in dockerfile


def test_the_image_names_its_python_prefix_for_azures_server_scripts():
    """Azure's runit script for the inference server puts $AZUREML_CONDA_ENVIRONMENT_PATH/lib first on
    LD_LIBRARY_PATH, or else the base image's conda lib, under the libraries of the prefix we install."""
    dockerfile = environment.DOCKERFILE.read_text(encoding="utf-8")
    prefix = re.search(r"conda create -y -p (\S+)", dockerfile)[1]
    assert f"AZUREML_CONDA_ENVIRONMENT_PATH={prefix}" in dockerfile
    assert (
        f"LD_LIBRARY_PATH={prefix}/lib:$LD_LIBRARY_PATH" in dockerfile
        and f"PATH={prefix}/bin:$PATH" in dockerfile
    )


def test_the_model_is_logged_with_the_versions_it_is_served_with():
    """train.tracking pins the MLflow model's requirements from the same installed stack."""
    from train.tracking import pip_requirements

    served = dict(
        line.split("==") for line in environment.serving_requirements().splitlines() if "==" in line
    )
    for requirement in pip_requirements(with_peft=True):
        name, version = requirement.split("==")
        assert served[name] == version, requirement


def test_environment_entity_is_versioned_by_its_build_context(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "finetune-phi-serve", "image": None})
    first = environment.environment_entity(cfg, environment.write_build_context(tmp_path / "a"))
    same = environment.environment_entity(cfg, environment.write_build_context(tmp_path / "b"))
    assert first.version == same.version and first.build.dockerfile_path == "Dockerfile"
    (tmp_path / "b" / "serve.requirements.txt").write_text("torch==0\n")
    assert environment.environment_entity(cfg, tmp_path / "b").version != first.version
