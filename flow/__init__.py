"""finetune-phi's Prompt flow layer: two flows in front of a scoring endpoint.

- flow/standard: seed A's interface (`input_data` in, `answer` out).
- flow/chat: a chat flow (question, chat history, answer) that sends the history along.
- connect.py: `python -m flow.connect` stores the endpoint and its key in a CustomConnection.
The HTTP calls are `common.endpoint_client` (plain Python, no promptflow), which promptflow
copies in beside the tools; `make e2e` (train, serve, connect, ask) is `python -m e2e`.
"""
