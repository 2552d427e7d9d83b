"""The local server on 127.0.0.1 and the terminal chat: OpenAI's chat API and Azure's /score, batched.

    python -m deploy target=local port=8000          # foreground, until Ctrl-C
    python -m deploy action=chat model.version=2     # a terminal chat (in process, or chat.url=...)

Shaped like vLLM's `entrypoints/openai/`: `app.py` assembles the app from the routers (one module
per API in `routers/`: OpenAI's /v1, Azure's /score, health) and the middleware (one module per
concern in `middleware/`: auth, credentials in the query, body limits, access log, error mapping,
the header deadline); `serving.py` is the request handling without HTTP, over `batching.py`
(transformers' continuous batching); `server.py` runs it (the `deploy` action of target=local),
`background.py` runs it as a subprocess for tests, benchmarks and e2e; `chat.py` is the chat action.
Imports `common`, deploy.config, deploy.registry and deploy.scoring; never deploy.azure or
deploy.evaluate.
"""
