"""The whole local path in one command (`make e2e`): train, register, serve, connect, ask both
front ends (Prompt flow's and Microsoft Agent Framework's) and compare their answers.

python -m e2e                                   # the embedded default, three questions
python -m e2e --question "What is the first word of: amber river" --question "Repeat it"
python -m e2e --train-override eval.generate_samples=8   # replaces the default overrides
python -m e2e --model-uri models:/tiny-phi3-sft/1        # skip training: serve, connect, ask
python -m e2e --model-uri models:/smollm2/1 --serve-override target.server.kv_cache_mib=720  # a real model

It sits above the layers it drives (train, deploy, flow), as bench/ does, so it is the one
place that imports all three.

1. `python -m train` fine-tunes the tiny offline model and registers it in MLflow (the same
   store as `make demo`: outputs/mlflow.db unless MLFLOW_TRACKING_URI is set), without the
   held-out generation eval, per-epoch eval and checkpoints (`make demo` has them).
2. The registered version is served by `python -m deploy target=local` on a free loopback
   port, with a random per-run key (in the server's and this process's environment only).
3. `flow.connect` stores the endpoint and key as the flows' CustomConnection, in a
   promptflow home of this run's own (outputs/e2e/<time>/promptflow), so a developer's
   connection of the same name (say, to an Azure endpoint) is never overwritten.
4. The same questions go to both front ends (e2e/front_ends.py): the standard and chat flows
   through promptflow's runner, and `python -m agent` (ask over /v1 and /score, the chat with
   its history over its HTTP front end) in .venv-agent. Greedy answers must be equal: a
   mismatch fails the run (exit 1). The server is then stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from common.paths import PROJECT_ROOT

FLOW_DIR = PROJECT_ROOT / "flow"
DEFAULT_QUESTION = "How many words are in: glacier lantern"  # held out (answer: two)
# Asked in turn, as one conversation to the chat front ends and one by one to the standard ones.
DEFAULT_QUESTIONS = (DEFAULT_QUESTION, "What is the first word of: amber river", "Repeat the last word.")
# Cheap settings for a demo of the path: the same 2 epochs as `make demo` (1 epoch scores 0%
# held-out exact match), minus the held-out generation before/after training, the per-epoch
# eval (the final one still runs) and checkpoints.
DEFAULT_TRAIN_OVERRIDES = (
    "eval.generate_samples=0",
    "sft.eval_strategy=no",
    "sft.save_strategy=no",
    "logger.registered_model_name=e2e-tiny-phi3-sft",  # its own name: no versions piled on the demo's
)
KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"


def isolate_promptflow_home(home: Path) -> None:
    """Point promptflow at `home` (before it is imported: it fixes its home on import), with
    telemetry off, no trace collector (which would leave a background service running) and
    no calls out: its Azure Monitor exporter's settings fetch and its weekly pypi.org
    version check (skipped when its cache says it just checked)."""
    if "promptflow" in sys.modules:
        raise RuntimeError("promptflow was imported before its home could be set")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pf.yaml").write_text("telemetry:\n  enabled: false\ntrace:\n  destination: none\n")
    checked = {"last_check_time": str(datetime.datetime.now()), "latest_version": "0"}
    (home / "pf_version_check.json").write_text(json.dumps(checked))
    os.environ["PF_HOME_DIRECTORY"] = str(home)
    os.environ["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] = "true"


def train(run_dir: Path, overrides: list[str]) -> dict:
    """`python -m train` into `run_dir`; returns its summary.json."""
    command = [sys.executable, "-m", "train", f"hydra.run.dir={run_dir}", *overrides]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=PROJECT_ROOT, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    if not summary.get("registered_model"):
        raise RuntimeError(f"the run in {run_dir} registered no model (logger.log_model=false?)")
    return summary


def files_containing(secret: str, roots: list[Path]) -> tuple[list[str], int]:
    """Files under `roots` (files or folders) whose bytes contain `secret`, and how many were read."""
    files = {p for root in roots if root.exists() for p in ([root] if root.is_file() else root.rglob("*"))}
    files = sorted(p for p in files if p.is_file() and not p.is_symlink())
    return [str(p) for p in files if secret.encode() in p.read_bytes()], len(files)


def repo_files() -> list[Path]:
    """Tracked and untracked (not ignored) files of the checkout; outside git, every file
    but the virtual environment and the outputs folder."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".git", "outputs"}
        return [p for p in PROJECT_ROOT.rglob("*") if not skip & set(p.relative_to(PROJECT_ROOT).parts)]
    return [PROJECT_ROOT / name for name in listed if name]


def mlflow_run_files(tracking_uri: str, run_id: str | None) -> list[Path]:
    """The MLflow store file (sqlite) and the run's artifact folder."""
    from mlflow.tracking import MlflowClient

    paths = [Path(tracking_uri.removeprefix("sqlite:///"))] if tracking_uri.startswith("sqlite:///") else []
    if run_id:
        artifacts = MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri
        if artifacts.startswith("file://"):
            paths.append(Path(artifacts.removeprefix("file://")))
    return paths


def connection_config(port: int):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from flow.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(FLOW_DIR / "conf"), version_base="1.3"):
        return compose(
            "connect",
            # timeout_s: as the agent side's (e2e/front_ends.py), for a real model on a busy CPU
            overrides=["target=local", f"target.port={port}", f"target.key_env={KEY_ENV}", "timeout_s=600"],
        )


def run_e2e(
    questions: list[str],
    train_overrides: list[str],
    out_dir: Path,
    model_uri: str | None = None,
    serve_overrides: tuple[str, ...] = (),
) -> dict:
    """Train, serve, connect and ask both front ends; returns their answers and the seconds each
    step took. With `model_uri` (a registered model) the training step is skipped."""
    from deploy.serve.background import free_port, serve_in_background
    from e2e.front_ends import agent_python, compare_front_ends

    agent_python()  # fail before training when the Agent Framework environment is missing

    isolate_promptflow_home(out_dir / "promptflow")
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    if model_uri is None:
        summary = train(out_dir / "train", train_overrides)
        model_uri = "models:/{}/{}".format(*summary["registered_model"].split("/"))
        tracking_uri = summary["tracking_uri"]
        mlflow_files = mlflow_run_files(tracking_uri, summary["mlflow_run_id"])
        seconds["train+register"] = time.perf_counter() - started
    else:
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT}/outputs/mlflow.db"
        mlflow_files = mlflow_run_files(tracking_uri, None)

    key = secrets.token_urlsafe(24)
    port = free_port()
    server_env = {"MLFLOW_TRACKING_URI": tracking_uri, KEY_ENV: key}
    mark = time.perf_counter()
    print(f"serving {model_uri} on 127.0.0.1:{port} ...", flush=True)
    log_path = out_dir / "server.log"  # kept: the first place to look when an answer fails
    with serve_in_background(
        model_uri, port=port, env=server_env, overrides=tuple(serve_overrides), log_path=log_path
    ) as base_url:
        seconds["serve"] = time.perf_counter() - mark

        mark = time.perf_counter()
        from flow.connect import connect

        stored = connect(connection_config(port), environ={KEY_ENV: key})  # the key goes to the store only
        print(f"connection {stored.name!r} -> {dict(stored.configs)['endpoint']}", flush=True)
        seconds["connect"] = time.perf_counter() - mark

        mark = time.perf_counter()
        try:
            answers = compare_front_ends(questions, base_url, key, FLOW_DIR, out_dir)
        finally:  # promptflow's background service, should a flow test have started one: by its pid
            from flow.service import stop_service

            stop_service(out_dir / "promptflow")
        seconds["both front ends"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started

    # The key should be in promptflow's encrypted store only: check every file it could leak to.
    roots = [*repo_files(), FLOW_DIR, out_dir, *mlflow_files]
    leaks, scanned = files_containing(key, roots)
    if leaks:
        raise RuntimeError(f"the endpoint key was written to {leaks}")
    return {
        "questions": questions,
        **answers,
        "model": model_uri,
        "key_scan": f"found in none of {scanned} files (repo, run dir, promptflow home, MLflow store)",
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--question",
        action="append",
        default=None,
        help="a question (repeatable, asked in turn); default: " + " | ".join(DEFAULT_QUESTIONS),
    )
    parser.add_argument(
        "--train-override",
        action="append",
        default=None,
        help=f"a `python -m train` override (repeatable); default: {' '.join(DEFAULT_TRAIN_OVERRIDES)}",
    )
    parser.add_argument(
        "--model-uri", default=None, help="serve this registered model instead of training one"
    )
    parser.add_argument(
        "--serve-override",
        action="append",
        default=[],
        help="a `python -m deploy target=local` override (repeatable), e.g. target.server.kv_cache_mib=720: "
        "the KV cache's memory budget (default 1024 MiB on a CPU, docs/serving-memory.md)",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="a new folder; default: outputs/e2e/<time>"
    )
    args = parser.parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    out_dir = (args.out_dir or PROJECT_ROOT / "outputs" / "e2e" / stamp).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        parser.error(f"--out-dir {out_dir} is not empty; pick a new folder (runs are never overwritten)")
    overrides = list(DEFAULT_TRAIN_OVERRIDES if args.train_override is None else args.train_override)
    result = run_e2e(
        args.question or list(DEFAULT_QUESTIONS), overrides, out_dir, args.model_uri, args.serve_override
    )
    (out_dir / "e2e.json").write_text(json.dumps(result, indent=2))
    print(
        "\nEnd to end finished.",
        f"  model       {result['model']} (served on 127.0.0.1, stopped)",
        *report_answers(result),
        f"  key         {result['key_scan']}",
        "  seconds     " + ", ".join(f"{step} {s:.1f}" for step, s in result["seconds"].items()),
        f"  outputs     {out_dir}",
        sep="\n",
    )
    if result["mismatches"]:
        print("\nThe front ends disagree:", *result["mismatches"], sep="\n  ", file=sys.stderr)
        sys.exit(1)
    return result


def report_answers(result: dict) -> list[str]:
    """Each question with Prompt flow's chat answer and how many Agent Framework answers equal theirs."""
    agreeing = sum(len(answers) for answers in result["agent framework"].values()) - len(result["mismatches"])
    lines = [
        f"  question    {q}\n  chat flow   {a}"
        for q, a in zip(result["questions"], result["prompt flow"]["chat"])
    ]
    total = sum(len(answers) for answers in result["agent framework"].values())
    return [*lines, f"  agent       {agreeing} of {total} Agent Framework answers equal Prompt flow's"]


if __name__ == "__main__":
    main()
