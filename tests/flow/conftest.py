"""Fixtures for the flow tests: an isolated promptflow home and the connect config.

promptflow fixes its home directory (connections, run records, config) when it is first
imported, so PF_HOME_DIRECTORY is set here, at collection, before any test imports it.
The keyring that holds promptflow's encryption key goes to a temporary file too
(keyrings.alt's plaintext backend under XDG_DATA_HOME), so no test ever touches a
developer's ~/.promptflow or keyring.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

FLOW_DIR = Path(__file__).resolve().parents[2] / "flow"
PF_HOME = Path(tempfile.mkdtemp(prefix="finetune-phi-pf-home-"))
KEYRING_HOME = PF_HOME / "xdg-data"
os.environ["PF_HOME_DIRECTORY"] = str(PF_HOME)
os.environ["XDG_DATA_HOME"] = str(KEYRING_HOME)
os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
# promptflow builds an Azure Monitor exporter even with telemetry off, and that exporter
# fetches its settings from settings.sdk.monitor.azure.com unless this is set.
os.environ["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] = "true"
# Telemetry off; no trace collector (which would start promptflow's background service).
(PF_HOME / "pf.yaml").write_text("telemetry:\n  enabled: false\ntrace:\n  destination: none\n")
# promptflow asks pypi.org for a newer version once a week; a fresh check time skips that.
(PF_HOME / "pf_version_check.json").write_text(
    json.dumps({"last_check_time": str(datetime.datetime.now()), "latest_version": "0"})
)


@pytest.fixture(scope="session", autouse=True)
def isolated_promptflow_home():
    if "promptflow._sdk._constants" in sys.modules:
        from promptflow._sdk._constants import HOME_PROMPT_FLOW_DIR

        assert Path(HOME_PROMPT_FLOW_DIR) == PF_HOME.resolve(), (
            f"promptflow was imported before tests/flow/conftest.py and uses {HOME_PROMPT_FLOW_DIR}; "
            "refusing to touch that store"
        )
    yield PF_HOME
    from flow.service import stop_service

    stop_service(PF_HOME)  # promptflow's background service, had a test started one: by its pid
    shutil.rmtree(PF_HOME, ignore_errors=True)


def connect_config(*overrides: str):
    """`python -m flow.connect`'s config as Hydra composes it."""
    from flow.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(FLOW_DIR / "conf"), version_base="1.3"):
        return compose("connect", overrides=list(overrides))


def port_and_route(url: str) -> tuple[str, str]:
    host_port, route = url.removeprefix("http://").split("/", 1)
    return host_port.split(":")[1], "/" + route
