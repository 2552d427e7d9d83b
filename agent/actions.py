"""What `python -m agent` does: ask one question, chat in the terminal, serve HTTP.

Each question is traced as one turn of a conversation (agent/tracing.py) when a tracer is set.

The HTTP front end is the chat flow's `pf flow serve` contract, on the standard library:
`POST /score` with `{"question": "...", "chat_history": [...]}` (Prompt flow's history shape;
optional) answers `{"answer": "...", "conversation_id": "..."}`; a `conversation_id` sent back
groups the turns of one conversation in the traces. `GET /health` answers while it runs.
Requests are parsed on the server's threads and answered on one event loop, where the agent
and its HTTP client live. Bad requests get a 4xx at once, naming what was expected.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.agents import chat, standard
from agent.tracing import turn
from common.payloads import GenerationParams

MAX_BODY_BYTES = 1 << 20  # a question and its history; larger bodies: 413 before reading
REQUEST_TIMEOUT_S = 300.0  # the model's answer; past it: 504
SOCKET_TIMEOUT_S = 30  # a client that stops sending is dropped
CHAT_KEYS = {"question", "chat_history", "conversation_id"}


async def ask_once(agent, question: str, params: GenerationParams) -> str:
    with turn(str(uuid.uuid4()), "ask"):
        return await standard(agent, question, params)


async def chat_in_terminal(agent, params: GenerationParams, read: Callable = input, write: Callable = print):
    """Ask, answer, repeat with the history so far, until an empty line or end of input."""
    conversation, history = str(uuid.uuid4()), []
    while True:
        try:
            question = (await asyncio.to_thread(read, "you> ")).strip()
        except EOFError:
            question = ""
        if not question:
            return history
        with turn(conversation, "chat"):
            answer = await chat(agent, history, question, params)
        write(f"assistant> {answer}")
        history.append({"inputs": {"question": question}, "outputs": {"answer": answer}})


def one_line(error: BaseException) -> str:
    """An error as one line: Agent Framework wraps the client's error, whose message says more."""
    cause = error.__cause__ if error.__cause__ is not None else error
    return " ".join(str(cause).split())[:500]


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_chat_request(headers, rfile) -> dict:
    """The body of a POST /score, checked: a JSON object with a non-empty `question`."""
    try:
        length = int(headers.get("Content-Length", ""))
    except ValueError:
        raise BadRequest("send a Content-Length header", 411) from None
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"the body is {length} bytes; at most {MAX_BODY_BYTES} are taken", 413)
    try:
        body = json.loads(rfile.read(length))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest('the body is not JSON; send {"question": "...", "chat_history": [...]}') from None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("question"), str)
        or not body["question"].strip()
    ):
        raise BadRequest('send {"question": "...", "chat_history": [...]} with a non-empty question')
    if unknown := set(body) - CHAT_KEYS:
        raise BadRequest(f"unknown keys {sorted(unknown)}; the keys taken are {sorted(CHAT_KEYS)}")
    if not isinstance(body.get("chat_history", []), list):
        raise BadRequest(
            'chat_history must be a list of {"inputs": {"question": ...}, "outputs": {"answer": ...}}'
        )
    if not isinstance(body.get("conversation_id", ""), str):
        raise BadRequest("conversation_id must be a string (the one a previous answer returned)")
    return body


class FrontEnd:
    """The HTTP front end: a threading HTTP server and the event loop the agent runs on."""

    def __init__(self, agent, params: GenerationParams, host: str = "127.0.0.1", port: int = 8090):
        self.agent, self.params = agent, params
        self.loop = asyncio.new_event_loop()
        self.server = ThreadingHTTPServer((host, port), self.handler())
        self.server.daemon_threads = True

    async def answer(self, body: dict) -> dict:
        conversation = body.get("conversation_id") or str(uuid.uuid4())
        with turn(conversation, "http"):
            answer = await chat(self.agent, body.get("chat_history", []), body["question"], self.params)
        return {"answer": answer, "conversation_id": conversation}

    def respond(self, body: dict) -> tuple[int, dict]:
        future = asyncio.run_coroutine_threadsafe(self.answer(body), self.loop)
        try:
            return 200, future.result(REQUEST_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            return 504, {"error": {"message": f"no answer within {REQUEST_TIMEOUT_S:g} s"}}
        except ValueError as e:  # a malformed chat_history entry (common.endpoint_client says which)
            return 400, {"error": {"message": str(e)}}
        except Exception as e:  # EndpointError, or the agent's own (the /v1 server refused, ...)
            return 502, {"error": {"message": f"the model's endpoint failed: {one_line(e)}"}}

    def handler(self):
        front_end = self

        class Handler(BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT_S

            def send_json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/health":
                    return self.send_json(200, {"status": "ok"})
                self.send_json(404, {"error": {"message": "routes: GET /health, POST /score"}})

            def do_POST(self):
                if self.path != "/score":
                    self.close_connection = True
                    return self.send_json(404, {"error": {"message": "routes: GET /health, POST /score"}})
                try:
                    body = parse_chat_request(self.headers, self.rfile)
                except BadRequest as e:
                    self.close_connection = True  # an unread body must not be taken for the next request
                    return self.send_json(e.status, {"error": {"message": str(e)}})
                self.send_json(*front_end.respond(body))

            def log_message(self, format, *args):  # one access line, no bodies
                print(f"{self.address_string()} {format % args}", flush=True)

        return Handler

    def serve_forever(self) -> None:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        try:
            self.server.serve_forever()
        finally:
            self.server.server_close()
            self.loop.call_soon_threadsafe(self.loop.stop)
