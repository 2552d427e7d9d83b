"""Neutral pieces every layer uses: train, deploy, flow (and bench, e2e) import these modules,
and these import none of the layers.

- paths: the checkout and the cache folder.
- payloads: the scoring contract (request shapes, parameters, answers); standard library only,
  so the Azure scoring script and the Prompt flow tools carry it.
- generation: rendering a chat and generating an answer, as serving and evaluation do it.
- endpoint_client: calling a scoring endpoint over HTTP (flows, deploy chat, benchmarks).
- azure_workspace, azure_environment: the Azure ML workspace client and versioned environments.
"""
