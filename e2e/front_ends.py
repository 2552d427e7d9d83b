"""Both front ends against the same served model, the same questions, greedy: Prompt flow's
(flow/standard and flow/chat, run by promptflow in this environment) and Microsoft Agent
Framework's (`python -m agent` in .venv-agent: `ask` over the server's /v1 and over its /score,
and the HTTP front end for the chat with history). Every answer must equal Prompt flow's.

The Agent Framework side runs in its own environment (`make agent-setup`), as a subprocess: it
cannot share this one (opentelemetry>=1.39 against promptflow's <1.39). The endpoint key reaches
it through its environment only.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

from common.paths import PROJECT_ROOT

AGENT_PYTHON = PROJECT_ROOT / ".venv-agent" / "bin" / "python"
KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"
# A real model on a busy CPU can take minutes over 64 new tokens; the comparison waits for it.
ANSWER_TIMEOUT_S = "600"


def agent_python() -> str:
    if not (AGENT_PYTHON.parent.parent / ".installed").exists():
        raise RuntimeError(f"{AGENT_PYTHON.parent.parent} is missing: run `make agent-setup` first")
    return str(AGENT_PYTHON)


def ask_agent(question: str, backend: list[str], key: str) -> str:
    done = subprocess.run(
        [agent_python(), "-m", "agent", "ask", question, *backend],
        cwd=PROJECT_ROOT,
        env={**os.environ, KEY_ENV: key},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m agent ask failed: {done.stderr.strip()}")
    return done.stdout.removesuffix("\n")


def chat_over_http(questions: list[str], base_url: str, key: str, log: Path) -> list[str]:
    """The conversation through `python -m agent serve`: each question with the history so far."""
    from deploy.serve.background import free_port, wait_for_health

    port = free_port()
    with log.open("w") as out:
        server = subprocess.Popen(
            [agent_python(), "-m", "agent", "serve", "--port", str(port), "--base-url", f"{base_url}/v1"],
            cwd=PROJECT_ROOT,
            env={**os.environ, KEY_ENV: key},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_health(f"http://127.0.0.1:{port}", server, timeout=120)
            history, answers = [], []
            for question in questions:
                body = json.dumps({"question": question, "chat_history": history}).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=body)
                with urllib.request.urlopen(request, timeout=600) as response:
                    answers.append(json.loads(response.read())["answer"])
                history.append({"inputs": {"question": question}, "outputs": {"answer": answers[-1]}})
            return answers
        finally:
            server.terminate()
            server.wait(60)


def prompt_flow_answers(questions: list[str], flow_dir: Path) -> dict[str, list[str]]:
    from promptflow.client import PFClient

    pf = PFClient()
    history, chat = [], []
    for question in questions:
        chat.append(
            pf.test(flow=flow_dir / "chat", inputs={"question": question, "chat_history": history})["answer"]
        )
        history.append({"inputs": {"question": question}, "outputs": {"answer": chat[-1]}})
    standard = [pf.test(flow=flow_dir / "standard", inputs={"input_data": q})["answer"] for q in questions]
    return {"standard": standard, "chat": chat}


def compare_front_ends(questions: list[str], base_url: str, key: str, flow_dir: Path, out_dir: Path) -> dict:
    """Ask both front ends; returns the answers and the mismatches (none when they agree)."""
    flows = prompt_flow_answers(questions, flow_dir)
    score = ["--score-url", f"{base_url}/score", "--payload", "openai", "--timeout-s", ANSWER_TIMEOUT_S]
    agents = {
        "ask /v1": [ask_agent(q, ["--base-url", f"{base_url}/v1"], key) for q in questions],
        "ask /score": [ask_agent(q, score, key) for q in questions],
        "chat (HTTP)": chat_over_http(questions, base_url, key, out_dir / "agent-front-end.log"),
    }
    expected = {"ask /v1": "standard", "ask /score": "standard", "chat (HTTP)": "chat"}
    mismatches = [
        f"{name} answered {got!r} to {question!r}; Prompt flow's {expected[name]} flow: {want!r}"
        for name, answers in agents.items()
        for question, got, want in zip(questions, answers, flows[expected[name]])
        if got != want
    ]
    return {"prompt flow": flows, "agent framework": agents, "mismatches": mismatches}
