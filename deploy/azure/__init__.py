"""Azure ML managed online endpoints: deploying blue/green, reading and tearing them down.

Owns the azure-ai-ml entities of a deployment (`entities.py`), the blue/green deploy action
(`blue_green.py`), status and teardown (`endpoints.py`), the endpoint identity's role preflight
(`roles.py`), the serving environment (`environment.py`: docker/serve.requirements.txt) and the
traffic gate that compares the new deployment with the live one (`traffic_gate.py`). Imports
`common`, deploy.config, deploy.registry and deploy.evaluate (the gate's rules and metrics);
never deploy.serve: a deployment runs the scoring script (deploy/scoring/), not the local server.
"""
