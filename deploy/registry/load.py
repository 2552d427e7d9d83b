"""The model the servers and the evaluation use, loaded and checked against its training run."""

from __future__ import annotations

import tempfile

from deploy.registry import parity
from deploy.registry.find import ModelRef, training_run_id
from deploy.scoring.score import ChatModel


def load_checked_model(ref: ModelRef, tracking_uri: str, check_parity: bool = True) -> ChatModel:
    """The ChatModel the server will use, after the parity check (unless `check_parity` is false:
    parity.check=false)."""
    uri = ref.uri if not ref.uri.startswith("azureml://") else f"runs:/{ref.azureml_job}/model"
    if ref.azureml_job and not tracking_uri.startswith("azureml:"):
        raise parity.ParityError(
            f"the parity check loads the job's model ({uri}) through MLflow: set MLFLOW_TRACKING_URI to the "
            "workspace's (`az ml workspace show --query mlflow_tracking_uri -o tsv`), or skip it: parity.check=false"
        )
    print(f"loading {uri} ...", flush=True)
    chat_model = ChatModel(uri)
    if check_parity:
        training = None
        run_id = training_run_id(ref)
        if run_id:
            training = parity.download_training_tokenizer_info(
                run_id, tempfile.mkdtemp(prefix="finetune-phi-tok-")
            )
        for note in parity.check(chat_model, training):
            print(f"parity: {note}", flush=True)
    return chat_model
