"""`python -m deploy`: serve, deploy, inspect or chat with the model training produced.

python -m deploy target=local port=8000         # scoring server on 127.0.0.1:8000
python -m deploy target=azureml                 # blue/green to a managed online endpoint
python -m deploy target=azureml action=status
python -m deploy action=chat model.version=2
python -m deploy action=list                    # registered models, versions, aliases, eval.* tags
python -m deploy action=evaluate model.version=2
python -m deploy action=promote model.version=2   # exit status 1 when the gate refuses
python -m deploy action=export format=gguf model.version=2   # exit 1 when the parity gate refuses

Each (target, action) is one function of the room that owns it (ACTIONS), given the composed
config (conf/deploy/) once.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from common.azure_workspace import EndpointCredentialsError, WorkspaceSettingsError
from common.cli_errors import GATE_REFUSED, USAGE_ERROR, exit_with, explain, full_error
from common.paths import PROJECT_ROOT
from deploy.azure.blue_green import run_deploy
from deploy.azure.endpoints import run_status, run_teardown
from deploy.azure.errors import DeployError
from deploy.config import Action, register_configs
from deploy.evaluate.cases import EvaluationError
from deploy.evaluate.evaluate import run_evaluate
from deploy.evaluate.gate import GateError, PromotionRefused
from deploy.evaluate.lm_eval_tasks import TaskError
from deploy.evaluate.promote import run_promote
from deploy.export.action import run_export
from deploy.export.errors import ExportRefused, ExportSetupError
from deploy.registry.find import ModelNotFound
from deploy.registry.listing import run_list
from deploy.registry.parity import ParityError
from deploy.serve.chat import run_chat
from deploy.serve.server import run_local

# (target, action) -> the function that does it. Those that talk to an Azure workspace also take
# `client=` (an MLClient: tests inject one; else it is made from target.workspace).
ACTIONS = {
    ("local", Action.deploy): run_local,
    ("local", Action.chat): run_chat,
    ("local", Action.evaluate): run_evaluate,
    ("local", Action.promote): run_promote,
    ("local", Action.list): run_list,
    ("local", Action.export): run_export,
    ("azureml", Action.deploy): run_deploy,
    ("azureml", Action.status): run_status,
    ("azureml", Action.teardown): run_teardown,
    ("azureml", Action.chat): run_chat,
    ("azureml", Action.evaluate): run_evaluate,
    ("azureml", Action.promote): run_promote,
    ("azureml", Action.list): run_list,
}

# Errors that mean "the request or the setup is wrong", not a bug: one line and exit status 2,
# no traceback (HYDRA_FULL_ERROR=1 shows it).
USER_ERRORS = (
    ParityError,
    ModelNotFound,
    WorkspaceSettingsError,
    EndpointCredentialsError,
    EvaluationError,
    GateError,
    TaskError,
    ExportSetupError,
)
# A gate said no (the promotion gate, an export's parity gate), or a deployment did not go through (the blue/green
# gate refused it, or Azure did; the message says what state things were left in): status 1.
REFUSALS = (PromotionRefused, DeployError, ExportRefused)

register_configs()
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def run(cfg, client=None) -> object:
    """Dispatch `cfg.action` for `cfg.target.name`; `client` injects an MLClient (tests)."""
    action = ACTIONS.get((cfg.target.name, cfg.action))
    if action is None:  # status and teardown of target=local
        raise GateError(
            f"action={cfg.action.name} needs target=azureml (the local server lives only while it runs)"
        )
    return action(cfg) if client is None else action(cfg, client=client)


@hydra.main(version_base="1.3", config_path="../conf/deploy", config_name="deploy")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except Exception as e:
        if full_error():
            raise
        if isinstance(e, REFUSALS):
            exit_with(str(e), GATE_REFUSED, prefix="deploy")
        message = str(e) if isinstance(e, USER_ERRORS) else explain(e)
        if message is None:
            raise  # a bug: the traceback
        exit_with(message, USAGE_ERROR, prefix="deploy")


if __name__ == "__main__":
    main()
