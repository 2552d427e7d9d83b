"""Export benchmark: every format and precision of one model version through the parity gate, side by side.

python -m bench.export --model models:/smollm2-sft/1 --tracking-uri sqlite:///outputs/mlflow.db
python -m bench.export --model models:/tiny-longrope/1 --tracking-uri ... --source data.jsonl \
    --exports onnx:fp32 gguf:f16 --max-rows 64 --max-new-tokens 64

Each export runs `python -m deploy action=export` in this process (deploy.export.action.run_export,
not logged: `export.log=false`) and records the gate's summary (greedy token agreement by teacher
forcing, the positions that differ and how many at near ties, the free-running answers that differ,
the tier's verdict), the evaluation metrics beside the MLflow model's, export and load seconds and
the size. A refused export is a row too: that is the measurement.
The heavy comparisons live here, not in the tests: CI runs one export per format on the tiny model.
Results: bench/results/<date>-export-<slug>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time

from bench.report import markdown_table, write_results

DEFAULT_EXPORTS = ["onnx:fp32", "onnx:int4", "gguf:f16", "gguf:q8_0", "gguf:q4_k_m"]
METRICS = ("exact_match", "token_f1", "rouge_l", "stop_rate")


def compose_deploy(overrides: list[str]):
    """The real `python -m deploy` config, composed as Hydra composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import deploy.__main__  # noqa: F401  (registers the schemas and the project_root resolver)
    from common.paths import PROJECT_ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf" / "deploy"), version_base="1.3"):
        return compose("deploy", overrides=overrides)


def model_overrides(model: str) -> list[str]:
    """models:/NAME/VERSION as model.name and model.version (the export folder and tags name it); else model.uri."""
    parts = model.removeprefix("models:/").split("/")
    if model.startswith("models:/") and len(parts) == 2 and parts[1].isdigit():
        return [f"model.name={parts[0]}", f"model.version={parts[1]}"]
    return [f"model.uri={model}"]


def export_row(model: str, tracking_uri: str, source: str | None, fmt: str, precision: str, args) -> dict:
    from deploy.export.action import run_export
    from deploy.export.errors import ExportRefused

    overrides = [
        "action=export",
        f"format={fmt}",
        f"export.precision={precision}",
        *model_overrides(model),
        f"tracking_uri={tracking_uri}",
        f"export.max_rows={args.max_rows}",
        f"export.max_new_tokens={args.max_new_tokens}",
        f"output_root={args.output_root}",
        "export.log=false",
        *([f"eval.source={source}"] if source else []),
    ]
    cfg = compose_deploy(overrides)
    started = time.process_time()
    try:
        parity = run_export(cfg)
    except ExportRefused as e:
        parity = getattr(e, "parity", None)
        if parity is None:
            return {"export": f"{fmt}:{precision}", "verdict": f"refused: {e}"[:200]}
    row = {"export": f"{fmt}:{precision}", "verdict": "passed" if parity.passed else "refused"}
    row |= {
        k: parity.summary.get(k)
        for k in ("agreement", "agreed_tokens", "reference_tokens", "diverged_tokens", "diverged_answers")
    }
    row |= {k: parity.summary.get(k) for k in ("near_tie_divergences", "export_s", "load_s", "size_mb")}
    for name in METRICS:
        row[f"{name}_ref"] = parity.reference.metrics[name]
        row[f"{name}_delta"] = parity.export.metrics[name] - parity.reference.metrics[name]
    row["failures"] = parity.failures
    row["cpu_s"] = time.process_time() - started
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an MLflow model URI (models:/NAME/VERSION)")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--source", default=None, help="held-out JSON lines (default: the training run's)")
    parser.add_argument("--exports", nargs="+", default=DEFAULT_EXPORTS, help="format:precision ...")
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output-root", default="outputs/bench-export")
    parser.add_argument("--slug", default="cpu")
    args = parser.parse_args()
    rows = [export_row(args.model, args.tracking_uri, args.source, *e.split(":"), args) for e in args.exports]
    columns = [
        ("export", "export", ""),
        ("verdict", "verdict", ""),
        ("agreement", "agreement", ".4f"),
        ("tokens agreed", "agreed_tokens", "d"),
        ("of", "reference_tokens", "d"),
        ("differ", "diverged_tokens", "d"),
        ("at near ties", "near_tie_divergences", "d"),
        ("answers differ", "diverged_answers", "d"),
        *((f"{m} Δ", f"{m}_delta", "+.3f") for m in METRICS),
        ("export s", "export_s", ".1f"),
        ("load s", "load_s", ".2f"),
        ("MB", "size_mb", ".1f"),
    ]
    load = os.getloadavg()[0]
    markdown = f"model {args.model}, load average {load:.1f}\n\n" + markdown_table(columns, rows)
    print(markdown)
    print(
        write_results(
            {"model": args.model, "load_average": load, "rows": rows},
            markdown,
            "bench/results",
            args.slug,
            "export",
        )
    )


if __name__ == "__main__":
    main()
