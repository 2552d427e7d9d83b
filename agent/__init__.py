"""The flows' two front ends on Microsoft Agent Framework (Prompt flow's successor).

Runs in its own environment, `.venv-agent` (`make agent-setup`; agent/requirements.txt and
agent/constraints.txt): agent-framework-core needs opentelemetry-api>=1.39, promptflow needs
opentelemetry-sdk<1.39, so the two never share one; it needs no torch either, as it only
talks HTTP to the served model.

- `agents.py`       the standard interface (a question in, an answer out) and the chat one
                    (history in, answer out) over an Agent Framework `Agent`
- `score_client.py` a chat client for a scoring route (an Azure ML managed endpoint's /score)
- `actions.py`      ask one question, chat in the terminal, the HTTP front end
- `tracing.py`      Agent Framework's OpenTelemetry spans to an MLflow tracking server

    .venv-agent/bin/python -m agent ask "What is the first word of: amber river"
    .venv-agent/bin/python -m agent chat
    .venv-agent/bin/python -m agent serve --port 8090

It imports only `common` (the endpoint client and the payload contract, standard library and
urllib3) of this project: never train, deploy or flow, whose environments it does not have.
"""
