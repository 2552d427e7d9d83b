"""What `python -m deploy` does, as plain functions of the composed config (conf/deploy/)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from common.azure_workspace import WorkspaceSettings, endpoint_credentials, ml_client
from deploy import chat, evaluate, gate
from deploy.config import Action
from deploy.registry import find as registry
from deploy.registry.find import find_model, registry_version, training_run_id
from deploy.registry.load import load_checked_model

log = logging.getLogger(__name__)


def evaluation_tags(cfg, ref: registry.ModelRef, run_id: str | None, source: str) -> dict[str, str]:
    """What an evaluation run is of: the model, its training run, the conversations and settings."""
    return {
        "eval.model_name": ref.name,
        "eval.model_version": str(ref.version or ""),
        "eval.model_uri": ref.uri,
        "eval.training_run_id": run_id or "",
        "eval.source": source,
        "eval.max_new_tokens": str(cfg.eval.max_new_tokens),
    }


def evaluate_model(cfg, ref: registry.ModelRef, cases, source: str, label: str) -> evaluate.Evaluation:
    """`ref` loaded as the server loads it, evaluated on `cases`, logged in its training run's
    experiment (when that run is reachable) and its version tagged."""
    chat_model = load_checked_model(ref, cfg.tracking_uri, cfg.parity.check)
    evaluation = evaluate.evaluate_in_process(chat_model, cases, cfg.eval, label)
    del chat_model  # before a second model loads (promote)
    registered = registry_version(ref)
    run_id = registered.run_id if registered is not None else training_run_id(ref)
    experiment_id = evaluate.experiment_of(run_id)
    if experiment_id is None:
        print(
            f"{label}: its training run is not in {cfg.tracking_uri}: the evaluation is printed, not logged"
        )
        return evaluation
    tags = evaluation_tags(cfg, ref, run_id, source)
    evaluate.log_evaluation(evaluation, experiment_id, tags, registered)
    return evaluation


def run_evaluate(cfg) -> evaluate.Evaluation:
    ref = find_model(cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=False)
    cases, source = evaluate.held_out_cases(cfg.eval, training_run_id(ref), cfg.eval.max_rows)
    label = f"v{ref.version}" if ref.version else ref.name
    print(f"evaluating {ref.uri} on {len(cases)} conversations from {source} ...", flush=True)
    evaluation = evaluate_model(cfg, ref, cases, source, label)
    print(evaluate.metrics_table(evaluation), evaluate.answers_table(evaluation.rows), sep="\n\n")
    if evaluation.run_id:
        print(f"\nevaluation run {evaluation.run_id}: mlflow ui --backend-store-uri {cfg.tracking_uri}")
    return evaluation


def run_promote(cfg) -> gate.Comparison | None:
    """Move `gate.alias` to `model.version` when it is within `gate.tolerance` of the holder, both
    evaluated here on the same conversations; else raise PromotionRefused, the alias unmoved."""
    if cfg.model.get("version") is None or cfg.model.get("alias") or cfg.model.get("uri"):
        raise gate.GateError("action=promote takes a registered version: model.version=N")
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    name, alias = cfg.model.name, cfg.gate.alias
    version = registry.registered_version(client, name, cfg.model.version)
    holder = registry.alias_holder(client, name, alias)
    if holder == version:
        print(f"{name} v{version} already holds @{alias}; nothing to do")
        return None
    candidate = registry.version_ref(name, version)
    cases, source = evaluate.held_out_cases(cfg.eval, training_run_id(candidate), cfg.eval.max_rows)
    print(
        f"evaluating {name} v{version} against @{alias} ({f'v{holder}' if holder else 'none yet'}) "
        f"on {len(cases)} conversations from {source} ...",
        flush=True,
    )
    new = evaluate_model(cfg, candidate, cases, source, f"v{version}")
    old = None
    if holder is not None:
        old = evaluate_model(
            cfg,
            registry.version_ref(name, holder),
            cases,
            source,
            f"v{holder} @{alias}",
        )
    comparison = gate.compare_evaluations(new, old, cfg.gate, missing_baseline="(no holder)")
    print(comparison.table())
    if not comparison.passed:
        if old is not None:
            print(f"\nwhere v{version} answers worse:\n{evaluate.worse_rows(new.rows, old.rows)}")
        client.set_model_version_tag(
            name, version, "gate.refused", f"{alias} v{holder}: {', '.join(comparison.failed)}"
        )
        where = f"stays on v{holder}" if holder else "stays unset"
        raise gate.PromotionRefused(
            f"v{version} fails the gate on {', '.join(comparison.failed)}; @{alias} {where}"
        )
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "gate.promoted_over", holder or "none")
    if holder is None:
        print(f"no version held @{alias} yet: promoted v{version} on its own metrics")
    else:
        print(f"promoted: @{alias} moved from v{holder} to v{version}")
    return comparison


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
        cases, source = evaluate.held_out_cases(cfg.eval, run_id, cfg.gate.azure_rows)
    except evaluate.EvaluationError as e:
        raise DeployError(
            f"the blue/green gate has no conversations: {e} (or deploy ungated: gate.azure=false)"
        ) from e
    tags = evaluation_tags(cfg, ref, run_id, source)
    return DeploymentGate(cases, cfg.eval, cfg.gate, evaluate.experiment_of(run_id), tags)


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
