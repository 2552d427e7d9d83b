"""Azure ML's inference server (azureml-inference-server-http, `azmlinfsrv`) on this machine.

`serve_venv` builds a virtual environment from docker/serve.requirements.txt, the serving
image's own requirements, once per content of that file (cached under $FINETUNE_PHI_CACHE);
`AzmlInfSrv` runs the server from it on 127.0.0.1, stopped by its own process group.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

COMPLETE = ".complete"  # written last: a venv without it is a half-built leftover

# azmlinfsrv has no --host: amlserver.run() binds its module constant DEFAULT_HOST, "0.0.0.0"
# (azureml_inference_server_http/constants.py). Tests bind loopback by setting that constant before
# run(), the CLI's own entry function; everything else is the CLI's code path.
LAUNCHER = (
    "import sys; from azureml_inference_server_http import amlserver; "
    "amlserver.DEFAULT_HOST = '127.0.0.1'; sys.argv[0] = 'azmlinfsrv'; amlserver.run()"
)


def serve_venv(requirements: Path, cache_dir: Path) -> Path:
    """The venv for `requirements`, built with uv once per content (safe for concurrent callers).

    torch comes from $PIP_FIND_LINKS where set (the CPU wheel on the dev and CI machines),
    everything else from the package index, as the serving image installs it.
    """
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{sys.version_info[:2]}-{platform.machine()}".encode())
    venv = cache_dir / f"serve-venv-{digest.hexdigest()[:16]}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second pytest process waits instead of building twice
        if (venv / COMPLETE).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        uv = Path(sys.executable).with_name("uv")  # make setup installs it into .venv
        find_links = os.environ.get("PIP_FIND_LINKS")
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, venv], check=True)
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", venv / "bin" / "python", "-r", requirements]
            + (["--find-links", find_links] if find_links else []),
            check=True,
        )
        (venv / COMPLETE).touch()
    return venv


class AzmlInfSrv:
    """`azmlinfsrv --entry_script ENTRY --port PORT` started as Azure's image starts it: from
    `app_root` (its runit script does `cd $AML_APP_ROOT`), AZUREML_MODEL_DIR set, log to a file."""

    def __init__(self, venv: Path, app_root: Path, entry_script: str, model_dir: Path, port: int, log: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "AZUREML_"))}
        env |= {
            "AML_APP_ROOT": str(app_root),
            "AZUREML_ENTRY_SCRIPT": entry_script,
            "AZUREML_MODEL_DIR": str(model_dir),
            # gunicorn 26 otherwise opens ~/.gunicorn/gunicorn.ctl, one socket for every server.
            "GUNICORN_CMD_ARGS": "--no-control-socket",
        }
        self.url, self.log = f"http://127.0.0.1:{port}", log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [
                    venv / "bin" / "python",
                    "-c",
                    LAUNCHER,
                    "--entry_script",
                    entry_script,
                    "--port",
                    str(port),
                ],
                cwd=app_root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the gunicorn master and its worker
            )

    def wait_until_live(self, timeout_s: float = 240) -> None:
        """Until `GET /` (the liveness route) answers; init() loads the model before that."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"azmlinfsrv did not come up:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
