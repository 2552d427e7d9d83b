"""The role preflight: before anything is created, the endpoint's identity may do what a
deployment does with it (pull the image, read the model, write metrics), read through ARM.

Skipped with target.preflight.roles=false; a system-assigned identity gets its roles from Azure.
"""

from __future__ import annotations

import fnmatch

from azure.core.exceptions import HttpResponseError

from common.azure_arm import arm_client, arm_error, arm_list, arm_request
from deploy.azure.errors import DeployError
from deploy.config import IdentityType

# What a user-assigned endpoint identity needs, by the role Azure documents for it
# (concept-endpoints-online-auth: Azure assigns these to a system-assigned identity itself and to a
# user-assigned one never; how-to-access-resources-from-endpoints-managed-identities). Contributor
# is not needed. Checked by what the identity's roles permit, read from their role definitions, so
# Owner or a custom role counts too.
# role -> (the workspace's resource it is granted on, the permission the endpoint uses there)
ENDPOINT_ROLES = {
    "AcrPull": ("container_registry", "Microsoft.ContainerRegistry/registries/pull/read"),
    "Storage Blob Data Reader": (
        "storage_account",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",  # a data action
    ),
    "AzureML Metrics Writer (preview)": (
        "id",
        "Microsoft.MachineLearningServices/workspaces/metrics/resource/write",
    ),
}
OPTIONAL_ROLES = {"AzureML Metrics Writer (preview)"}  # only the endpoint's metrics in the workspace need it
ROLE_API = "2022-04-01"  # REST "Role Assignments - List For Scope", "Role Definitions - Get"


def permits(definition: dict, permission: str) -> bool:
    """Whether a role definition grants `permission`: one of its patterns matches (`*` is the
    wildcard; case-insensitive) and none of the matching block's exclusions do."""
    allow, deny = ("dataActions", "notDataActions") if "/blobs/" in permission else ("actions", "notActions")

    def matches(patterns):
        return any(fnmatch.fnmatchcase(permission.lower(), p.lower()) for p in patterns)

    return any(
        matches(block.get(allow, [])) and not matches(block.get(deny, []))
        for block in definition["properties"]["permissions"]
    )


def covers(assignment_scope: str, resource: str) -> bool:
    """An assignment at a resource's own scope or at a parent of it (inherited)."""
    scope, resource = assignment_scope.rstrip("/").lower(), resource.lower()
    return scope in ("", resource) or resource.startswith(scope + "/")


def role_grants(arm, principal: str, scopes: set[str]) -> list[tuple[str, dict]]:
    """(scope, role definition) of every role assignment of `principal` at, above or below `scopes`,
    its own and those of the Entra groups it is a member of (`assignedTo`; `principalId eq` lists
    only its own, and a role granted through a group looked missing)."""
    params = {"api-version": ROLE_API, "$filter": f"assignedTo('{principal}')"}
    assignments = [
        a["properties"]
        for scope in sorted(scopes)
        for a in arm_list(arm, f"{scope}/providers/Microsoft.Authorization/roleAssignments", params)
    ]
    ids = {a["roleDefinitionId"] for a in assignments}
    definitions = {i: arm_request(arm, "GET", i, {"api-version": ROLE_API}) for i in ids}
    return [(a["scope"], definitions[a["roleDefinitionId"]]) for a in assignments]


def needed_roles(workspace) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """role -> (the workspace resource it is needed on, the permission used there), for the
    resources the workspace has; and a note for each it does not have yet."""
    needed = {
        role: (getattr(workspace, attribute), permission)
        for role, (attribute, permission) in ENDPOINT_ROLES.items()
    }
    notes = [
        f"{role}: the workspace has no {ENDPOINT_ROLES[role][0]} yet; grant it on that once Azure creates it"
        for role, (scope, _) in needed.items()
        if not scope
    ]
    return {role: need for role, need in needed.items() if need[0]}, notes


def preflight_roles(client, endpoint_cfg, transport=None) -> list[str]:
    """Check, through ARM, that the endpoint identity may do what a deployment does with it.

    Raises DeployError listing the `az role assignment create` commands for a missing required
    role, or when ARM cannot be read; returns what was checked and notes. `transport` (an
    azure-core transport) is injectable.
    """
    if endpoint_cfg.identity_type is not IdentityType.user_assigned:
        return ["system-assigned identity: Azure assigns its roles itself (concept-endpoints-online-auth)"]
    identity_id = endpoint_cfg.user_assigned_identity_id
    needed, notes = needed_roles(client.workspaces.get(client.workspace_name))
    group = f"/subscriptions/{client.subscription_id}/resourceGroups/{client.resource_group_name}"
    arm = arm_client(client._credential, transport)
    try:
        principal = arm_request(arm, "GET", identity_id, {"api-version": "2023-01-31"})["properties"][
            "principalId"
        ]
        # The resource group's list holds assignments above and below it; a resource elsewhere gets its own.
        grants = role_grants(
            arm, principal, {group} | {s for s, _ in needed.values() if not covers(group, s)}
        )
    except HttpResponseError as e:
        raise DeployError(
            f"role preflight for {identity_id}: ARM answered {arm_error(e)}; nothing was deployed. "
            "Fix that, or skip the check with target.preflight.roles=false"
        ) from e
    missing = {
        role: scope
        for role, (scope, permission) in needed.items()
        if not any(
            covers(granted_at, scope) and permits(definition, permission) for granted_at, definition in grants
        )
    }
    fixes = {
        role: f"  az role assignment create --assignee-object-id {principal} --assignee-principal-type "
        f'ServicePrincipal --role "{role}" --scope {scope}'
        for role, scope in missing.items()
    }
    required = [role for role in missing if role not in OPTIONAL_ROLES]
    if required:
        raise DeployError(
            f"the endpoint identity {identity_id} lacks {', '.join(required)}; nothing was deployed. "
            "Grant (then wait a few minutes):\n" + "\n".join(fixes[role] for role in required)
        )
    notes += [
        f"{role} missing (the endpoint's metrics only); grant it with:\n{fixes[role]}" for role in missing
    ]
    return [f"identity has {', '.join(role for role in needed if role not in missing)}", *notes]
