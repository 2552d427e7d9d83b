"""The local server's middleware, one concern per module: key auth (`auth.py`), credentials
refused in the query string (`query_credentials.py`), body size and time limits (`body.py`), the
access log (`access_log.py`), errors in OpenAI's shape (`errors.py`) and the deadline for a
request head (`header_deadline.py`, in uvicorn's HTTP protocol)."""
