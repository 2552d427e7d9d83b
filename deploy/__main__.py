"""Use a model the training recipe registered in MLflow.

python -m deploy action=chat                   # chat with the latest registered version
python -m deploy action=chat model.version=2
"""

import hydra
import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from deploy import chat, registry

ACTIONS = ("chat",)

if not OmegaConf.has_resolver("project_root"):
    from pathlib import Path

    OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="deploy")
def main(cfg: DictConfig) -> None:
    if cfg.action not in ACTIONS:
        raise SystemExit(f"action={cfg.action!r}: expected one of {', '.join(ACTIONS)}")
    mlflow.set_tracking_uri(cfg.tracking_uri)
    uri = registry.model_uri(MlflowClient(), cfg.model.name, cfg.model.version, cfg.model.alias)
    print(f"loading {uri} ...")
    model = mlflow.pyfunc.load_model(uri)
    print("chatting with", uri, "(/reset to start over, /exit or Ctrl-D to leave)")
    chat.chat_loop(
        model.predict,
        chat.stdin_lines(),
        system=cfg.chat.system,
        max_tokens=cfg.chat.max_tokens,
        temperature=cfg.chat.temperature,
    )


if __name__ == "__main__":
    main()
