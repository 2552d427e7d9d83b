"""finetune-phi's deploy side: models the recipe registered in MLflow, served and used.

Layering: deploy never imports `train`; it meets training only through the MLflow model.
"""
