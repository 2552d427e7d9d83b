"""finetune-phi's Prompt flow layer: three flows in front of a scoring endpoint.

- flow/standard: seed A's interface (`input_data` in, `answer` out), over /score.
- flow/chat: a chat flow (question, chat history, answer) that sends the history along, over /score.
- flow/openai_chat: the same chat through promptflow's own LLM tool, over the local server's /v1.
- connect.py: `python -m flow.connect` stores the endpoint and its key in a CustomConnection
  (and, for the local server, in an OpenAIConnection).
The custom tools' HTTP calls are `common.endpoint_client` (plain Python, no promptflow), which
promptflow copies in beside them; `make e2e` (train, serve, connect, ask) is `python -m e2e`.
"""

from common.quiet import quiet_known_noise

quiet_known_noise()  # promptflow's own warning about its own secret reads (docs/quiet.md)
