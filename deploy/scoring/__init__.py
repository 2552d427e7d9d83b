"""The scoring script uploaded to Azure ML (score.py) and imported by the local server.

This folder is the deployment's code: keep it free of imports from the `deploy` package.
"""
