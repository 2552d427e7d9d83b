"""Sweeps in MLflow: one parent run per Hydra multirun, one child run per point.

`python -m train -m sft.learning_rate=1e-4,3e-4` (basic launcher) or
`python -m train -m hparams_search=lr_optuna` (Optuna, `conf/hparams_search/`) runs several
jobs. This Hydra callback (registered in `conf/hydra/default.yaml`) opens the parent run
before the first job and hands its id to the jobs through `FINETUNE_PHI_PARENT_RUN_ID`, which
the recipe uses as `parent_run_id`; launchers that start jobs in other processes inherit it.
After the last job it records the best point (lowest `eval_loss`, the value the entry point
returns to the sweeper) on the parent and closes it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from train.config import TargetName

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "FINETUNE_PHI_PARENT_RUN_ID"
OBJECTIVE = "eval_loss"


def best_point_summary(best, points: int, sweep_overrides: str) -> str:
    """The lines a sweep ends with: the best point (what it set beyond the sweep's command line),
    its run, and how to serve it."""
    run_id = best.info.run_id
    shared = set(sweep_overrides.split())
    own = [o for o in best.data.tags.get("hydra.overrides", "").split() if o not in shared]
    return "\n".join(
        [
            "",
            f"Sweep finished: {points} points.",
            f"  best point     {' '.join(own) or '(the defaults)'}",
            f"  {OBJECTIVE:<14} {best.data.metrics[OBJECTIVE]:.4f}",
            f"  MLflow run     {run_id} ({best.info.run_name})",
            f"  next           python -m deploy target=local model.uri=runs:/{run_id}/model  (serve it;"
            " points register no version unless logger.register_sweep_points=true)",
        ]
    )


class MLflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.target.name != TargetName.local or config.estimate:
            return  # points train elsewhere (their own tracking) or not at all
        import mlflow
        from mlflow.tracking import MlflowClient

        from train import tracking

        experiment_id = tracking.start_experiment(
            config.logger, Path(config.paths.output_root) / "mlartifacts"
        )
        sweep_dir = config.hydra.sweep.dir
        client = MlflowClient()
        parent = client.create_run(
            experiment_id,
            run_name=f"sweep {Path(sweep_dir).name}",
            tags={
                "sweep_dir": str(sweep_dir),
                "sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_")).rsplit(".", 1)[-1],
                "hydra.overrides": " ".join(config.hydra.overrides.task),
                "objective": f"min {OBJECTIVE}",
            },
        )
        self.parent_run_id = parent.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        search_space = OmegaConf.select(config, "hydra.sweeper.params")
        if search_space:
            client.log_text(self.parent_run_id, OmegaConf.to_yaml(search_space), "sweep/search_space.yaml")
        log.info("sweep: MLflow parent run %s (%s)", self.parent_run_id, mlflow.get_tracking_uri())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        os.environ.pop(PARENT_RUN_ENV, None)
        if self.parent_run_id is None:
            return
        client = MlflowClient()
        parent = client.get_run(self.parent_run_id)
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        )
        scored = [c for c in children if OBJECTIVE in c.data.metrics]
        client.log_metric(self.parent_run_id, "points", len(children))
        if scored:
            best = min(scored, key=lambda c: c.data.metrics[OBJECTIVE])
            client.log_metric(self.parent_run_id, f"best_{OBJECTIVE}", best.data.metrics[OBJECTIVE])
            client.set_tag(self.parent_run_id, "best_run_id", best.info.run_id)
            client.set_tag(self.parent_run_id, "best_overrides", best.data.tags.get("hydra.overrides", ""))
            sweep_overrides = parent.data.tags.get("hydra.overrides", "")
            print(best_point_summary(best, len(children), sweep_overrides), flush=True)
        results = Path(config.hydra.sweep.dir) / "optimization_results.yaml"  # written by the Optuna sweeper
        if results.exists():
            client.log_artifact(self.parent_run_id, str(results), "sweep")
        failed = len(children) - len(scored)
        client.set_terminated(self.parent_run_id, status="FAILED" if failed or not children else "FINISHED")
        log.info(
            "sweep: %d points, %d without %s; parent run %s",
            len(children),
            failed,
            OBJECTIVE,
            self.parent_run_id,
        )
        self.parent_run_id = None
