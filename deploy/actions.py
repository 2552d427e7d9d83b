"""What `python -m deploy` does, as plain functions of the composed config (conf/deploy/)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from common.azure_workspace import WorkspaceSettings, endpoint_credentials, ml_client
from deploy import chat, registry
from deploy.config import Action

log = logging.getLogger(__name__)


def find_model(cfg, for_azureml: bool) -> registry.ModelRef:
    mlflow.set_tracking_uri(cfg.tracking_uri)
    needs_registry = not (cfg.model.get("uri") or cfg.model.get("azureml_job"))
    client = MlflowClient() if needs_registry else None
    return registry.resolve(cfg.model, client, cfg.output_root, for_azureml=for_azureml)


def load_checked_model(cfg, ref: registry.ModelRef):
    """The ChatModel the server will use, after the parity check (unless parity.check=false)."""
    from deploy import parity
    from deploy.scoring.score import ChatModel

    uri = ref.uri if not ref.uri.startswith("azureml://") else f"runs:/{ref.azureml_job}/model"
    if ref.azureml_job and not cfg.tracking_uri.startswith("azureml:"):
        raise parity.ParityError(
            f"the parity check loads the job's model ({uri}) through MLflow: set MLFLOW_TRACKING_URI to the "
            "workspace's (`az ml workspace show --query mlflow_tracking_uri -o tsv`), or skip it: parity.check=false"
        )
    print(f"loading {uri} ...", flush=True)
    chat_model = ChatModel(uri)
    if cfg.parity.check:
        training = None
        run_id = ref.azureml_job or _run_id(ref)
        if run_id:
            training = parity.download_training_tokenizer_info(
                run_id, tempfile.mkdtemp(prefix="finetune-phi-tok-")
            )
        for note in parity.check(chat_model, training):
            print(f"parity: {note}", flush=True)
    return chat_model


def _run_id(ref: registry.ModelRef) -> str | None:
    if ref.uri.startswith("models:/") and ref.version:
        return MlflowClient().get_model_version(ref.name, ref.version).run_id
    if ref.uri.startswith("runs:/"):
        return ref.uri.split("/")[1]
    return None


def azure_client(cfg, credential=None):
    return ml_client(WorkspaceSettings.from_config(cfg.target.workspace), credential=credential)


def deploy_azureml(cfg, client, ref: registry.ModelRef) -> dict:
    from common.azure_environment import ensure_environment
    from deploy import azureml, environment

    if cfg.target.preflight.roles:
        for line in azureml.preflight_roles(client, cfg.target.endpoint):
            print(f"preflight: {line}", flush=True)
    context = environment.write_build_context(Path(tempfile.mkdtemp(prefix="finetune-phi-serve-env-")))
    env = ensure_environment(client, environment.environment_entity(cfg.target.environment, context))
    result = azureml.deploy(cfg, client, ref, env, cfg.tracking_uri)
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
    if cfg.target.name == "local":
        if cfg.action is not Action.deploy:
            raise SystemExit(
                f"action={cfg.action.name} needs target=azureml (the local server lives only while it runs)"
            )
        from omegaconf import OmegaConf

        from deploy import local

        chat_model = load_checked_model(cfg, find_model(cfg, for_azureml=False))
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
    ref = find_model(cfg, for_azureml=True)
    if cfg.parity.check:
        load_checked_model(cfg, ref)
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

        ref = find_model(cfg, for_azureml=False)
        url = ref.uri
        answer = chat.scorer_answer(Scorer(load_checked_model(cfg, ref)), params)
    print("chatting with", url, "(/reset to start over, /exit or Ctrl-D to leave)")
    return chat.chat_loop(answer, chat.stdin_lines(), system=cfg.chat.system)
