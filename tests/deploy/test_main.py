"""`python -m deploy`: its config composes for both targets, and an action a target lacks is refused."""

from __future__ import annotations

import pytest


def test_deploy_config_composes_for_both_targets_and_rejects_bad_actions():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    import deploy.__main__  # noqa: F401  (registers the project_root resolver)
    from common.paths import PROJECT_ROOT
    from deploy import __main__ as cli

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf" / "deploy"), version_base="1.3"):
        local = compose("deploy", overrides=["port=8001"])
        azure = compose(
            "deploy", overrides=["target=azureml", "target.deployment.instance_type=Standard_NC24ads_A100_v4"]
        )
        bad = compose("deploy", overrides=["action=status"])
        for typo, named in (
            ("action=deplyo", "deplyo"),
            ("target.endpoint.auth_mode=keys", "keys"),
            ("target.endpont.name=x", "endpont"),
            ("+chat.urll=x", "urll"),
        ):
            with pytest.raises(ConfigCompositionException) as error:
                compose("deploy", overrides=["target=azureml", typo])
            assert named in f"{error.value} {error.value.__cause__}"
    GlobalHydra.instance().clear()
    assert (local.target.name, local.port, local.key_env) == ("local", 8001, "FINETUNE_PHI_ENDPOINT_KEY")
    assert azure.target.deployment.instance_type == "Standard_NC24ads_A100_v4"
    assert azure.target.endpoint.auth_mode.name == "key" and azure.target.traffic.new_percent == 100
    with pytest.raises(cli.GateError, match="action=status needs target=azureml"):
        cli.run(bad)


def _deploy(*overrides: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    from common.paths import PROJECT_ROOT

    return subprocess.run(
        [sys.executable, "-m", "deploy", *overrides],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_model_or_a_taken_port_is_one_line_and_exit_status_2(tmp_path):
    import socket

    store = f"tracking_uri=sqlite:///{tmp_path}/mlflow.db"
    missing = _deploy("action=chat", "model.name=nope", store)
    assert missing.returncode == 2, missing.stderr
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("deploy: no registered model named 'nope'") and "python -m train" in line

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _deploy("target=local", f"port={port}", "model.name=nope", store)
    assert busy.returncode == 2, busy.stderr
    (line,) = busy.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line and "in use" in line and "port=8001" in line
