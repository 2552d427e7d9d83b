"""The scoring script deployed to Azure ML (score.py), whose model loading the local server imports.

This folder is the deployment's code: score.py imports nothing from the `deploy` package, only
installed packages and the neutral `common` modules the Azure code snapshot carries beside it
(`deploy.azureml.scoring_code_dir`).
"""
