"""Artifact Registry (google.devtools.artifactregistry.v1.ArtifactRegistry): repositories and their policies."""

from __future__ import annotations

import time

from google.cloud.artifactregistry_v1 import types as ar
from google.iam.v1 import iam_policy_pb2
from google.protobuf import empty_pb2

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.services import operations, org_policy
from coiled_setup.sandbox.services.common import AR_SVC, Ctx, live, parts, ts
from coiled_setup.sandbox.services.operations import operation_proto
from coiled_setup.sandbox.services.policies import apply_policy, policy_to_proto, test_permissions
from coiled_setup.sandbox.world import AR_LOCATIONS, REPO_ID_RE, Policy, Project, Repository, new_operation_id

PATH = "google.devtools.artifactregistry.v1.ArtifactRegistry"


def _repo_proto(r: Repository) -> ar.Repository:
    _, project, _, location, _, rid = r.name.split("/")
    return ar.Repository(
        name=r.name,
        format_=getattr(ar.Repository.Format, r.format),
        description=r.description,
        create_time=ts(r.created),
        update_time=ts(r.created),
        mode=ar.Repository.Mode.STANDARD_REPOSITORY,
        registry_uri=f"{location}-docker.pkg.dev/{project}/{rid}",
    )


def _repository(ctx: Ctx, name: str, permission: str) -> tuple[Repository, Project]:
    ref, location, rid = parts(name, "projects", "locations", "repositories")
    w = ctx.world
    p = w.project(ref)
    if p is None:
        raise errors.permission_denied(permission, name, domain="artifactregistry.googleapis.com")
    live(p, AR_SVC)
    if not w.service_enabled(p, AR_SVC, settled=True):
        raise errors.service_disabled(AR_SVC, p.number)
    full = f"projects/{p.project_id}/locations/{location}/repositories/{rid}"
    r = w.repositories.get(full)
    visible = r is not None and r.ready_at <= w.now()
    ctx.require(permission, p, name, r.policy if visible else None)
    if not visible:
        raise errors.not_found("Requested entity was not found.")
    return r, p


def create_repository(ctx: Ctx, req: ar.CreateRepositoryRequest):
    ref, location = parts(req.parent, "projects", "locations")
    w = ctx.world
    p = ctx.project(ref, "artifactregistry.repositories.create", req.parent, AR_SVC)
    if location not in AR_LOCATIONS:
        raise errors.invalid_argument(f"Invalid location: {location}.", field="parent")
    rid = req.repository_id
    if not (REPO_ID_RE.match(rid) and len(rid) <= 63):
        raise errors.invalid_argument(f"Invalid repository id {rid!r}.", field="repository_id")
    fmt = ar.Repository.Format(req.repository.format_).name
    if fmt == "FORMAT_UNSPECIFIED":
        raise errors.invalid_argument("The repository format must be specified.", field="repository.format")
    name = f"projects/{p.project_id}/locations/{location}/repositories/{rid}"
    if name in w.repositories:
        raise errors.already_exists("the repository already exists")
    org_policy.check_location(w, p, location, "repository")
    err = w.operation_error("CreateRepository")
    if err is not None:
        op = w.new_operation(f"projects/{p.project_id}/locations/{location}/operations/{new_operation_id()}",
                             "create_repository", {"repository": name})
        op.error = err
        return operation_proto(w, op)
    op = w.new_operation(f"projects/{p.project_id}/locations/{location}/operations/{new_operation_id()}",
                         "create_repository", {"repository": name})
    w.repositories[name] = Repository(
        name=name, format=fmt, description=req.repository.description, created=time.time(),
        ready_at=op.done_at, policy=Policy(salt=name),
    )
    ctx.changed = True
    return operation_proto(w, op)


def get_repository(ctx: Ctx, req: ar.GetRepositoryRequest):
    r, _ = _repository(ctx, req.name, "artifactregistry.repositories.get")
    return _repo_proto(r)


def list_repositories(ctx: Ctx, req: ar.ListRepositoriesRequest):
    ref, location = parts(req.parent, "projects", "locations")
    w = ctx.world
    p = ctx.project(ref, "artifactregistry.repositories.list", req.parent, AR_SVC)
    prefix = f"projects/{p.project_id}/locations/{location}/repositories/"
    found = sorted((r for n, r in w.repositories.items() if n.startswith(prefix) and r.ready_at <= w.now()),
                   key=lambda r: r.name)
    return ar.ListRepositoriesResponse(repositories=[_repo_proto(r) for r in found])


def delete_repository(ctx: Ctx, req: ar.DeleteRepositoryRequest):
    r, p = _repository(ctx, req.name, "artifactregistry.repositories.delete")
    del ctx.world.repositories[r.name]
    ctx.changed = True
    location = r.name.split("/")[3]
    op = ctx.world.new_operation(f"projects/{p.project_id}/locations/{location}/operations/{new_operation_id()}",
                                 "delete_repository", {}, delay=0)
    return operation_proto(ctx.world, op)


def repo_get_policy(ctx: Ctx, req: iam_policy_pb2.GetIamPolicyRequest):
    r, _ = _repository(ctx, req.resource, "artifactregistry.repositories.getIamPolicy")
    return policy_to_proto(r.policy, req.options.requested_policy_version)


def repo_set_policy(ctx: Ctx, req: iam_policy_pb2.SetIamPolicyRequest):
    r, _ = _repository(ctx, req.resource, "artifactregistry.repositories.setIamPolicy")
    apply_policy(ctx, r.policy, req.policy, req.resource, req.update_mask.paths)
    return policy_to_proto(r.policy, 3)


def repo_test_permissions(ctx: Ctx, req: iam_policy_pb2.TestIamPermissionsRequest):
    ref, location, rid = parts(req.resource, "projects", "locations", "repositories")
    w = ctx.world
    p = w.project(ref)
    if p is None:
        raise errors.permission_denied("artifactregistry.repositories.get", req.resource)
    live(p, AR_SVC)
    if not w.service_enabled(p, AR_SVC, settled=True):
        raise errors.service_disabled(AR_SVC, p.number)
    r = w.repositories.get(f"projects/{p.project_id}/locations/{location}/repositories/{rid}")
    policy = r.policy if r is not None and r.ready_at <= w.now() else None
    return iam_policy_pb2.TestIamPermissionsResponse(
        permissions=test_permissions(ctx, list(req.permissions), p, policy)
    )


def _op_metadata(w, op) -> object:
    return ar.OperationMetadata.pb(ar.OperationMetadata())


def _op_response(w, op) -> object:
    if op.kind == "delete_repository":
        return empty_pb2.Empty()
    r = w.repositories.get(op.payload["repository"])
    return None if r is None else ar.Repository.pb(_repo_proto(r))


operations.register(("create_repository", "delete_repository"), _op_metadata, _op_response)

METHODS = [
    ("CreateRepository", create_repository, ar.CreateRepositoryRequest, True),
    ("GetRepository", get_repository, ar.GetRepositoryRequest, False),
    ("ListRepositories", list_repositories, ar.ListRepositoriesRequest, False),
    ("DeleteRepository", delete_repository, ar.DeleteRepositoryRequest, True),
    ("GetIamPolicy", repo_get_policy, iam_policy_pb2.GetIamPolicyRequest, False),
    ("SetIamPolicy", repo_set_policy, iam_policy_pb2.SetIamPolicyRequest, True),
    ("TestIamPermissions", repo_test_permissions, iam_policy_pb2.TestIamPermissionsRequest, False),
]
