"""The endpoint identity's role preflight through azure-core's real pipeline and azure-ai-ml's real
MLClient, with ARM answering its documented JSON (tests/fake_arm.py): the identity, the workspace,
role assignments listed at the resource group in two pages (nextLink), role definitions.

Bodies follow azure-rest-api-specs, Microsoft.Authorization/stable/2022-04-01/examples
(RoleAssignments_ListForResourceGroup.json, GetRoleDefinitionById.json); the permissions are those
of the built-in roles (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlparse

import pytest
from azure.ai.ml import MLClient

from deploy.azure import roles
from deploy.azure.errors import DeployError
from tests.deploy.conftest import compose_deploy
from tests.fake_arm import RESOURCE_GROUP, SUBSCRIPTION, ArmStandIn, FakeCredential, workspace_body

IDENTITY = f"{RESOURCE_GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/phi-uai"
PRINCIPAL = "ce2ce14e-85d7-4629-bdbc-454d0519d987"
GROUP = "9d1a2b3c-0000-4e5f-8a9b-123456789abc"  # an Entra group the identity is a member of
STORAGE = f"{RESOURCE_GROUP}/providers/Microsoft.Storage/storageAccounts/st"
ROLES = {  # built-in role id -> (name, permissions)
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": (
        "AcrPull",
        {"actions": ["Microsoft.ContainerRegistry/registries/pull/read"]},
    ),
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": (
        "Storage Blob Data Reader",
        {
            "actions": [
                "Microsoft.Storage/storageAccounts/blobServices/containers/read",
                "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
            ],
            "dataActions": ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
        },
    ),
    "b24988ac-6180-42a0-ab88-20f7382dd24c": (
        "Contributor",
        {
            "actions": ["*"],
            "notActions": ["Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write"],
            "dataActions": [],
        },
    ),
}


def role_definition_id(name: str) -> str:
    guid = next(g for g, (n, _) in ROLES.items() if n == name)
    return f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def assignment(role: str, scope: str, name: str, principal: str = PRINCIPAL) -> dict:
    return {
        "properties": {
            "roleDefinitionId": role_definition_id(role),
            "principalId": principal,
            "principalType": "Group" if principal == GROUP else "ServicePrincipal",
            "scope": scope,
        },
        "id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}",
        "type": "Microsoft.Authorization/roleAssignments",
        "name": name,
    }


def arm(first_page: list[dict], second_page: list[dict], assignments_status: int = 200) -> ArmStandIn:
    assignments = f"{RESOURCE_GROUP}/providers/Microsoft.Authorization/roleAssignments"

    def list_assignments(request):
        """ARM's documented filters: `principalId eq '<id>'` lists the principal's own assignments,
        `assignedTo('<id>')` also those of the groups it is a member of."""
        if assignments_status != 200:
            return assignments_status, {"error": {"code": "AuthorizationFailed", "message": "no read access"}}
        query = parse_qs(urlparse(request.url).query)
        (condition,) = query["$filter"]
        principals = {PRINCIPAL, GROUP} if condition == f"assignedTo('{PRINCIPAL}')" else {PRINCIPAL}

        def page(values):
            return [a for a in values if a["properties"]["principalId"] in principals]

        if "$skipToken" in query:
            return {"value": page(second_page)}
        next_link = (
            f"https://management.azure.com{assignments}?api-version=2022-04-01"
            f"&$filter={quote(condition)}&$skipToken=page2"
        )
        return {"value": page(first_page), "nextLink": next_link}

    routes = {
        ("GET", IDENTITY): {"id": IDENTITY, "name": "phi-uai", "properties": {"principalId": PRINCIPAL}},
        ("GET", workspace_body()["id"]): workspace_body(),
        ("GET", assignments): list_assignments,
    }
    for guid, (name, permissions) in ROLES.items():
        routes[("GET", role_definition_id(name))] = {
            "id": role_definition_id(name),
            "name": guid,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {"roleName": name, "type": "BuiltInRole", "permissions": [permissions]},
        }
    return ArmStandIn(routes)


def endpoint_cfg(identity_type: str = "user_assigned"):
    return compose_deploy(
        "target=azureml",
        f"target.endpoint.user_assigned_identity_id={IDENTITY}",
        f"target.endpoint.identity_type={identity_type}",
    ).target.endpoint


def preflight(stand_in: ArmStandIn):
    transport = stand_in.transport()
    client = MLClient(FakeCredential(), SUBSCRIPTION, "rg", "ws", transport=transport)
    return roles.preflight_roles(client, endpoint_cfg(), transport=transport)


def test_roles_found_across_pages_and_by_what_they_permit():
    """Storage Blob Data Reader on the account (page 1); Contributor on the group (page 2, via
    nextLink) permits pulling and writing metrics, but no blob data: both are needed."""
    stand_in = arm(
        [assignment("Storage Blob Data Reader", STORAGE, "a1")],
        [assignment("Contributor", RESOURCE_GROUP, "a2")],
    )
    assert preflight(stand_in) == [
        "identity has AcrPull, Storage Blob Data Reader, AzureML Metrics Writer (preview)"
    ]
    first, second = stand_in.requests_to("/roleAssignments")
    assert parse_qs(urlparse(first.url).query) == {
        "api-version": ["2022-04-01"],
        "$filter": [f"assignedTo('{PRINCIPAL}')"],
    }
    assert "$skipToken=page2" in second.url
    assert first.headers["Authorization"].startswith("Bearer ")


def test_roles_granted_to_a_group_the_identity_is_in_count():
    """Storage Blob Data Reader and AcrPull through an Entra group: `principalId eq` lists only the
    identity's own assignments and reported them missing, which blocked a deploy that would work."""
    stand_in = arm(
        [assignment("Storage Blob Data Reader", STORAGE, "a1", principal=GROUP)],
        [assignment("AcrPull", RESOURCE_GROUP, "a2", principal=GROUP)],
    )
    checked, _ = preflight(stand_in)
    assert checked == "identity has AcrPull, Storage Blob Data Reader"


def test_a_missing_role_stops_the_deploy_with_the_command_that_grants_it():
    """Contributor alone (what the seed granted) reads no blob data."""
    stand_in = arm([], [assignment("Contributor", RESOURCE_GROUP, "a1")])
    with pytest.raises(DeployError, match="lacks Storage Blob Data Reader; nothing was deployed") as e:
        preflight(stand_in)
    assert (
        f'--assignee-object-id {PRINCIPAL} --assignee-principal-type ServicePrincipal --role "Storage Blob Data '
        f'Reader" --scope {STORAGE}'
    ) in str(e.value)
    assert "AcrPull" not in str(e.value)  # Contributor permits the pull


def test_the_metrics_role_is_optional_and_named_when_missing():
    stand_in = arm(
        [assignment("Storage Blob Data Reader", STORAGE, "a1")],
        [assignment("AcrPull", RESOURCE_GROUP, "a2")],  # inherited by the registry
    )
    checked, note = preflight(stand_in)
    assert checked == "identity has AcrPull, Storage Blob Data Reader"
    assert note.startswith("AzureML Metrics Writer (preview) missing") and workspace_body()["id"] in note


def test_an_arm_refusal_is_a_clear_error_not_a_silent_skip():
    with pytest.raises(DeployError, match=r"ARM answered 403 .*target.preflight.roles=false"):
        preflight(arm([], [], assignments_status=403))


def test_a_system_assigned_identity_asks_arm_nothing():
    stand_in = arm([], [])
    client = MLClient(FakeCredential(), SUBSCRIPTION, "rg", "ws", transport=stand_in.transport())
    (note,) = roles.preflight_roles(client, endpoint_cfg("system_assigned"), transport=stand_in.transport())
    assert "Azure assigns its roles itself" in note and stand_in.sent == []
