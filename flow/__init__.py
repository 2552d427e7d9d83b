"""finetune-phi's Prompt flow layer: two flows in front of a scoring endpoint.

- flow/standard: seed A's interface (`input_data` in, `answer` out).
- flow/chat: a chat flow (question, chat history, answer) that sends the history along.
- endpoint_client.py: the HTTP calls as plain functions, usable without promptflow.
- connect.py: `python -m flow.connect` stores the endpoint and its key in a CustomConnection.
- e2e.py: `python -m flow.e2e` (make e2e) trains, serves, connects and asks the chat flow.
"""
