"""Export for the edge, gated on parity: ONNX Runtime GenAI and GGUF that answer as the trained model does.

Owns writing a version out as a plain Hugging Face directory (`source.py`), the files a runtime
needs and a converter is known to drop (`files.py`), the ONNX Runtime GenAI model builder
(`onnx.py`), llama.cpp's converter and quantizer (`gguf.py`, built once by build_llama_cpp.sh),
answering in those runtimes (`runtimes.py`), the parity gate against the MLflow model
(`parity.py`) and the `export` action (`action.py`: logging under the training run's `exports/`).
Imports `common`, deploy.registry (the model, loaded checked), deploy.scoring (its ChatModel) and
deploy.evaluate (held-out cases and metrics); never deploy.serve or deploy.azure, and nothing
imports it but `python -m deploy`.
"""
