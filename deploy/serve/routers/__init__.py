"""The local server's routes, one module per API: OpenAI's /v1 (`openai.py`), Azure's /score
(`score.py`) and the health probes (`health.py`). Each route parses, calls deploy.serve.serving
and returns; errors are raised and answered by deploy.serve.middleware.errors."""
