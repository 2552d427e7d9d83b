"""`python -m deploy target=local`: the checked model served on 127.0.0.1 until interrupted.

    python -m deploy target=local port=8000          # foreground, until Ctrl-C

uvicorn runs the app (deploy/serve/app.py) with the request-head deadline in its HTTP protocol
and its own access log off (it prints query strings; middleware/access_log.py writes ours).

Auth: when the environment variable named by `key_env` (default FINETUNE_PHI_ENDPOINT_KEY) is
set, the model routes need `Authorization: Bearer <key>`, as Azure managed endpoints do; the key
is read here at start-up and never logged.

Why FastAPI/uvicorn rather than azureml-inference-server-http (the server Azure runs score.py
in): the latter pins pydantic < 2.13 and cannot join this project's pinned stack, serves one
request at a time per worker, and has no key auth (Azure's front door adds that).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from omegaconf import OmegaConf

from common.payloads import RequestLimits
from deploy.config import ServerSettings
from deploy.registry.find import find_model
from deploy.registry.load import load_checked_model
from deploy.scoring.score import ChatModel

DEFAULT_KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"


def run_local(cfg) -> None:
    """action=deploy, target=local: `model.*` found, loaded, checked and served on `port`."""
    check_port_free(int(cfg.port))  # before the model loads: a taken port is known at once
    ref = find_model(
        cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=False, default_alias=cfg.gate.alias
    )
    chat_model = load_checked_model(ref, cfg.tracking_uri, cfg.parity.check)
    target = OmegaConf.to_object(cfg.target)  # the LocalTarget dataclass, with its limits and settings
    return serve(chat_model, target.limits, target.server, port=int(cfg.port), key_env=cfg.key_env)


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise OSError(EADDRINUSE) when `port` cannot be bound (uvicorn would only log it after loading)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(e.errno, f"127.0.0.1:{port}: {e.strerror}") from None


def endpoint_key(key_env: str, environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(key_env) or None


def serve(
    chat_model: ChatModel,
    limits: RequestLimits,
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    key_env: str = DEFAULT_KEY_ENV,
) -> None:
    """Serve in the foreground until interrupted."""
    # The server's stack (torch, uvicorn, fastapi, transformers' batching) loads only to serve.
    import torch
    import uvicorn

    from deploy.serve.app import create_app
    from deploy.serve.batching import BatchedGenerator
    from deploy.serve.middleware.header_deadline import header_deadline_protocol

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"host={host!r}: the local server binds loopback only (127.0.0.1)")
    if settings.torch_threads and chat_model.model.device.type == "cpu":
        torch.set_num_threads(settings.torch_threads)  # before the generation thread starts: it inherits this
    limits = chat_model.request_limits(limits)
    engine = BatchedGenerator(chat_model, settings.max_batch, settings.max_queue, settings.kv_cache_mib)
    key = endpoint_key(key_env)
    print(
        f"serving {chat_model.name} on http://{host}:{port}/v1 (OpenAI API) and /score "
        f"({'key auth from $' + key_env if key else 'no auth: $' + key_env + ' is not set'}); "
        f"context {chat_model.context_tokens} tokens, prompts up to {limits.max_prompt_chars} characters, "
        f"bodies up to {limits.max_body_bytes} bytes; Ctrl-C stops it",
        flush=True,
    )
    print(f"{engine.budget.describe()}; up to {settings.max_batch} requests generated together", flush=True)
    config = uvicorn.Config(
        create_app(engine, chat_model.name, key, limits, settings),
        host=host,
        port=port,
        http=header_deadline_protocol(settings.header_timeout_s),
        access_log=False,  # it prints query strings; AccessLog writes ours
        log_level="info",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    uvicorn.Server(config).run()
