"""What `python -m deploy` does, as plain functions of the composed config (conf/deploy/)."""

from __future__ import annotations

from deploy.azure.blue_green import run_deploy
from deploy.azure.endpoints import run_status, run_teardown
from deploy.config import Action
from deploy.evaluate.evaluate import run_evaluate
from deploy.evaluate.promote import run_promote
from deploy.serve.chat import run_chat
from deploy.serve.server import run_local


def run(cfg, client=None) -> object:
    """Dispatch `cfg.action` for `cfg.target.name`; `client` injects an MLClient (tests)."""
    if cfg.action is Action.chat:
        return run_chat(cfg, client)
    if cfg.action is Action.evaluate:
        return run_evaluate(cfg)
    if cfg.action is Action.promote:
        return run_promote(cfg)
    if cfg.target.name == "local":
        if cfg.action is not Action.deploy:
            raise SystemExit(
                f"action={cfg.action.name} needs target=azureml (the local server lives only while it runs)"
            )
        return run_local(cfg)
    if cfg.action is Action.status:
        return run_status(cfg, client)
    if cfg.action is Action.teardown:
        return run_teardown(cfg, client)
    return run_deploy(cfg, client)
