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
    with pytest.raises(SystemExit, match="action=status needs target=azureml"):
        cli.run(bad)
