"""finetune-phi's deploy side: models the recipe registered in MLflow, served and deployed.

Layering: deploy meets training only through the MLflow model it logged (and the tokenizer
artifacts logged beside it) and the neutral `common` package (payload contract, generation,
Azure workspace and environments). deploy/scoring/ is the code uploaded to Azure ML: it
imports nothing from this package.
"""
