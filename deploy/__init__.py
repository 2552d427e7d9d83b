"""finetune-phi's deploy side: models the recipe registered in MLflow, served and deployed.

Layering: deploy meets training only through the MLflow model it logged (and the tokenizer
artifacts logged beside it). The one import from `train` is `train.azureml` (workspace
settings and environment registration), shared by both Azure targets.
deploy/scoring/ is the code uploaded to Azure ML: it imports nothing from this package.
"""
