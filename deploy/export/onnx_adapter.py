"""A LoRA version's adapter as an ONNX Runtime adapter file (`.onnx_adapter`), beside its base model.

onnxruntime-genai 0.18.0's builder, given `--extra_options adapter_path=<peft dir>`, keeps the LoRA
unmerged: every adapted MatMul gets a `lora_A` -> `lora_B` branch added to its output, with the
adapter's weights (scaling folded into B) as initializers baked into model.onnx. That graph cannot
swap or drop the adapter. Here each of those initializers becomes a graph input whose default is an
empty tensor (rank 0: the branch adds zeros, so without an adapter the model is the base model), and
the trained weights go to `adapter.onnx_adapter` (onnxruntime's AdapterFormat), which
onnxruntime-genai loads with `og.Adapters` and activates per generator (`set_active_adapter`);
with adapters loaded but none active it feeds rank-0 inputs itself (its lora_adapter.cpp).
"""

from __future__ import annotations

from pathlib import Path

from deploy.export.errors import ExportRefused

ADAPTER_FILE = "adapter.onnx_adapter"
LORA_MARKERS = ("lora_A", "lora_B")
RANK = "lora_rank"


def is_lora_weight(name: str) -> bool:
    return any(f".{marker}." in name for marker in LORA_MARKERS)


def extract_adapter(out: Path) -> Path:
    """Move the LoRA weights of `out/model.onnx` into `out/adapter.onnx_adapter`; the graph takes them
    as inputs (rank dimension free) defaulting to empty tensors. Returns the adapter file."""
    import onnx
    from onnx import numpy_helper

    model_path = out / "model.onnx"
    model = onnx.load(str(model_path), load_external_data=True)
    graph = model.graph
    lora = [init for init in graph.initializer if is_lora_weight(init.name)]
    if not lora:
        raise ExportRefused(f"{model_path}: the builder wrote no LoRA weights (lora_A/lora_B) to extract")
    weights = {init.name: (numpy_helper.to_array(init), init.data_type) for init in lora}
    kept = [init for init in graph.initializer if not is_lora_weight(init.name)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for name, (value, data_type) in weights.items():
        lora_a = ".lora_A." in name  # (in, rank) @ (rank, out): the rank is the free dimension
        shape = [value.shape[0], RANK] if lora_a else [RANK, value.shape[1]]
        graph.initializer.append(numpy_helper.from_array(value[:, :0] if lora_a else value[:0, :], name))
        graph.input.append(onnx.helper.make_tensor_value_info(name, data_type, shape))
    save_model(model, out)
    return write_adapter({name: value for name, (value, _) in weights.items()}, out / ADAPTER_FILE)


def save_model(model, out: Path) -> None:
    """model.onnx and its external data rewritten (onnx appends to an existing data file: remove it)."""
    import onnx

    for data in out.glob("model.onnx.data"):
        data.unlink()
    onnx.save(
        model,
        str(out / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )


def write_adapter(weights: dict, path: Path) -> Path:
    import onnxruntime

    parameters = {name: onnxruntime.OrtValue.ortvalue_from_numpy(value) for name, value in weights.items()}
    adapter = onnxruntime.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(parameters)
    adapter.export_adapter(str(path))
    return path
