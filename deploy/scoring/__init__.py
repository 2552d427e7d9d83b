"""Azure's scoring script (score.py: `init()`/`run()`, ChatModel, Scorer), copied alone into the
deployment's code snapshot, whose model loading the local server and the evaluation share.

This folder is the deployment's code: score.py imports nothing from the `deploy` package, only
installed packages and the neutral `common` modules the Azure code snapshot carries beside it
(`deploy.azure.entities.scoring_code_dir`). Everything else in deploy/ may import it.
"""
