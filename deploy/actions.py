"""What `python -m deploy` does, as plain functions of the composed config (conf/deploy/)."""

from __future__ import annotations

import logging
import os

from common.azure_workspace import WorkspaceSettings, endpoint_credentials, ml_client
from deploy import chat
from deploy.azure.blue_green import run_deploy
from deploy.azure.endpoints import run_status, run_teardown
from deploy.config import Action
from deploy.evaluate.evaluate import run_evaluate
from deploy.evaluate.promote import run_promote
from deploy.registry.find import find_model
from deploy.registry.load import load_checked_model

log = logging.getLogger(__name__)


def azure_client(cfg, credential=None):
    return ml_client(WorkspaceSettings.from_config(cfg.target.workspace), credential=credential)


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
        from omegaconf import OmegaConf

        from deploy import local

        ref = find_model(cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=False)
        chat_model = load_checked_model(ref, cfg.tracking_uri, cfg.parity.check)
        target = OmegaConf.to_object(cfg.target)  # the LocalTarget dataclass, with its limits and settings
        return local.serve(chat_model, target.limits, target.server, port=int(cfg.port), key_env=cfg.key_env)

    if cfg.action is Action.status:
        return run_status(cfg, client)
    if cfg.action is Action.teardown:
        return run_teardown(cfg, client)
    return run_deploy(cfg, client)


def run_chat(cfg, client=None):
    params = chat.GenerationParams(max_new_tokens=cfg.chat.max_tokens, temperature=cfg.chat.temperature)
    if cfg.chat.url:
        url = cfg.chat.url.rstrip("/")
        url = url if url.endswith("/score") else f"{url}/score"
        answer = chat.endpoint_answer(url, os.environ.get(cfg.key_env), params)
    elif cfg.target.name == "azureml":
        credentials = endpoint_credentials(client or azure_client(cfg), cfg.target.endpoint.name)
        url = credentials.scoring_uri
        answer = chat.endpoint_answer(url, credentials.key, params)
    else:
        from deploy.scoring.score import Scorer

        ref = find_model(cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=False)
        url = ref.uri
        answer = chat.scorer_answer(
            Scorer(load_checked_model(ref, cfg.tracking_uri, cfg.parity.check)), params
        )
    print("chatting with", url, "(/reset to start over, /exit or Ctrl-D to leave)")
    return chat.chat_loop(answer, chat.stdin_lines(), system=cfg.chat.system)
