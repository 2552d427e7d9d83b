"""Finding the model and loading it checked: what every deploy action starts from.

Owns model references (`find.py`: ModelRef, `resolve`, versions and aliases in the MLflow
registry, an Azure ML job's output), loading the model the servers will use (`load.py`) and the
training/serving parity check (`parity.py`). Imports `common`, MLflow and the scoring code's
`ChatModel` (deploy/scoring/); never deploy.serve, deploy.azure or deploy.evaluate, which all
import it.
"""
