"""Serving benchmark: tokens/s and p50/p95 latency of the local server at concurrency 1, 4, 8 and 16,
each level beside the same requests sent one after another.

python -m bench.serve --model-uri models:/tiny-phi3-sft/1            # starts the server itself
python -m bench.serve --url http://127.0.0.1:8000 --concurrency 1 8 --requests 32
python -m bench.serve --model-uri models:/tiny-phi3-sft/1 --api score --max-tokens 64

Each level sends `--requests` chat requests (8 different prompts in turn, greedy, `--max-tokens`)
from C clients in a closed loop (each sends its next request when its last is answered), after
2C untimed ones; then the same requests one after another, side by side, since a shared machine's
speed drifts between levels. Reported: p50/p95 latency, tokens/s of all clients (the server's own
`usage.completion_tokens` over the wall time), tokens/s against concurrency 1 and against the
requests sent one after another, p95 against concurrency 1, and tokens per answer: a model that
stops early (the trained tiny one answers in about 3 tokens) measures request overhead, not
generation, so measure batching with a model that runs to max_tokens (the untrained tiny model).

`--api openai` (default) posts to /v1/chat/completions, `--api score` to /score (Azure's payloads).
The server is `python -m deploy target=local` (deploy/serve/); with --model-uri it is started on
a free loopback port for the run and stopped by its pid. When $FINETUNE_PHI_ENDPOINT_KEY (or --key-env) is set, requests carry it as
`Authorization: Bearer ...`; it is never written anywhere.
The server's resident memory (RSS, its process and children) is sampled every 0.1 s while each
level runs and reported as its peak (`--server-pid` for a server started elsewhere; found by its
port otherwise): the KV cache is sized by `server.kv_cache_mib`, not by the requests.
Results: bench/results/<date>-serve-<hardware>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from bench.report import markdown_table, publish
from common.endpoint_client import EndpointError, EndpointSettings, post_json
from common.payloads import GenerationParams, Shape, build_payload

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ROUTES = {"openai": "/v1/chat/completions", "score": "/score"}
PROMPTS = [
    "Write one sentence about the sea.",
    "Name three colours.",
    "What is two plus two?",
    "Tell me a short story about a cat.",
    "Translate hello to French.",
    "List the days of the week.",
    "Why is the sky blue?",
    "Give me a haiku about rain.",
]
# Issue 15's targets: 8 concurrent requests give >= 2.5x the tokens/s of the same 8 sent one after
# another, and p95 latency at concurrency 8 is <= 3x p95 at concurrency 1.
TARGET_LEVEL, TARGET_SPEEDUP, TARGET_P95_RATIO = 8, 2.5, 3.0


def chat_payloads(requests: int, max_tokens: int) -> list[dict]:
    # temperature 0: greedy, so the same request does the same work each time.
    params = GenerationParams(max_new_tokens=max_tokens, temperature=0.0)
    messages = ([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(requests))
    return [build_payload(Shape.openai, m, params) for m in messages]


def post(url: str, payload: dict, key: str | None, timeout: float) -> dict:
    """One request: latency, completion tokens, and the error if it was not a 200."""
    settings = EndpointSettings(url, key=key or "", timeout_s=timeout, max_retries=0)
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


def closed_loop(url: str, payloads: list[dict], clients: int, key: str | None, timeout: float) -> dict:
    """`payloads` sent by `clients` parallel clients: latencies, tokens/s, errors."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        started = time.perf_counter()
        answers = list(pool.map(lambda payload: post(url, payload, key, timeout), payloads))
        wall = time.perf_counter() - started
    ok = [a for a in answers if "error" not in a]
    errors = [a["error"] for a in answers if "error" in a]
    row = {"requests": len(payloads), "ok": len(ok), "errors": len(errors)}
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
            requests_per_s=len(ok) / wall,
            wall_s=wall,
        )
    return row


class PeakRss:
    """The peak resident memory of a process and its children, sampled in a thread while in use."""

    def __init__(self, pid: int | None, every_s: float = 0.1):
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        process = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
            except psutil.Error:  # a child that just ended
                continue
            self.peak = max(self.peak, rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.pid is not None:
            self._thread.join()


def listening_pid(url: str) -> int | None:
    """The process listening on the url's port (the server this benchmark talks to), if visible."""
    import psutil

    port = urlparse(url).port
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return connection.pid
    return None


def run_level(
    url: str, concurrency: int, payloads: list[dict], key: str | None, timeout: float, pid: int | None = None
) -> dict:
    """One level: untimed warm-up, the requests from `concurrency` clients (the server's peak RSS
    sampled meanwhile), then one after another."""
    closed_loop(url, payloads[: 2 * concurrency], concurrency, key, timeout)
    with PeakRss(pid) as rss:
        row = {"concurrency": concurrency, **closed_loop(url, payloads, concurrency, key, timeout)}
    if rss.peak:
        row["peak_rss_gib"] = rss.peak / 2**30
    sequential = row if concurrency == 1 else closed_loop(url, payloads, 1, key, timeout)
    if row.get("tokens_per_s") and sequential.get("tokens_per_s"):
        row["sequential_tokens_per_s"] = sequential["tokens_per_s"]
        row["tokens_per_s_vs_sequential"] = row["tokens_per_s"] / sequential["tokens_per_s"]
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
    from deploy.serve.background import serve_in_background

    with serve_in_background(model_uri, overrides=(f"key_env={key_env}",) if key_env else ()) as base:
        yield base


COLUMNS = [
    ("concurrency", "concurrency", "d"),
    ("requests ok", "ok", "d"),
    ("errors", "errors", "d"),
    ("p50 latency s", "latency_p50_s", ".3f"),
    ("p95 latency s", "latency_p95_s", ".3f"),
    ("tokens/s (all clients)", "tokens_per_s", ",.1f"),
    ("tokens/s vs C=1", "tokens_per_s_vs_c1", ".2f"),
    ("tokens/s vs one after another", "tokens_per_s_vs_sequential", ".2f"),
    ("p95 vs C=1", "latency_p95_vs_c1", ".2f"),
    ("requests/s", "requests_per_s", ".2f"),
    ("tokens/answer", "completion_tokens_mean", ".1f"),
    ("server peak RSS GiB", "peak_rss_gib", ".2f"),
]


def run_serve_benchmark(
    url: str,
    levels: list[int],
    requests: int,
    max_tokens: int,
    key: str | None,
    api: str = "openai",
    timeout: float = 300,
    command: str = "",
    pid: int | None = None,
) -> dict:
    from bench import metrics

    route = url + ROUTES[api]
    rows = [
        run_level(route, c, chat_payloads(max(requests, c), max_tokens), key, timeout, pid) for c in levels
    ]
    failed = [r for r in rows if not r["ok"]]
    if failed:
        raise RuntimeError(
            f"every request failed at concurrency {failed[0]['concurrency']}: {failed[0]['first_error']}"
        )
    base = next((r for r in rows if r["concurrency"] == 1), None)
    for row in rows if base else ():
        row["tokens_per_s_vs_c1"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["latency_p95_vs_c1"] = row["latency_p95_s"] / base["latency_p95_s"]
    return {
        "kind": "serve",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "api": api,
        "route": ROUTES[api],
        "hardware": metrics.describe_hardware(on_cuda=_server_has_cuda()),
        "versions": metrics.library_versions(),
        "max_tokens": max_tokens,
        "prompts": PROMPTS,
        "levels": rows,
        "targets": targets(rows),
    }


def targets(rows: list[dict]) -> dict | None:
    """Issue 15's two targets, where the run has the levels they compare."""
    row = next((r for r in rows if r["concurrency"] == TARGET_LEVEL), None)
    if row is None or "latency_p95_vs_c1" not in row or "tokens_per_s_vs_sequential" not in row:
        return None
    return {
        "tokens_per_s_vs_sequential": row["tokens_per_s_vs_sequential"],
        "tokens_per_s_vs_sequential_min": TARGET_SPEEDUP,
        "latency_p95_vs_c1": row["latency_p95_vs_c1"],
        "latency_p95_vs_c1_max": TARGET_P95_RATIO,
        "met": row["tokens_per_s_vs_sequential"] >= TARGET_SPEEDUP
        and row["latency_p95_vs_c1"] <= TARGET_P95_RATIO,
    }


def _server_has_cuda() -> bool:
    import torch  # the server runs on this machine: it sees the same devices

    return torch.cuda.is_available()


def results_markdown(results: dict, model: str) -> str:
    hw = results["hardware"]
    device = hw.get("gpu") or f"{hw['cpu']} ({hw['cpu_cores']} cores, load average {hw['load_avg_1m']})"
    lines = [
        f"## Serving: {model} on the local server (POST {results['route']})",
        "",
        f"- {results['date']} on {device}; torch {results['versions']['torch']}, "
        f"transformers {results['versions']['transformers']}",
        f"- `{results['command']}`",
        f"- greedy, max_tokens {results['max_tokens']}, {len(results['prompts'])} prompts in turn; C clients in "
        "a closed loop after 2C untimed requests, then the same requests one after another; tokens are the "
        "server's usage.completion_tokens; tokens/s (all clients) = all tokens / wall time of the level",
    ]
    if t := results["targets"]:
        lines.append(
            f"- targets at concurrency {TARGET_LEVEL}: tokens/s {t['tokens_per_s_vs_sequential']:.2f}x the same "
            f"requests one after another (>= {TARGET_SPEEDUP}), p95 {t['latency_p95_vs_c1']:.2f}x p95 at "
            f"concurrency 1 (<= {TARGET_P95_RATIO}): {'met' if t['met'] else 'NOT met'}"
        )
    return "\n".join([*lines, "", markdown_table(COLUMNS, results["levels"])])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running local endpoint, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--model-uri", help="start `python -m deploy target=local` for it, e.g. models:/NAME/1"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4, 8, 16], help="parallel clients per level"
    )
    parser.add_argument(
        "--requests", type=int, default=64, help="timed requests per level (a stable p95 needs >= 50)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--api", choices=sorted(ROUTES), default="openai", help="openai: /v1/chat/completions"
    )
    parser.add_argument(
        "--key-env", default="FINETUNE_PHI_ENDPOINT_KEY", help="env var holding the endpoint key"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    parser.add_argument(
        "--server-pid", type=int, help="the server's pid, for its RSS (default: found by port)"
    )
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
            key,
            args.api,
            args.timeout,
            command=" ".join(["python -m bench.serve", *(sys.argv[1:] if argv is None else argv)]),
            pid=args.server_pid or listening_pid(url),
        )
    results["model"] = args.model_uri or args.url

    return publish(results, results_markdown(results, results["model"]), args.results_dir, kind="serve")


if __name__ == "__main__":
    main()
