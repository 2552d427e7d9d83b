"""Evaluation and promotion: how well a model version answers, and whether it may take over.

Owns the held-out cases (`cases.py`), answering them in process (`answers.py`), the metrics,
the LLM judge and lm-eval tasks (`metrics.py`, `judge.py`, `lm_eval_tasks.py`), one evaluation
(`evaluation.py`) logged to MLflow (`tracking.py`) and printed (`tables.py`), the promotion gate's
rules (`gate.py`) and the `evaluate` and `promote` actions. It reaches the model only through
the scoring code's `ChatModel` (common.generation's rendering and decoding) and, for lm-eval
tasks, the log-likelihood scorer beside it; never a rendering of its own. Imports `common`,
deploy.registry and deploy.scoring; never deploy.serve or deploy.azure (the Azure traffic gate
imports this room, not the other way round).
"""
