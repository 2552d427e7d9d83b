"""Serving benchmark: p50/p95 latency and tokens/s of the local scoring endpoint, at batch 1
and under concurrency, with OpenAI-style chat requests (`POST /score`).

python -m bench.serve --model-uri models:/tiny-phi3-sft/1            # starts the server itself
python -m bench.serve --url http://127.0.0.1:8000 --concurrency 1 4 8 --requests 32
python -m bench.serve --model-uri models:/tiny-phi3-sft/1 --max-tokens 64 --prompt "Count to ten."

The server is `python -m deploy target=local` (deploy/local.py); with --model-uri it is started
on a free loopback port for the run and stopped by its pid. When $FINETUNE_PHI_ENDPOINT_KEY
(or --key-env) is set, requests carry it as `Authorization: Bearer ...`; it is never written
anywhere. Tokens are the server's own count (`usage.completion_tokens`).
Results: bench/results/<date>-serve-<hardware>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from bench.report import markdown_table, write_results
from common.endpoint_client import EndpointError, EndpointSettings, post_json
from common.payloads import GenerationParams, Shape, build_payload

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def chat_payload(prompt: str, max_tokens: int) -> dict:
    # temperature 0: greedy, so every request does the same work.
    params = GenerationParams(max_new_tokens=max_tokens, temperature=0.0)
    return build_payload(Shape.openai, [{"role": "user", "content": prompt}], params)


def post_score(url: str, payload: dict, key: str | None, timeout: float) -> dict:
    """One request: latency, completion tokens, and the error if it was not a 200."""
    settings = EndpointSettings(f"{url}/score", key=key or "", timeout_s=timeout, max_retries=0)
    started = time.perf_counter()
    try:
        body = post_json(settings, payload)
    except EndpointError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    latency = time.perf_counter() - started
    usage = body.get("usage") if isinstance(body, dict) else None
    if not usage or "completion_tokens" not in usage:
        return {"error": f"no usage.completion_tokens in the answer: {str(body)[:200]}"}
    return {"latency_s": latency, "completion_tokens": int(usage["completion_tokens"])}


def run_level(
    url: str, concurrency: int, requests: int, payload: dict, key: str | None, timeout: float
) -> dict:
    """`requests` requests from `concurrency` parallel clients, after two untimed rounds."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda _: post_score(url, payload, key, timeout), range(2 * concurrency)))  # warm-up
        started = time.perf_counter()
        answers = list(pool.map(lambda _: post_score(url, payload, key, timeout), range(requests)))
        wall = time.perf_counter() - started
    ok = [a for a in answers if "error" not in a]
    errors = [a["error"] for a in answers if "error" in a]
    row = {"concurrency": concurrency, "requests": requests, "ok": len(ok), "errors": len(errors)}
    if errors:
        row["first_error"] = errors[0]
    if ok:
        latencies = [a["latency_s"] for a in ok]
        tokens = sum(a["completion_tokens"] for a in ok)
        row.update(
            latency_p50_s=float(np.percentile(latencies, 50)),
            latency_p95_s=float(np.percentile(latencies, 95)),
            latency_mean_s=statistics.fmean(latencies),
            completion_tokens_mean=tokens / len(ok),
            tokens_per_s=tokens / wall,  # aggregate over all clients
            tokens_per_s_per_request=statistics.median(a["completion_tokens"] / a["latency_s"] for a in ok),
            requests_per_s=len(ok) / wall,
            wall_s=wall,
        )
    return row


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"--url {url}: the serving benchmark measures the local endpoint; use 127.0.0.1")
    return url.rstrip("/")


@contextlib.contextmanager
def endpoint(url: str | None, model_uri: str | None, key_env: str) -> Iterator[str]:
    if url:
        yield check_loopback(url)
        return
    from deploy.local import serve_in_background

    with serve_in_background(model_uri, overrides=(f"key_env={key_env}",) if key_env else ()) as base:
        yield base


COLUMNS = [
    ("concurrency", "concurrency", "d"),
    ("requests ok", "ok", "d"),
    ("errors", "errors", "d"),
    ("p50 latency s", "latency_p50_s", ".3f"),
    ("p95 latency s", "latency_p95_s", ".3f"),
    ("tokens/s (all clients)", "tokens_per_s", ",.1f"),
    ("tokens/s per request", "tokens_per_s_per_request", ",.1f"),
    ("requests/s", "requests_per_s", ".2f"),
    ("tokens/answer", "completion_tokens_mean", ".1f"),
]


def run_serve_benchmark(
    url: str,
    levels: list[int],
    requests: int,
    max_tokens: int,
    prompt: str,
    key: str | None,
    timeout: float = 300,
    command: str = "",
) -> dict:
    from bench import metrics

    payload = chat_payload(prompt, max_tokens)
    rows = [run_level(url, c, max(requests, c), payload, key, timeout) for c in levels]
    failed = [r for r in rows if not r["ok"]]
    if failed:
        raise RuntimeError(
            f"every request failed at concurrency {failed[0]['concurrency']}: {failed[0]['first_error']}"
        )
    hardware = metrics.describe_hardware(on_cuda=_server_has_cuda())
    return {
        "kind": "serve",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "hardware": hardware,
        "versions": metrics.library_versions(),
        "max_tokens": max_tokens,
        "prompt": prompt,
        "levels": rows,
    }


def _server_has_cuda() -> bool:
    import torch  # the server runs on this machine: it sees the same devices

    return torch.cuda.is_available()


def results_markdown(results: dict, model: str) -> str:
    hw = results["hardware"]
    device = hw.get("gpu") or f"{hw['cpu']} ({hw['cpu_cores']} cores)"
    return "\n".join(
        [
            f"## Serving latency: {model} on the local endpoint (POST /score, OpenAI payload)",
            "",
            f"- {results['date']} on {device}; torch {results['versions']['torch']}, "
            f"transformers {results['versions']['transformers']}",
            f"- `{results['command']}`",
            f"- greedy, max_tokens {results['max_tokens']}; two untimed rounds per level; tokens are the server's "
            "usage.completion_tokens; tokens/s (all clients) = all tokens / wall time of the level",
            "",
            markdown_table(COLUMNS, results["levels"]),
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running local endpoint, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--model-uri", help="start `python -m deploy target=local` for it, e.g. models:/NAME/1"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4], help="parallel clients per level"
    )
    parser.add_argument("--requests", type=int, default=16, help="timed requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt", default="Write one sentence about the sea.")
    parser.add_argument(
        "--key-env", default="FINETUNE_PHI_ENDPOINT_KEY", help="env var holding the endpoint key"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.max_tokens < 1:
        parser.error("--concurrency, --requests and --max-tokens must be >= 1")

    key = os.environ.get(args.key_env) or None
    with endpoint(args.url, args.model_uri, args.key_env) as url:
        results = run_serve_benchmark(
            url,
            args.concurrency,
            args.requests,
            args.max_tokens,
            args.prompt,
            key,
            args.timeout,
            command=" ".join(["python -m bench.serve", *(sys.argv[1:] if argv is None else argv)]),
        )
    results["model"] = args.model_uri or args.url
    from bench.metrics import hardware_slug

    markdown = results_markdown(results, results["model"])
    path = write_results(
        results, markdown, args.results_dir, hardware_slug(results["hardware"]), kind="serve"
    )
    results["json_path"] = str(path)
    print(markdown)
    print(f"\nresults: {path}\n         {path.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
