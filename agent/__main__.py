"""`python -m agent`: the flows' front ends on Microsoft Agent Framework (run it with .venv-agent).

    python -m agent ask "What is the first word of: amber river"     # the standard interface
    python -m agent chat                                              # chat in the terminal
    python -m agent serve --port 8090                                 # HTTP: POST /score
    python -m agent ask "..." --score-url https://NAME.REGION.inference.ml.azure.com/score
    python -m agent chat --trace-to http://127.0.0.1:5000             # spans to `mlflow server`

By default the model is the local server's (`python -m deploy target=local`) OpenAI-compatible
API at http://127.0.0.1:8000/v1. The key is read from $FINETUNE_PHI_ENDPOINT_KEY (--key-env
names another variable); for an https --score-url without it, an Entra token from
azure-identity's DefaultAzureCredential is sent instead. Exit status: 2 for usage errors, 1
when the model's endpoint fails (one line saying why).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from agent.actions import FrontEnd, ask_once, chat_in_terminal, one_line
from agent.agents import Backend, build_agent
from agent.score_client import KEY_ENV
from agent.tracing import DEFAULT_EXPERIMENT, trace_to_mlflow
from common.payloads import GenerationParams, Shape


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--base-url", default=Backend.base_url, help="an OpenAI-compatible /v1 (default: %(default)s)"
    )
    common.add_argument(
        "--score-url", default="", help="a scoring route instead (an Azure ML endpoint's /score)"
    )
    common.add_argument(
        "--payload",
        default=Shape.seedB.value,
        choices=[s.value for s in Shape],
        help="what --score-url speaks",
    )
    common.add_argument("--deployment", default="", help="pin one deployment of the managed endpoint")
    common.add_argument("--model", default="", help="the /v1 model id (default: the one the server lists)")
    common.add_argument(
        "--key-env", default=KEY_ENV, help="the variable holding the key (default: %(default)s)"
    )
    common.add_argument(
        "--system-prompt", default="", help="the agent's instructions (default: none, as the flows)"
    )
    common.add_argument("--max-new-tokens", type=int, default=GenerationParams.max_new_tokens)
    common.add_argument(
        "--timeout-s", type=float, default=Backend.timeout_s, help="per attempt on --score-url (%(default)s)"
    )
    common.add_argument(
        "--trace-to",
        default=os.environ.get("FINETUNE_PHI_TRACE_TO", ""),
        help="an `mlflow server` URL to send the spans to (default: $FINETUNE_PHI_TRACE_TO)",
    )
    common.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="the MLflow experiment of the traces"
    )
    top = argparse.ArgumentParser(prog="python -m agent", description=__doc__.splitlines()[0])
    actions = top.add_subparsers(dest="action", required=True)
    ask = actions.add_parser("ask", parents=[common], help="ask one question, print the answer")
    ask.add_argument("question")
    actions.add_parser("chat", parents=[common], help="chat in the terminal (an empty line ends it)")
    serve = actions.add_parser("serve", parents=[common], help="the HTTP front end (POST /score)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)
    return top


def azure_credential(args):
    """An Entra credential for an Azure ML endpoint when no key is in the environment."""
    if not args.score_url.startswith("https://") or os.environ.get(args.key_env):
        return None
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    provider = None
    try:
        params = GenerationParams(max_new_tokens=args.max_new_tokens)
        backend = Backend(
            args.base_url,
            args.score_url,
            Shape(args.payload),
            args.deployment,
            args.model,
            args.key_env,
            args.timeout_s,
        )
        provider = trace_to_mlflow(args.trace_to, args.experiment) if args.trace_to else None
    except (ValueError, RuntimeError) as e:  # a bad option, or no tracking server at --trace-to
        print(f"python -m agent: {e}", file=sys.stderr)
        return 2
    try:
        agent = build_agent(backend, args.system_prompt, credential=azure_credential(args))
        if args.action == "ask":
            print(asyncio.run(ask_once(agent, args.question, params)))
        elif args.action == "chat":
            asyncio.run(chat_in_terminal(agent, params))
        else:
            front_end = FrontEnd(agent, params, args.host, args.port)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped by pid: flush the spans first
            print(f"serving the chat front end on http://{args.host}:{args.port}/score", flush=True)
            front_end.serve_forever()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # the endpoint or the tracking server failed: one line, no traceback
        where = args.score_url or args.base_url
        print(f"python -m agent: {where}: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if provider is not None:
            provider.shutdown()  # sends the spans still queued
    return 0


if __name__ == "__main__":
    sys.exit(main())
