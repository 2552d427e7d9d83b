"""End-to-end runs of the whole local path (train, register, serve, connect, ask): `make e2e`.

Like bench/, it sits on top of train, deploy and flow and may import all of them; they never
import it.
"""
