"""`python -m deploy action=evaluate`: a version answers its held-out set, evaluated and logged.

The model is loaded as the servers load it (parity check included), answers through the scoring
code (deploy/evaluate/answers.py), and the evaluation is printed and logged as a run in its
training run's experiment, the version tagged with it (deploy/evaluate/tracking.py). The promote
action evaluates the candidate and the alias holder the same way (`evaluate_model`).
"""

from __future__ import annotations

from deploy.evaluate.cases import Case, held_out_cases
from deploy.evaluate.evaluation import Evaluation, evaluate_in_process
from deploy.evaluate.tables import answers_table, metrics_table
from deploy.evaluate.tracking import evaluation_tags, experiment_of, log_evaluation
from deploy.registry.find import ModelRef, find_model, registry_version, training_run_id
from deploy.registry.load import load_checked_model


def run_evaluate(cfg) -> Evaluation:
    """action=evaluate: `model.*` evaluated on its held-out set (or `eval.source`), printed and logged."""
    ref = find_model(
        cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=False, default_alias=cfg.gate.alias
    )
    cases, source = held_out_cases(cfg.eval, training_run_id(ref), cfg.eval.max_rows)
    label = f"v{ref.version}" if ref.version else ref.name
    print(f"evaluating {ref.uri} on {len(cases)} conversations from {source} ...", flush=True)
    evaluation = evaluate_model(
        ref, cases, source, label, cfg.eval, tracking_uri=cfg.tracking_uri, check_parity=cfg.parity.check
    )
    print(metrics_table(evaluation), answers_table(evaluation.rows), sep="\n\n")
    if evaluation.run_id:
        print(f"\nevaluation run {evaluation.run_id}: mlflow ui --backend-store-uri {cfg.tracking_uri}")
    return evaluation


def evaluate_model(
    ref: ModelRef,
    cases: list[Case],
    source: str,
    label: str,
    eval_cfg,
    tracking_uri: str,
    check_parity: bool,
) -> Evaluation:
    """`ref` loaded as the server loads it, evaluated on `cases`, logged in its training run's
    experiment (when that run is reachable) and its version tagged."""
    chat_model = load_checked_model(ref, tracking_uri, check_parity)
    evaluation = evaluate_in_process(chat_model, cases, eval_cfg, label)
    del chat_model  # before a second model loads (promote)
    registered = registry_version(ref)
    run_id = registered.run_id if registered is not None else training_run_id(ref)
    experiment_id = experiment_of(run_id)
    if experiment_id is None:
        print(f"{label}: its training run is not in {tracking_uri}: the evaluation is printed, not logged")
        return evaluation
    tags = evaluation_tags(ref, run_id, source, eval_cfg.max_new_tokens)
    log_evaluation(evaluation, experiment_id, tags, registered)
    return evaluation
