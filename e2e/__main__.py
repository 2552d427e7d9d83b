"""`python -m e2e`: train, register, serve, connect and ask the chat flow (see e2e/local.py)."""

from e2e.local import main

if __name__ == "__main__":
    main()
