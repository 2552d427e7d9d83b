"""Azure ML as a target of the same recipe: `python -m train target=azureml` submits the
composed config as a command job that runs `python -m train ... target=local` in the cloud.

workspace: settings and MLClient; compute, environment, job: the azure-ai-ml entities;
submit: preflight, get-or-create, submission, the job record; sweep: the multirun job table.
"""

# The job record of a submitted run, in its run dir (the shared contract with deploy).
RECORD = "azureml_job.json"
