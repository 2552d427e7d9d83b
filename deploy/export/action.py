"""`python -m deploy action=export format=onnx|gguf`: the version exported, gated on parity, logged.

The model is chosen as for serving (model.version | alias | uri), loaded checked, written out as a
Hugging Face directory and converted (deploy/export/onnx.py, gguf.py); the export answers the
held-out set in its own runtime beside the MLflow model (parity.py). A passing export is logged in
the version's training run under `exports/<format>-<precision>/` (the files and parity.json) and
the version is tagged `export.<format>-<precision>.*`; a refused one is not logged, the table is
printed and the command exits 1. `export.from_path` gates an export made elsewhere instead.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from deploy.evaluate.cases import held_out_cases
from deploy.export.errors import ExportRefused
from deploy.export.files import missing_in_export, original_context, read_json
from deploy.export.gguf import export_gguf
from deploy.export.onnx import export_onnx, exports_adapter
from deploy.export.parity import Parity, gate_prompts, parity_table, run_gate
from deploy.export.runtimes import LlamaCpp, OnnxRuntimeGenAI
from deploy.export.source import Source, write_source
from deploy.registry.find import ModelRef, find_model, registry_version, training_run_id
from deploy.registry.load import load_checked_model

DEFAULT_PRECISION = {"onnx": "fp32", "gguf": "f16"}


def run_export(cfg) -> Parity:
    """Export `model.*` as `format`, gate it, log it when it passes; ExportRefused (exit 1) otherwise."""
    fmt = str(cfg.format)
    precision = cfg.export.precision or DEFAULT_PRECISION[fmt]
    ref = find_model(cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=False)
    cases, where = held_out_cases(cfg.eval, training_run_id(ref), cfg.export.max_rows)
    chat_model = load_checked_model(ref, cfg.tracking_uri, cfg.parity.check)
    label = f"{fmt}-{precision}"
    out = (
        Path(
            cfg.export.output_dir or Path(cfg.output_root) / "exports" / f"{ref.name}-v{ref.version or 'uri'}"
        )
        / label
    )
    with tempfile.TemporaryDirectory(prefix="finetune-phi-export-") as work:
        source = write_source(chat_model, Path(work))
        config = read_json(source.merged_dir / "config.json")
        started = time.perf_counter()
        artifact = (
            Path(cfg.export.from_path)
            if cfg.export.from_path
            else convert(cfg, fmt, precision, source, out, Path(work))
        )
        export_s = time.perf_counter() - started
        adapter = fmt == "onnx" and exports_adapter(source, precision)
        model_dir = source.base_dir if adapter else source.merged_dir
        if missing := missing_in_export(fmt, artifact, model_dir, adapter):
            raise ExportRefused(f"{label} lacks what its runtime needs: " + "; ".join(missing))
        started = time.perf_counter()
        runtime = load_runtime(fmt, artifact, adapter, config, cfg.export.max_context)
        load_s = time.perf_counter() - started
        switch = original_context(config)
        prompts = gate_prompts(chat_model, cases, cfg.export.max_new_tokens, switch, cfg.export.long_prompts)
        print(f"gating {artifact} on {len(prompts)} prompts ({where}) ...", flush=True)
        parity = run_gate(chat_model, runtime, prompts, precision, cfg.export)
    parity.summary |= {
        "lora": "adapter file" if adapter else "merged" if source.adapter_dir else "-",
        "export_s": round(export_s, 2),
        "load_s": round(load_s, 2),
        "size_mb": round(size_mb(artifact), 2),
    }
    print(parity_table(parity))
    print(f"export {export_s:.1f} s, load {load_s:.1f} s, {parity.summary['size_mb']} MB: {artifact}")
    if not parity.passed:
        raise ExportRefused(
            f"{label} of {ref.uri} refused by the parity gate (not logged): " + "; ".join(parity.failures),
            parity,
        )
    if cfg.export.log:
        log_export(ref, label, artifact, parity)
    return parity


def convert(cfg, fmt: str, precision: str, source: Source, out: Path, work: Path) -> Path:
    print(f"exporting as {fmt} {precision} to {out} ...", flush=True)
    if fmt == "onnx":
        return export_onnx(source, out, precision, cfg.export.execution_provider, work)
    return export_gguf(source, out / "model.gguf", precision, work)


def load_runtime(fmt: str, artifact: Path, adapter: bool, config: dict, max_context: int):
    if fmt == "onnx":
        return OnnxRuntimeGenAI(artifact, sorted(artifact.glob("*.onnx_adapter"))[0] if adapter else None)
    return LlamaCpp(artifact, min(config["max_position_embeddings"], max_context), original_context(config))


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def log_export(ref: ModelRef, label: str, artifact: Path, parity: Parity) -> None:
    """The export and its parity table under the training run's `exports/<label>/`, the version tagged."""
    run_id = training_run_id(ref)
    if run_id is None:
        print(f"{ref.uri} has no training run to log the export in: it stays at {artifact}")
        return
    client = MlflowClient()
    path = f"exports/{label}"
    if artifact.is_file():
        client.log_artifact(run_id, str(artifact), path)
    else:
        client.log_artifacts(run_id, str(artifact), path)
    table = {
        "summary": parity.summary,
        "failures": parity.failures,
        "reference": parity.reference.metrics,
        "export": parity.export.metrics,
        "rows": parity.rows,
    }
    client.log_dict(run_id, table, f"{path}/parity.json")
    tags = {
        "status": "passed",
        "agreement": f"{parity.summary['agreement']:.4f}",
        "size_mb": str(parity.summary["size_mb"]),
        "lora": parity.summary["lora"],
        "artifact": f"runs:/{run_id}/{path}",
    }
    tags |= {
        f"{name}_delta": f"{parity.export.metrics[name] - value:+.4f}"
        for name, value in parity.reference.metrics.items()
        if name in ("exact_match", "token_f1", "rouge_l")
    }
    if (version := registry_version(ref)) is not None:
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, f"export.{label}.{key}", value)
    print(f"logged in run {run_id} at {path}/ ({json.dumps(tags)})")
