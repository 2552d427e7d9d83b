"""GGUF through llama.cpp's own converter (convert_hf_to_gguf.py) and quantizer.

Both come with llama-cpp-python's source distribution, which deploy/export/build_llama_cpp.sh
builds once into a wheel cached in $FINETUNE_PHI_CACHE, keeping the converter beside it. F32, F16,
BF16 and Q8_0 are written by the converter; Q4_K_M (and the other k-quants) by llama.cpp's
quantizer (`llama_model_quantize`, through llama-cpp-python) from the F16 file. GGUF has no
runtime adapter path here, so a LoRA version is exported merged.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

from common.paths import cache_dir
from deploy.export.errors import ExportRefused, ExportSetupError
from deploy.export.files import read_json
from deploy.export.onnx import linked_copy, run_tool
from deploy.export.source import Source

LLAMA_CPP_PYTHON = "0.3.36"  # deploy/export/build_llama_cpp.sh builds this version
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZER_TYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
PRECISIONS = (*CONVERTER_TYPES, *QUANTIZER_TYPES)


def converter() -> Path:
    script = cache_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ExportSetupError(
            f"llama.cpp's converter is not at {script}: run deploy/export/build_llama_cpp.sh (builds llama.cpp once)"
        )
    return script


def export_gguf(source: Source, out_file: Path, precision: str, work: Path) -> Path:
    """The GGUF file `out_file` (its contents are checked by files.missing_in_export)."""
    if precision not in PRECISIONS:
        raise ExportSetupError(f"export.precision={precision}: GGUF takes {'|'.join(PRECISIONS)}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    converted = out_file if precision in CONVERTER_TYPES else work / "f16.gguf"
    outtype = precision if precision in CONVERTER_TYPES else "f16"
    model_dir = converter_input(source.merged_dir, work / "converter-input")
    command = [sys.executable, str(converter()), str(model_dir), "--outfile", str(converted)]
    run_tool([*command, "--outtype", outtype], "llama.cpp's convert_hf_to_gguf.py")
    if precision in QUANTIZER_TYPES:
        quantize(converted, out_file, QUANTIZER_TYPES[precision])
    return out_file


def converter_input(model_dir: Path, staging: Path) -> Path:
    """`model_dir` as llama.cpp's converter can read it. Its Phi-3 converter takes a BPE tokenizer only
    when tokenizer_config.json names `GPT2Tokenizer` (else it wants SentencePiece's tokenizer.model);
    transformers 5 writes `TokenizersBackend` there. A byte-level BPE tokenizer is named for it."""
    tokenizer_config = read_json(model_dir / "tokenizer_config.json")
    bpe = read_json(model_dir / "tokenizer.json").get("model", {}).get("type") == "BPE"
    if bpe and not (model_dir / "tokenizer.model").exists():
        tokenizer_config["tokenizer_class"] = "GPT2Tokenizer"
    return linked_copy(model_dir, staging, {"tokenizer_config.json": tokenizer_config})


def quantize(source: Path, target: Path, ftype: str) -> None:
    """llama.cpp's quantizer (what `llama-quantize` runs), through llama-cpp-python."""
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise ExportRefused(f"llama.cpp could not quantize {source} to {ftype}")


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise ExportSetupError(
            f"llama-cpp-python is not installed ({e}): run deploy/export/build_llama_cpp.sh (builds llama.cpp once)"
        ) from None
    return llama_cpp
