"""The scoring script deployed to Azure ML (score.py) and imported by the local server.

This folder is the deployment's code: score.py imports nothing from the `deploy` package, only
installed packages and the neutral `common` modules the Azure code snapshot carries beside it
(`deploy.azureml.scoring_code_dir`).
"""
