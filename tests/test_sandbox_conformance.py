"""Where the sandbox must be as strict as Google: one test per behaviour, the real client library against the
sandbox, asserting Google's code and message shape. Each test names its public source.
"""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gx

from coiled_setup import role_templates
from tests.helpers import clients, state


def _create_role(c, role_id: str, permissions: list[str]):
    return c.iam.create_role(request={
        "parent": f"projects/{c.project}", "role_id": role_id,
        "role": {"title": role_id, "included_permissions": permissions, "stage": "GA"},
    })


# -- custom role permissions --------------------------------------------------------------------------------------
# Source: IAM CreateRole/UpdateRole answer INVALID_ARGUMENT "Permission X is not valid." for a permission that does
# not exist or cannot be held by a project-level custom role (public issue threads of terraform-google-modules/
# terraform-google-iam #158 and aquasecurity/cloudsploit #978; Permission.CustomRolesSupportLevel in the IAM v1 API).

@pytest.mark.parametrize("permission", ["resourcemanager.projects.list", "resourcemanager.organizations.get",
                                        "resourcemanager.folders.list", "compute.instances.teleport"])
def test_create_role_refuses_a_permission_google_refuses(sandbox, permission):
    c = clients(sandbox)
    with pytest.raises(gx.InvalidArgument) as e:
        _create_role(c, "refused", ["compute.instances.get", permission])
    assert e.value.message == f"Permission {permission} is not valid."
    assert f"projects/{c.project}/roles/refused" not in state(sandbox)["roles"]


def test_update_role_refuses_a_permission_google_refuses_and_keeps_the_role(sandbox):
    c = clients(sandbox)
    made = _create_role(c, "kept", ["compute.instances.get"])
    with pytest.raises(gx.InvalidArgument) as e:
        c.iam.update_role(request={"name": made.name,
                                   "role": {"included_permissions": ["resourcemanager.projects.list"],
                                            "etag": made.etag},
                                   "update_mask": {"paths": ["included_permissions"]}})
    assert e.value.message == "Permission resourcemanager.projects.list is not valid."
    assert list(c.iam.get_role(request={"name": made.name}).included_permissions) == ["compute.instances.get"]


@pytest.mark.parametrize("template", [role_templates.CONTROL_PLANE, role_templates.INSTANCE])
def test_both_bundled_templates_are_valid_project_roles(sandbox, template):
    """A bad entry in a bundled template would fail here before it failed a user's run."""
    t = role_templates.load(template)
    made = _create_role(clients(sandbox), "template_check", list(t.permissions))
    assert list(made.included_permissions) == list(t.permissions)


def test_permissions_of_services_the_catalogue_does_not_cover_are_accepted(sandbox):
    """A known difference (README): the sandbox cannot tell a real permission of another service from a typo."""
    made = _create_role(clients(sandbox), "other_service", ["pubsub.topics.get"])
    assert list(made.included_permissions) == ["pubsub.topics.get"]
