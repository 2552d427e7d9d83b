"""The blue/green gate: before traffic moves, the new deployment answers as well as the live one.

After the smoke test, each answers the same held-out conversations (the first `gate.azure_rows`
of the training run's `data/test.jsonl`, or of `eval.source`) through
`MLClient.online_endpoints.invoke(deployment_name=...)`, one OpenAI-shaped request per
conversation, as a client would send it (system turn and history included; the answer's
`finish_reason` and `usage` give the stop rate and answer tokens). A request that fails or
answers something else is a failed row, never dropped. The two are compared with the
promotion gate's rules (deploy/evaluate/gate.py, `gate.tolerance`); the table is printed and, where the
training run is reachable, both evaluations are logged as MLflow runs in its experiment, the
new one carrying the comparison. Traffic moves only if the gate passes (deploy/azure/blue_green.py).
With no live deployment (the first deploy) there is nothing to compare with: the new one is
evaluated and logged, and passes unless a gated metric could not be measured.

Azure's invoke makes 4 calls per request (the deployment list, the endpoint, its keys, then
the scoring URI with the `azureml-model-deployment` header), so latencies here include the
management calls and are reported, not gated. lm-eval tasks need the model's logits, which an
endpoint does not return: they run in `action=evaluate|promote` only.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy.azure.errors import DeployError
from deploy.evaluate import gate
from deploy.evaluate.answers import answer_row, completion_answer, openai_request
from deploy.evaluate.cases import Case, EvaluationError, held_out_cases
from deploy.evaluate.evaluation import Evaluation, score
from deploy.evaluate.tracking import evaluation_tags, experiment_of, log_evaluation
from deploy.registry.find import ModelRef, training_run_id


def deployment_gate(ref: ModelRef, eval_cfg, gate_cfg) -> DeploymentGate | None:
    """The blue/green gate with its conversations, read before anything is created (None: gate.azure=false)."""
    if not gate_cfg.azure:
        return None
    run_id = training_run_id(ref)
    try:
        cases, source = held_out_cases(eval_cfg, run_id, gate_cfg.azure_rows)
    except EvaluationError as e:
        raise DeployError(
            f"the blue/green gate has no conversations: {e} (or deploy ungated: gate.azure=false)"
        ) from e
    tags = evaluation_tags(ref, run_id, source, eval_cfg.max_new_tokens)
    return DeploymentGate(cases, eval_cfg, gate_cfg, experiment_of(run_id), tags)


def answer_through_deployment(
    client, endpoint_name: str, deployment: str, cases: list[Case], max_new_tokens: int
) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        request_file = Path(tmp) / "request.json"
        for case in cases:
            request_file.write_text(json.dumps(openai_request(case, max_new_tokens)), encoding="utf-8")
            started = time.perf_counter()
            try:
                raw = client.online_endpoints.invoke(
                    endpoint_name, request_file=str(request_file), deployment_name=deployment
                )
                answer = completion_answer(json.loads(raw))
            except Exception as e:  # refused, failed or not a chat completion: a failed row
                rows.append(answer_row(case, None, None, f"{type(e).__name__}: {str(e)[:400]}"))
                continue
            rows.append(answer_row(case, answer, time.perf_counter() - started))
    return rows


@dataclass
class DeploymentGate:
    """Called by `deploy.azure.blue_green.deploy` after the smoke test; raises PromotionRefused to keep traffic."""

    cases: list[Case]
    eval_cfg: object  # the `eval` config node: max_new_tokens, judge
    gate_cfg: object  # the `gate` config node: tolerance, tasks_tolerance
    experiment_id: str | None  # the training run's experiment, where the evaluations are logged
    tags: Mapping[
        str, str
    ]  # what the new deployment's model is and what it answered (evaluate.tracking.evaluation_tags)

    def evaluate(self, client, endpoint_name: str, deployment: str, role: str) -> Evaluation:
        rows = answer_through_deployment(
            client, endpoint_name, deployment, self.cases, self.eval_cfg.max_new_tokens
        )
        return score(f"{deployment} ({role})", rows, self.eval_cfg.judge)

    def __call__(self, client, endpoint_name: str, new: str, traffic: Mapping[str, int]) -> gate.Comparison:
        live = max(traffic, key=traffic.get) if traffic else None  # the deployment with the most traffic
        print(
            f"gate: {new} (new) and {live or 'no live deployment'} answer {len(self.cases)} conversations",
            flush=True,
        )
        candidate = self.evaluate(client, endpoint_name, new, "new")
        baseline = self.evaluate(client, endpoint_name, live, "live") if live else None
        comparison = gate.compare_evaluations(
            candidate, baseline, self.gate_cfg, missing_baseline="(no live deployment)"
        )
        verdict = "passed" if comparison.passed else f"failed on {', '.join(comparison.failed)}"
        print(f"{comparison.table()}\ngate {verdict}", flush=True)
        evaluated = [(candidate, new, "new")] + ([(baseline, live, "live")] if baseline else [])
        self.log(endpoint_name, evaluated, comparison, verdict)
        if not comparison.passed:
            raise gate.PromotionRefused(f"the gate {verdict} against {live}")
        return comparison

    def log(self, endpoint_name: str, evaluated: list, comparison: gate.Comparison, verdict: str) -> None:
        """Each deployment's evaluation as a run; the new one's carries the verdict and the table."""
        if self.experiment_id is None:
            print("gate: the training run is not in this MLflow store: the comparison is printed, not logged")
            return
        from mlflow.tracking import MlflowClient

        for evaluation, deployment, role in evaluated:
            # The live deployment serves an earlier model: only the new one's run names the model.
            shared = {k: v for k, v in self.tags.items() if k in ("eval.source", "eval.max_new_tokens")}
            tags = {
                **(self.tags if role == "new" else shared),
                "eval.endpoint": endpoint_name,
                "eval.deployment": deployment,
                "eval.role": role,
            }
            log_evaluation(evaluation, self.experiment_id, tags)
        client, new_run = MlflowClient(), evaluated[0][0].run_id
        client.set_tag(new_run, "gate.verdict", verdict)
        if len(evaluated) > 1:
            client.set_tag(new_run, "gate.baseline_run_id", evaluated[1][0].run_id)
        client.log_text(new_run, comparison.table(), "gate/comparison.txt")
