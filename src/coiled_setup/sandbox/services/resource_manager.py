"""Resource Manager (google.cloud.resourcemanager.v3.Projects): projects and their IAM policies."""

from __future__ import annotations

from google.cloud.resourcemanager_v3 import types as rm
from google.iam.v1 import iam_policy_pb2

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.services import org_policy
from coiled_setup.sandbox.services.common import CRM_SVC, Ctx, live, parts
from coiled_setup.sandbox.services.policies import apply_policy, policy_to_proto, test_permissions

PATH = "google.cloud.resourcemanager.v3.Projects"


def get_project(ctx: Ctx, req: rm.GetProjectRequest):
    (ref,) = parts(req.name, "projects")
    p = ctx.project(ref, "resourcemanager.projects.get", f"projects/{ref}", CRM_SVC)
    return rm.Project(
        name=f"projects/{p.number}",
        parent="organizations/0",
        project_id=p.project_id,
        state=getattr(rm.Project.State, p.state),
        display_name=p.project_id,
        etag=f"W/{p.policy.counter}",
    )


def project_get_policy(ctx: Ctx, req: iam_policy_pb2.GetIamPolicyRequest):
    (ref,) = parts(req.resource, "projects")
    p = ctx.project(ref, "resourcemanager.projects.getIamPolicy", f"projects/{ref}", CRM_SVC)
    return policy_to_proto(p.policy, req.options.requested_policy_version)


def project_set_policy(ctx: Ctx, req: iam_policy_pb2.SetIamPolicyRequest):
    (ref,) = parts(req.resource, "projects")
    p = ctx.project(ref, "resourcemanager.projects.setIamPolicy", f"projects/{ref}", CRM_SVC)
    org_policy.check_members(ctx.world, p, {m for b in p.policy.bindings for m in b.members},
                             {m for b in req.policy.bindings for m in b.members})
    apply_policy(ctx, p.policy, req.policy, req.resource, req.update_mask.paths)
    return policy_to_proto(p.policy, 3)


def project_test_permissions(ctx: Ctx, req: iam_policy_pb2.TestIamPermissionsRequest):
    (ref,) = parts(req.resource, "projects")
    p = ctx.world.project(ref)
    if p is None:
        raise errors.permission_denied("resourcemanager.projects.get", req.resource)
    live(p, CRM_SVC)
    return iam_policy_pb2.TestIamPermissionsResponse(
        permissions=test_permissions(ctx, list(req.permissions), p, None)
    )


METHODS = [
    ("GetProject", get_project, rm.GetProjectRequest, False),
    ("GetIamPolicy", project_get_policy, iam_policy_pb2.GetIamPolicyRequest, False),
    ("SetIamPolicy", project_set_policy, iam_policy_pb2.SetIamPolicyRequest, True),
    ("TestIamPermissions", project_test_permissions, iam_policy_pb2.TestIamPermissionsRequest, False),
]
