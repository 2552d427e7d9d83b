"""Agent Framework's OpenTelemetry spans to an MLflow tracking server.

MLflow's server (3.x, `mlflow server`) takes OpenTelemetry spans over OTLP/HTTP at `/v1/traces`,
into the experiment named by the `x-mlflow-experiment-id` header, and shows them as traces. So
the front ends export there with OpenTelemetry's own OTLP exporter; nothing of MLflow is
installed in this environment (the experiment is looked up or created over MLflow's REST API).

Each question is one trace: a root span `finetune_phi.turn` carrying the conversation id and
the front end, and under it Agent Framework's `invoke_agent` and `chat` spans, whose
`gen_ai.response.model` is the model that answered (the local server names it NAME/VERSION,
the registered model version).

    .venv-agent/bin/python -m agent ask "..." --trace-to http://127.0.0.1:5000
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from urllib.parse import quote

import urllib3
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SERVICE_NAME = "finetune-phi-agent"
DEFAULT_EXPERIMENT = "finetune-phi-agent"
CONVERSATION_ID = "finetune_phi.conversation_id"
FRONT_END = "finetune_phi.front_end"
# A busy tracking server can take a while over its first spans; past this the batch is dropped.
EXPORT_TIMEOUT_S = 60


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of experiment `name` on the tracking server, created if missing (MLflow's REST API)."""
    api = tracking_uri.rstrip("/") + "/api/2.0/mlflow/experiments"
    try:
        found = urllib3.request("GET", f"{api}/get-by-name?experiment_name={quote(name)}", timeout=30)
        if found.status == 200:
            return json.loads(found.data)["experiment"]["experiment_id"]
        created = urllib3.request("POST", f"{api}/create", json={"name": name}, timeout=30)
    except urllib3.exceptions.HTTPError as e:
        raise RuntimeError(
            f"cannot reach the MLflow server at {tracking_uri} ({e}); is `mlflow server` running?"
        ) from None
    if created.status != 200:
        raise RuntimeError(
            f"the MLflow server at {tracking_uri} answered {created.status} to creating experiment "
            f"{name!r}: {created.data[:300]!r}; check --trace-to (an `mlflow server` URL)"
        )
    return json.loads(created.data)["experiment_id"]


def trace_to_mlflow(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> TracerProvider:
    """Send every span of this process to `tracking_uri`'s experiment; returns the provider
    (shut it down at exit: that sends what is still queued)."""
    from agent_framework.observability import enable_instrumentation

    if not tracking_uri.startswith(("http://", "https://")):
        raise ValueError(f"--trace-to {tracking_uri!r} must be an MLflow server URL (http://HOST:PORT)")
    exporter = OTLPSpanExporter(
        endpoint=tracking_uri.rstrip("/") + "/v1/traces",
        headers={"x-mlflow-experiment-id": experiment_id(tracking_uri, experiment)},
        timeout=EXPORT_TIMEOUT_S,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable_instrumentation()  # prompts and answers stay out unless ENABLE_SENSITIVE_DATA=true
    return provider


@contextmanager
def turn(conversation_id: str, front_end: str):
    """The root span of one question and its answer."""
    tracer = trace.get_tracer(SERVICE_NAME)
    with tracer.start_as_current_span(
        "finetune_phi.turn", attributes={CONVERSATION_ID: conversation_id, FRONT_END: front_end}
    ) as span:
        yield span
