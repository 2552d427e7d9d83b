"""An optional LLM judge of the answers: MLflow's `make_judge` against any OpenAI-compatible endpoint.

`eval.judge.url` is the endpoint's OpenAI base URL (`http://127.0.0.1:8000/v1` for this
project's own local server, `https://api.openai.com/v1`, an Azure OpenAI or vLLM route);
`eval.judge.model` the model name it serves; `eval.judge.key_env` the environment variable
holding its key. MLflow's OpenAI provider reads the key from OPENAI_API_KEY only, so it is put
there for the judge's calls and the variable restored after; it is never written to the run,
the table or a log.

Each answer is judged on its own (the judge's instructions see the question, the answer and
the reference) and must come back as a true/false verdict: MLflow asks for JSON
(`response_format`, retried without it where a server refuses that) and parses the reply. A
reply it cannot parse, or a failed request, is that row's `judge_error`; then the `judge`
metric is not measured (NaN) and the gate counts it as failed, never as passed by absence.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
from collections.abc import Iterator

PLACEHOLDER_KEY = "no-key"  # MLflow's OpenAI provider refuses to start without some key


@contextlib.contextmanager
def openai_key_from(key_env: str) -> Iterator[None]:
    """OPENAI_API_KEY set to `$key_env` (or a placeholder when unset) while inside, then restored."""
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = os.environ.get(key_env) or PLACEHOLDER_KEY
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved


def make(judge_cfg):
    from mlflow.genai.judges import make_judge

    return make_judge(
        name="judge",
        instructions=judge_cfg.instructions,
        model=f"openai:/{judge_cfg.model}",
        base_url=f"{judge_cfg.url.rstrip('/')}/chat/completions",  # MLflow posts to base_url as is
        feedback_value_type=bool,
        inference_params={"temperature": 0, "max_tokens": judge_cfg.max_tokens},
    )


def judge_rows(rows: list[dict], judge_cfg) -> tuple[list[dict], dict[str, float]]:
    """Each row with `judge` (1.0, 0.0 or None), `judge_rationale` and `judge_error`; and the metrics
    `judge` (the mean, NaN unless every row was judged) and `judge_errors` (rows not judged)."""
    judge = make(judge_cfg)
    judged = []
    with openai_key_from(judge_cfg.key_env):
        for row in rows:
            verdict, rationale, error = None, None, None
            try:
                feedback = judge(
                    inputs={"question": row["prompt"]},
                    outputs=row["answer"],
                    expectations={"expected_response": row["reference"]},
                )
                if feedback.error is not None:
                    error = str(feedback.error_message or feedback.error)
                elif not isinstance(feedback.value, bool):
                    error = f"not a true/false verdict: {feedback.value!r:.200}"
                else:
                    verdict, rationale = float(feedback.value), feedback.rationale
            except Exception as e:  # unparseable reply, refused or failed request: this row's error
                error = f"{type(e).__name__}: {e}"
            judged.append(
                row | {"judge": verdict, "judge_rationale": rationale, "judge_error": error and error[:500]}
            )
    verdicts = [r["judge"] for r in judged]
    errors = sum(v is None for v in verdicts)
    mean = statistics.fmean(verdicts) if verdicts and not errors else math.nan
    return judged, {"judge": mean, "judge_errors": float(errors)}
