"""`python -m deploy`: serve, deploy, inspect or chat with the model training produced.

python -m deploy target=local port=8000         # scoring server on 127.0.0.1:8000
python -m deploy target=azureml                 # blue/green to a managed online endpoint
python -m deploy target=azureml action=status
python -m deploy action=chat model.version=2
python -m deploy action=evaluate model.version=2
python -m deploy action=promote model.version=2   # exit status 1 when the gate refuses
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from common.azure_workspace import EndpointCredentialsError, WorkspaceSettingsError
from common.paths import PROJECT_ROOT
from deploy.actions import run
from deploy.azure.errors import DeployError
from deploy.config import register_configs
from deploy.evaluate.cases import EvaluationError
from deploy.evaluate.gate import GateError, PromotionRefused
from deploy.evaluate.lm_eval_tasks import TaskError
from deploy.registry.find import ModelNotFound
from deploy.registry.parity import ParityError

# Errors that mean "the request or the setup is wrong" (or the gate said no), not a bug: a
# message and exit status 1, no traceback.
USER_ERRORS = (
    DeployError,
    ParityError,
    ModelNotFound,
    WorkspaceSettingsError,
    EndpointCredentialsError,
    EvaluationError,
    GateError,
    PromotionRefused,
    TaskError,
)

register_configs()
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


@hydra.main(version_base="1.3", config_path="../conf/deploy", config_name="deploy")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except USER_ERRORS as e:
        raise SystemExit(f"deploy: {e}") from None


if __name__ == "__main__":
    main()
