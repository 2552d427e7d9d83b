"""The front end's environment: consistent, pinned, and without the stack it must not share."""

from __future__ import annotations

import json
import subprocess

from common.paths import PROJECT_ROOT
from tests.agent.conftest import AGENT_VENV, run_agent

INSTALLED = (
    "import json, importlib.metadata as m; "
    "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"
)


def pins() -> dict[str, str]:
    lines = (PROJECT_ROOT / "agent" / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_the_environment_is_consistent_and_holds_the_pinned_set(agent_python, tmp_path):
    check = subprocess.run(
        [str(AGENT_VENV / "bin" / "uv"), "pip", "check", "--python", agent_python],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # Outside the checkout, whose folder (on the path when run from it) holds the project's egg-info.
    installed = json.loads(
        subprocess.run(
            [agent_python, "-c", INSTALLED], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )
    wanted = pins()
    assert {name: installed.get(name) for name in wanted} == wanted
    assert set(installed) - set(wanted) <= {"pip", "uv", "setuptools"}  # nothing unpinned came along
    assert not {"torch", "promptflow", "promptflow-tracing", "transformers", "mlflow"} & set(installed)
    assert installed["opentelemetry-api"] >= "1.39"  # why it cannot share .venv with promptflow


def test_usage_errors_exit_2_with_one_line(agent_python):
    bad_url = run_agent(agent_python, "ask", "hi", "--score-url", "ftp://example")
    assert (bad_url.returncode, bad_url.stdout) == (2, "")
    assert bad_url.stderr.strip() == "python -m agent: --score-url 'ftp://example' must be an http(s) URL"
    no_tracking = run_agent(agent_python, "ask", "hi", "--trace-to", "http://127.0.0.1:9")
    assert no_tracking.returncode == 2
    assert no_tracking.stderr.count("\n") == 1 and "is `mlflow server` running?" in no_tracking.stderr
    unknown = run_agent(agent_python, "ask")
    assert unknown.returncode == 2 and "question" in unknown.stderr
