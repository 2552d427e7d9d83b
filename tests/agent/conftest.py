"""The Agent Framework front end runs in its own environment (.venv-agent, `make agent-setup`),
which has no torch and no pytest: the tests run here, in .venv, and drive it through its public
entry points (`python -m agent ...` and its HTTP front end) as subprocesses of that environment.
Without it they FAIL, naming the command that builds it; CI (.ci/run) builds it."""

from __future__ import annotations

import os
import subprocess

import pytest

from common.paths import PROJECT_ROOT

AGENT_VENV = PROJECT_ROOT / ".venv-agent"
AGENT_PYTHON = AGENT_VENV / "bin" / "python"


@pytest.fixture(scope="session")
def agent_python():
    if not (AGENT_VENV / ".installed").exists():
        pytest.fail(f"{AGENT_VENV} is missing or incomplete: run `make agent-setup` (about 20 s)")
    return str(AGENT_PYTHON)


def run_agent(agent_python: str, *args: str, env: dict | None = None, stdin: str = "", timeout: float = 300):
    """`python -m agent ARGS` in .venv-agent; `env` is added to a copy of this environment."""
    return subprocess.run(
        [agent_python, "-m", "agent", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
