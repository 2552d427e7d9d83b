"""Known-harmless third-party messages, filtered once per process (docs/quiet.md lists them).

Each filter names the library, the exact message and why it is harmless here; anything else a
library says still prints. `FINETUNE_PHI_VERBOSE=1` keeps them all (and Azure's HTTP log).
Applied from each layer's package `__init__` (train, deploy), before the libraries are imported,
since some of them speak at import time.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# logger name -> message fragments dropped from it (logging.Filter on that logger).
KNOWN_HARMLESS = {
    # torchao tries its CUDA/CUTLASS kernels (_C_mxfp8, _C_cutlass_90a) on import: without a
    # matching GPU they cannot load, and nothing this project uses needs them there.
    "torchao": ("Failed to load ",),
    # ... and its int-matmul kernels note that Triton (a CUDA compiler) is absent: CPU machines.
    "torchao.kernel.intmm": ("Detected no triton",),
    # torchao 0.17 registers its Enums as pytree constants, which torch 2.13 calls deprecated:
    # a note for torchao's maintainers, not for users (one line per Enum on import).
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    # MLflow's sqlite store announces creating and migrating its tables on a store's first use.
    # (A filter, not a level: MLflow's logging setup resets its child loggers' levels on import.)
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database tables"),
    # MLflow looks up a model card and a licence on the hub for every transformers model it saves;
    # a fine-tuned model saved from a local folder has neither there (the run logs its config).
    "mlflow.transformers": ("The model card could not be retrieved", "Unable to find license information"),
    # azure-ai-ml marks schemas it loads for every entity (auto-delete settings, IP protection)
    # as experimental, once per class, when the client builds a job or a deployment we send.
    "azure.ai.ml._utils._experimental": ("This is an experimental class",),
    # azure-identity logs each credential that failed; the command then says in one line what to
    # do (common.cli_errors.explain: `az login`), so the log line only repeats it.
    "azure.identity._internal.decorators": ("get_token_info failed", "get_token failed"),
    # promptflow 1.18's flow test collects every connection secret to scrub them from its logs
    # (_core/connection_manager.py get_secret_list) with getattr(connection, key), which a
    # CustomConnection answers through its deprecated attribute access, warning about its own
    # read (core/_connection.py). The flows read connection.secrets["key"] as it asks.
    "promptflow.core._connection": ("Please use connection.secrets[key] to access secrets.",),
}
# Loggers quieted to errors: what they say at warning level alarms every command and concerns none.
QUIET_TO_ERRORS = (
    # bitsandbytes, on CPUs with AVX512-BF16: an optional CPU 4-bit kernel package is missing;
    # QLoRA needs CUDA here anyway (train.model refuses it on a CPU).
    "bitsandbytes.backends.cpu.ops",
    # azure-identity, without a login: INFO per credential tried, then a WARNING listing all of
    # them (16 lines); the command says in one line what to do (common.cli_errors: `az login`).
    "azure.identity",
    # transformers' continuous batching (the local server's engine) logs its cache sizing at INFO;
    # the server prints its own KV budget line (deploy/serve/batching.py).
    "ContinuousBatchingLogger",
)
# Python warnings (message regex, category): raised inside a library by another library's call.
KNOWN_HARMLESS_WARNINGS = (
    # TRL 1.16 and peft read transformers' `is_gradient_checkpointing`, deprecated in 5.x for
    # `is_activation_checkpointing`: the same value, so a note for them, not for users.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)
# azure-core logs every request and response header at INFO once any handler is configured
# (Hydra configures one): dozens of lines per call. On only when asked for.
AZURE_HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


class _DropFragments(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def verbose() -> bool:
    return os.environ.get("FINETUNE_PHI_VERBOSE", "") not in ("", "0", "false")


def quiet_known_noise() -> None:
    """Install the filters (idempotent); a no-op with FINETUNE_PHI_VERBOSE=1. Off a terminal,
    the Hugging Face libraries' progress bars too: in a log each redraw is another line."""
    if verbose():
        return
    if not sys.stderr.isatty():  # read by datasets and huggingface_hub (hence transformers) on import
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts"
    for name, fragments in KNOWN_HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropFragments) for f in logger.filters):
            logger.addFilter(_DropFragments(fragments))
    for name in QUIET_TO_ERRORS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger(AZURE_HTTP_LOGGER).setLevel(logging.WARNING)
    for message, category in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
