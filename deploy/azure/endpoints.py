"""The workspace's online endpoints as they are: `action=status` lists them with their traffic,
`action=teardown` deletes one idle deployment, or a whole endpoint only when its name is repeated.

    python -m deploy target=azureml action=status
    python -m deploy target=azureml action=teardown target.teardown.deployment=blue
    python -m deploy target=azureml action=teardown target.teardown.confirm=finetune-phi
"""

from __future__ import annotations

from common.azure_workspace import WorkspaceSettings, ml_client
from deploy.azure.errors import DeployError


def run_status(cfg, client=None) -> list[dict]:
    """action=status: every online endpoint of `target.workspace`, printed; `client` injects an MLClient."""
    client = client or ml_client(WorkspaceSettings.from_config(cfg.target.workspace))
    rows = status(client)
    print(format_status(rows))
    return rows


def run_teardown(cfg, client=None) -> str:
    """action=teardown: `target.teardown.deployment` if it carries no traffic, else the endpoint when
    `target.teardown.confirm` repeats its name (checked before any client is made)."""
    endpoint_name, teardown_cfg = cfg.target.endpoint.name, cfg.target.teardown
    if not teardown_cfg.deployment:
        check_teardown_confirmed(endpoint_name, teardown_cfg.confirm)
    client = client or ml_client(WorkspaceSettings.from_config(cfg.target.workspace))
    message = teardown(client, endpoint_name, teardown_cfg.confirm, teardown_cfg.deployment)
    print(message)
    return message


def live_traffic(endpoint) -> dict[str, int]:
    return {name: int(share) for name, share in (endpoint.traffic or {}).items() if int(share) > 0}


def status(client) -> list[dict]:
    """Every online endpoint in the workspace with its deployments and traffic."""
    rows = []
    for endpoint in client.online_endpoints.list():
        deployments = [
            {
                "name": d.name,
                "instance_type": d.instance_type,
                "instance_count": d.instance_count,
                "state": d.provisioning_state,
                "model": d.model if isinstance(d.model, str) else getattr(d.model, "id", None),
            }
            for d in client.online_deployments.list(endpoint.name)
        ]
        rows.append(
            {
                "endpoint": endpoint.name,
                "scoring_uri": endpoint.scoring_uri,
                "auth_mode": endpoint.auth_mode,
                "state": endpoint.provisioning_state,
                "traffic": dict(endpoint.traffic or {}),
                "deployments": deployments,
            }
        )
    return rows


def format_status(rows: list[dict]) -> str:
    if not rows:
        return "no online endpoints in this workspace"
    lines = []
    for row in rows:
        lines.append(f"{row['endpoint']}  [{row['state']}]  auth={row['auth_mode']}  {row['scoring_uri']}")
        for d in row["deployments"]:
            share = row["traffic"].get(d["name"], 0)
            lines.append(
                f"  {d['name']:<10} {share:>3}%  {d['instance_type']} x{d['instance_count']}  [{d['state']}]  {d['model']}"
            )
    return "\n".join(lines)


def check_teardown_confirmed(endpoint_name: str, confirm: str | None) -> None:
    if confirm != endpoint_name:
        raise DeployError(
            f"action=teardown deletes endpoint {endpoint_name} and every deployment on it (it stops the "
            f"cost, and the traffic). Repeat its name to confirm: target.teardown.confirm={endpoint_name}"
        )


def teardown(client, endpoint_name: str, confirm: str | None, deployment: str | None = None) -> str:
    """Delete one idle deployment, or the whole endpoint when `confirm` repeats its name."""
    if deployment:
        endpoint = client.online_endpoints.get(endpoint_name)
        share = live_traffic(endpoint).get(deployment, 0)
        if share:
            raise DeployError(
                f"deployment {deployment} carries {share}% of {endpoint_name}'s traffic; move it first"
            )
        client.online_deployments.begin_delete(name=deployment, endpoint_name=endpoint_name).result()
        return f"deleted deployment {deployment} of {endpoint_name}"
    check_teardown_confirmed(endpoint_name, confirm)
    client.online_endpoints.begin_delete(name=endpoint_name).result()
    return f"deleted endpoint {endpoint_name}"
