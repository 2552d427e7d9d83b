"""What `python -m deploy` does, as plain functions of the composed config (conf/deploy/)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from common.azure_workspace import WorkspaceSettings, endpoint_credentials, ml_client
from deploy import chat
from deploy.config import Action
from deploy.evaluate.cases import EvaluationError, held_out_cases
from deploy.evaluate.evaluate import run_evaluate
from deploy.evaluate.promote import run_promote
from deploy.evaluate.tracking import evaluation_tags, experiment_of
from deploy.registry import find as registry
from deploy.registry.find import find_model, training_run_id
from deploy.registry.load import load_checked_model

log = logging.getLogger(__name__)


def azure_client(cfg, credential=None):
    return ml_client(WorkspaceSettings.from_config(cfg.target.workspace), credential=credential)


def deployment_gate(cfg, ref: registry.ModelRef):
    """The blue/green gate with its conversations, read before anything is created (None: gate.azure=false)."""
    from deploy.azureml import DeployError
    from deploy.azureml_gate import DeploymentGate

    if not cfg.gate.azure:
        return None
    run_id = training_run_id(ref)
    try:
        cases, source = held_out_cases(cfg.eval, run_id, cfg.gate.azure_rows)
    except EvaluationError as e:
        raise DeployError(
            f"the blue/green gate has no conversations: {e} (or deploy ungated: gate.azure=false)"
        ) from e
    tags = evaluation_tags(ref, run_id, source, cfg.eval.max_new_tokens)
    return DeploymentGate(cases, cfg.eval, cfg.gate, experiment_of(run_id), tags)


def deploy_azureml(cfg, client, ref: registry.ModelRef) -> dict:
    from common.azure_environment import ensure_environment
    from deploy import azureml, environment

    traffic_gate = deployment_gate(cfg, ref)

    if cfg.target.preflight.roles:
        for line in azureml.preflight_roles(client, cfg.target.endpoint):
            print(f"preflight: {line}", flush=True)
    context = environment.write_build_context(Path(tempfile.mkdtemp(prefix="finetune-phi-serve-env-")))
    env = ensure_environment(client, environment.environment_entity(cfg.target.environment, context))
    result = azureml.deploy(cfg, client, ref, env, cfg.tracking_uri, gate=traffic_gate)
    print(
        f"deployed {ref.uri} to {result['endpoint']}/{result['deployment']}; traffic "
        f"{result['traffic_before'] or '{}'} -> {result['traffic_after']}\n"
        f"  smoke test answer: {result['smoke_test_answer']!r}\n"
        f"  scoring URI: {result['scoring_uri']} (key: `az ml online-endpoint get-credentials -n {result['endpoint']}`"
        " or `python -m deploy target=azureml action=chat`; it is never written to a file here)"
    )
    return result


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

    from deploy import azureml

    if cfg.action is Action.teardown and not cfg.target.teardown.deployment:
        azureml.check_teardown_confirmed(
            cfg.target.endpoint.name, cfg.target.teardown.confirm
        )  # before any client
    client = client or azure_client(cfg)
    if cfg.action is Action.status:
        rows = azureml.status(client)
        print(azureml.format_status(rows))
        return rows
    if cfg.action is Action.teardown:
        message = azureml.teardown(
            client, cfg.target.endpoint.name, cfg.target.teardown.confirm, cfg.target.teardown.deployment
        )
        print(message)
        return message
    ref = find_model(cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=True)
    if cfg.parity.check:
        load_checked_model(ref, cfg.tracking_uri, cfg.parity.check)
    return deploy_azureml(cfg, client, ref)


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
