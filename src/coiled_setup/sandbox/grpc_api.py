"""The Google APIs the product uses, served over gRPC with Google's method names and messages."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import grpc
from google.cloud.artifactregistry_v1 import types as ar
from google.cloud.iam_admin_v1 import types as iam
from google.cloud.resourcemanager_v3 import types as rm
from google.cloud.service_usage_v1 import types as su
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format, timestamp_pb2
from google.type import expr_pb2
from grpc_status import rpc_status

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.auth import caller_of
from coiled_setup.sandbox.errors import ApiError
from coiled_setup.sandbox.world import (
    ACCOUNT_ID_RE,
    AR_LOCATIONS,
    MAX_USER_KEYS,
    MEMBER_PREFIXES,
    PERMISSION_RE,
    REPO_ID_RE,
    ROLE_ID_RE,
    SA_DOMAIN,
    SERVICE_TITLES,
    Binding,
    Policy,
    Project,
    Repository,
    Role,
    ServiceAccount,
    World,
    new_operation_id,
)

IAM_SVC = "iam.googleapis.com"
CRM_SVC = "cloudresourcemanager.googleapis.com"
SU_SVC = "serviceusage.googleapis.com"
AR_SVC = "artifactregistry.googleapis.com"
BILLED_SERVICES = {AR_SVC, "compute.googleapis.com", "container.googleapis.com"}
MAX_POLICY_MEMBERS = 1500
MAX_TEST_PERMISSIONS = 100
FAR_FUTURE = 253402300799  # 9999-12-31T23:59:59Z, Google's "never expires"
FAULT_CODES = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED]


class Ctx:
    """One call: who made it, and whether it changed anything."""

    def __init__(self, world: World, caller: str):
        self.world = world
        self.caller = caller
        self.changed = False

    def project(self, ref: str, permission: str, resource: str, service: str) -> Project:
        """The project, after the checks Google makes: exists, live, API enabled, permission held."""
        w = self.world
        p = w.project(ref)
        if p is None:
            raise errors.permission_denied(permission, resource)
        if permission != "resourcemanager.projects.get":
            live(p, service)
        if service != CRM_SVC and not w.service_enabled(p, service, settled=True):
            raise errors.service_disabled(service, p.number)
        self.require(permission, p, resource)
        return p

    def require(self, permission: str, p: Project, resource: str, policy: Policy | None = None) -> None:
        if not self.world.holds(self.caller, permission, p, policy):
            raise errors.permission_denied(permission, resource)


def live(p: Project, service: str) -> None:
    """Refuses a call about a project that is pending deletion, as every API but GetProject does."""
    if p.state != "ACTIVE":
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"Project {p.project_id} has been scheduled for deletion.",
            reason="CONSUMER_INVALID",
            metadata={"consumer": f"projects/{p.number}", "service": service},
        )


def _ts(wall: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromSeconds(int(wall))
    return t


def _parts(name: str, *labels: str) -> list[str]:
    """Values of `label/value/...` names, e.g. projects/p/roles/r -> [p, r]."""
    bits = name.split("/")
    if len(bits) != 2 * len(labels) or any(bits[2 * i] != lab for i, lab in enumerate(labels)):
        raise errors.invalid_argument(f"Invalid resource name: {name!r}.", field="name")
    return [bits[2 * i + 1] for i in range(len(labels))]


def _page_start(token: str) -> int:
    """The offset a page token of ours stands for; INVALID_ARGUMENT for any other token."""
    if not token:
        return 0
    if not token.isdigit():
        raise errors.invalid_argument(f"Invalid page token {token!r}.", field="page_token")
    return int(token)


# -- policies, shared by projects and repositories --------------------------------------------


def policy_to_proto(p: Policy, requested_version: int) -> policy_pb2.Policy:
    if requested_version not in (0, 1, 3):
        raise errors.invalid_argument(
            f"Invalid requested policy version {requested_version}: use 0, 1 or 3.",
            field="options.requested_policy_version",
        )
    conditional = any(b.condition for b in p.bindings)
    # A policy without conditions is version 1, whatever version was asked for or last written.
    version = 3 if (conditional and requested_version >= 3) else 1
    out = policy_pb2.Policy(version=version, etag=p.etag)
    for b in p.bindings:
        pb = out.bindings.add(role=b.role, members=b.members)
        if b.condition:
            if requested_version >= 3:
                pb.condition.CopyFrom(expr_pb2.Expr(**b.condition))
            else:
                # As Google does for a version-1 read of a conditional policy.
                # A stable suffix (Python's hash() changes from one process to the next).
                digest = hashlib.sha1(repr(b.key()).encode()).hexdigest()[:20]
                pb.role = f"{b.role}_withcond_{digest}"
    for a in p.audit_configs:
        json_format.ParseDict(a, out.audit_configs.add())
    return out


def apply_policy(ctx: Ctx, current: Policy, new: policy_pb2.Policy, resource: str, mask=()) -> None:
    w = ctx.world
    bindings: list[Binding] = []
    conditional = False
    for b in new.bindings:
        if "_withcond_" in b.role:
            raise errors.invalid_argument(
                f"Role {b.role} is not a valid role; a policy read at version 1 cannot be written "
                "back with conditions. Read it with requested_policy_version 3.",
                field="policy.bindings.role",
            )
        if not w.role_exists(b.role):
            raise errors.invalid_argument(
                f"Role ({b.role}) does not exist in the resource's hierarchy.", field="policy.bindings.role"
            )
        if not b.members:
            continue
        for m in b.members:
            if not (m in ("allUsers", "allAuthenticatedUsers") or m.startswith(MEMBER_PREFIXES)):
                raise errors.invalid_argument(f"Invalid member {m!r}.", field="policy.bindings.members")
        cond = None
        if b.HasField("condition"):
            conditional = True
            cond = {"expression": b.condition.expression}
            if b.condition.title:
                cond["title"] = b.condition.title
            if b.condition.description:
                cond["description"] = b.condition.description
        bindings.append(Binding(role=b.role, members=list(dict.fromkeys(b.members)), condition=cond))
    if conditional and new.version < 3:
        raise errors.invalid_argument(
            "Can't set conditional policy without setting policy version 3.", field="policy.version"
        )
    # A deleted custom role's existing bindings may be written back, inactive; nobody may be newly bound to it.
    had = {b.key() + (m,) for b in current.bindings for m in b.members}
    for b in bindings:
        r = w.roles.get(b.role)
        if r is not None and r.deleted and any(b.key() + (m,) not in had for m in b.members):
            raise errors.invalid_argument(
                f"Role ({b.role}) does not exist in the resource's hierarchy.", field="policy.bindings.role"
            )
    members = sum(len(b.members) for b in bindings)
    if members > MAX_POLICY_MEMBERS:
        # Every appearance of a principal in a binding counts (Google's IAM quotas page).
        raise errors.invalid_argument(
            f"The number of members in the policy ({members:,}) is larger than the maximum allowed size "
            f"{MAX_POLICY_MEMBERS:,}.", field="policy.bindings"
        )
    if new.etag and new.etag != current.etag:
        raise errors.aborted(
            "There were concurrent policy changes. Please retry the whole read-modify-write with "
            "exponential backoff."
        )
    now = w.now()
    for b in bindings:
        for m in b.members:
            if m.startswith("serviceAccount:") and m.endswith("." + SA_DOMAIN):
                email = m.split(":", 1)[1]
                owner = email.split("@", 1)[1].split(".", 1)[0]
                sa = w.accounts.get(email)
                fresh = sa is not None and w.account_age(sa) < w.config.propagation_delay_s
                if owner in w.projects and (sa is None or fresh):
                    raise errors.invalid_argument(
                        f"Service account {email} does not exist.", field="policy.bindings.members"
                    )
    version = max(new.version or 1, 3 if conditional else 1)
    current.replace(version, bindings, now, w.config.propagation_delay_s)
    # Without a mask Google writes "bindings, etag" only: audit configs are kept unless named.
    if {"audit_configs", "auditConfigs"} & set(mask):
        current.audit_configs = [json_format.MessageToDict(a, preserving_proto_field_name=True)
                                 for a in new.audit_configs]
    ctx.changed = True


def test_permissions(ctx: Ctx, permissions, p: Project, policy: Policy | None) -> list[str]:
    if len(permissions) > MAX_TEST_PERMISSIONS:
        raise errors.invalid_argument(
            f"Permissions list size {len(permissions)} exceeds the maximum of {MAX_TEST_PERMISSIONS}.",
            field="permissions",
        )
    for perm in permissions:
        if not PERMISSION_RE.match(perm):
            raise errors.invalid_argument(f"Permission {perm} is not valid.", field="permissions")
    return [perm for perm in permissions if ctx.world.holds(ctx.caller, perm, p, policy)]


# -- IAM admin -------------------------------------------------------------------------------


def _sa_proto(sa: ServiceAccount) -> iam.ServiceAccount:
    return iam.ServiceAccount(
        name=sa.name,
        project_id=sa.project_id,
        unique_id=sa.unique_id,
        email=sa.email,
        display_name=sa.display_name,
        description=sa.description,
        oauth2_client_id=sa.unique_id,
        disabled=sa.disabled,
        etag=b"MDEwMjE5MjA=",
    )


def _account(ctx: Ctx, name: str, permission: str, *, visible_only: bool = True) -> tuple[ServiceAccount, Project]:
    """The account a name points to, after the project checks; NOT_FOUND while it propagates."""
    w = ctx.world
    bits = name.split("/")
    if len(bits) < 4 or bits[0] != "projects" or bits[2] != "serviceAccounts":
        raise errors.invalid_argument(f"Invalid service account name: {name!r}.", field="name")
    ref = bits[3]
    sa = w.account(ref)
    owner = sa.project_id if sa else (ref.split("@", 1)[1].split(".", 1)[0] if "@" in ref else bits[1])
    p = ctx.project(owner, permission, f"projects/{owner}/serviceAccounts/{ref}", IAM_SVC)
    if sa is None or (visible_only and w.account_age(sa) < w.config.propagation_delay_s / 2):
        raise errors.not_found(f"Unknown service account: projects/{bits[1]}/serviceAccounts/{ref}")
    return sa, p


def create_service_account(ctx: Ctx, req: iam.CreateServiceAccountRequest):
    (ref,) = _parts(req.name, "projects")
    p = ctx.project(ref, "iam.serviceAccounts.create", f"projects/{ref}", IAM_SVC)
    aid = req.account_id
    if not (6 <= len(aid) <= 30 and ACCOUNT_ID_RE.match(aid)):
        raise errors.invalid_argument(
            f'Invalid value for field "accountId": "{aid}". The accountId must be between 6 and 30 '
            "characters long, and match the regular expression `[a-z]([-a-z0-9]*[a-z0-9])`.",
            field="account_id",
        )
    if len(req.service_account.display_name.encode()) > 100:
        raise errors.invalid_argument("The display name must be at most 100 bytes long.",
                                      field="service_account.display_name")
    if len(req.service_account.description.encode()) > 256:
        raise errors.invalid_argument("The description must be at most 256 bytes long.",
                                      field="service_account.description")
    email = f"{aid}@{p.project_id}.{SA_DOMAIN}"
    if email in ctx.world.accounts:
        raise errors.already_exists(f"Service account {aid} already exists within project projects/{p.project_id}.")
    sa = ctx.world.add_account(
        p.project_id,
        aid,
        display_name=req.service_account.display_name,
        description=req.service_account.description,
        settled=False,
    )
    ctx.changed = True
    return _sa_proto(sa)


def get_service_account(ctx: Ctx, req: iam.GetServiceAccountRequest):
    sa, _ = _account(ctx, req.name, "iam.serviceAccounts.get")
    return _sa_proto(sa)


def list_service_accounts(ctx: Ctx, req: iam.ListServiceAccountsRequest):
    (ref,) = _parts(req.name, "projects")
    p = ctx.project(ref, "iam.serviceAccounts.list", f"projects/{ref}", IAM_SVC)
    w = ctx.world
    found = sorted(
        (sa for sa in w.accounts.values()
         if sa.project_id == p.project_id and w.account_age(sa) >= w.config.propagation_delay_s / 2),
        key=lambda sa: sa.email,
    )
    start = _page_start(req.page_token)
    # Google's page size: 20 by default, at most 100.
    size = min(req.page_size or 20, 100)
    page = found[start:start + size]
    nxt = str(start + size) if start + size < len(found) else ""
    return iam.ListServiceAccountsResponse(accounts=[_sa_proto(sa) for sa in page], next_page_token=nxt)


def delete_service_account(ctx: Ctx, req: iam.DeleteServiceAccountRequest):
    sa, _ = _account(ctx, req.name, "iam.serviceAccounts.delete", visible_only=False)
    w = ctx.world
    del w.accounts[sa.email]
    for kid in [k.key_id for k in w.keys.values() if k.email == sa.email]:
        del w.keys[kid]
    # Google keeps the account's bindings under a tombstone name: a new account with the same
    # email does not inherit them.
    tomb = f"deleted:serviceAccount:{sa.email}?uid={sa.unique_id}"
    for policy in [p.policy for p in w.projects.values()] + [r.policy for r in w.repositories.values()]:
        policy.rename_member(f"serviceAccount:{sa.email}", tomb)
    ctx.changed = True
    return empty_pb2.Empty()


def _set_disabled(ctx: Ctx, name: str, disabled: bool):
    verb = "disable" if disabled else "enable"
    sa, _ = _account(ctx, name, f"iam.serviceAccounts.{verb}", visible_only=False)
    if sa.disabled != disabled:
        sa.disabled = disabled
        ctx.changed = True
    return empty_pb2.Empty()


def _key_proto(k, *, public: bool = False) -> iam.ServiceAccountKey:
    sa = k.email
    project = sa.split("@", 1)[1].split(".", 1)[0]
    return iam.ServiceAccountKey(
        name=f"projects/{project}/serviceAccounts/{sa}/keys/{k.key_id}",
        key_algorithm=iam.ServiceAccountKeyAlgorithm.KEY_ALG_RSA_2048,
        public_key_data=k.public_pem if public else b"",
        valid_after_time=_ts(k.created),
        valid_before_time=_ts(FAR_FUTURE if k.key_type == "USER_MANAGED" else k.created + 14 * 86400),
        key_origin=iam.ServiceAccountKeyOrigin.GOOGLE_PROVIDED,
        key_type=getattr(iam.ListServiceAccountKeysRequest.KeyType, k.key_type),
        disabled=k.disabled,
    )


def create_key(ctx: Ctx, req: iam.CreateServiceAccountKeyRequest):
    sa, p = _account(ctx, req.name, "iam.serviceAccountKeys.create")
    if p.key_creation_disabled:
        msg = "Key creation is not allowed on this service account."
        raise errors.failed_precondition(
            msg,
            # The subject names the account, then the constraint's config value (the email, URL-encoded).
            violations=[("constraints/iam.disableServiceAccountKeyCreation",
                         f"projects/{p.project_id}/serviceAccounts/{sa.email}?configvalue="
                         f"{sa.email.replace('@', '%40')}", msg)],
        )
    if len(ctx.world.user_keys(sa.email)) >= MAX_USER_KEYS:
        raise errors.failed_precondition("Precondition check failed.")
    key, keyfile = ctx.world.issue_key(sa)
    ctx.changed = True
    out = _key_proto(key)
    out.private_key_type = iam.ServiceAccountPrivateKeyType.TYPE_GOOGLE_CREDENTIALS_FILE
    out.private_key_data = json.dumps(keyfile, indent=2).encode()
    return out


def list_keys(ctx: Ctx, req: iam.ListServiceAccountKeysRequest):
    sa, _ = _account(ctx, req.name, "iam.serviceAccountKeys.list")
    wanted = {iam.ListServiceAccountKeysRequest.KeyType(t).name for t in req.key_types}
    keys = [k for k in ctx.world.keys.values() if k.email == sa.email and (not wanted or k.key_type in wanted)]
    keys.sort(key=lambda k: (k.created, k.key_id))
    return iam.ListServiceAccountKeysResponse(keys=[_key_proto(k) for k in keys])


def _key(ctx: Ctx, name: str, permission: str):
    sa_name, sep, kid = name.rpartition("/keys/")
    if not sep:
        raise errors.invalid_argument(f"Invalid key name: {name!r}.", field="name")
    sa, _ = _account(ctx, sa_name, permission, visible_only=False)
    k = ctx.world.keys.get(kid)
    if k is None or k.email != sa.email:
        raise errors.not_found(f"Service account key {kid} does not exist.")
    return k


def get_key(ctx: Ctx, req: iam.GetServiceAccountKeyRequest):
    k = _key(ctx, req.name, "iam.serviceAccountKeys.get")
    return _key_proto(k, public=bool(req.public_key_type))


def delete_key(ctx: Ctx, req: iam.DeleteServiceAccountKeyRequest):
    k = _key(ctx, req.name, "iam.serviceAccountKeys.delete")
    if k.key_type != "USER_MANAGED":
        raise errors.failed_precondition("System-managed keys cannot be deleted.")
    del ctx.world.keys[k.key_id]
    ctx.changed = True
    return empty_pb2.Empty()


def _set_key_disabled(ctx: Ctx, name: str, disabled: bool):
    verb = "disable" if disabled else "enable"
    k = _key(ctx, name, f"iam.serviceAccountKeys.{verb}")
    if k.disabled != disabled:
        k.disabled = disabled
        ctx.changed = True
    return empty_pb2.Empty()


def _role_proto(r: Role, full: bool = True) -> iam.Role:
    return iam.Role(
        name=r.name,
        title=r.title,
        description=r.description,
        included_permissions=r.permissions if full else [],
        stage=getattr(iam.Role.RoleLaunchStage, r.stage),
        etag=r.etag,
        deleted=r.deleted,
    )


def _check_permissions(perms) -> list[str]:
    from coiled_setup.sandbox.catalogue import valid_in_project_role

    for perm in perms:
        # Google names the first offending permission, whether it does not exist or is organisation-level only.
        if not PERMISSION_RE.match(perm) or not valid_in_project_role(perm):
            raise errors.invalid_argument(f"Permission {perm} is not valid.", field="role.included_permissions")
    return list(dict.fromkeys(perms))


def create_role(ctx: Ctx, req: iam.CreateRoleRequest):
    (ref,) = _parts(req.parent, "projects")
    p = ctx.project(ref, "iam.roles.create", f"projects/{ref}", IAM_SVC)
    rid = req.role_id
    if not ROLE_ID_RE.match(rid):
        raise errors.invalid_argument(
            f"The role id {rid!r} is invalid: use 3 to 64 letters, digits, underscores or periods.",
            field="role_id",
        )
    name = f"projects/{p.project_id}/roles/{rid}"
    existing = ctx.world.roles.get(name)
    if existing is not None and (existing.deleted or existing.purged):
        raise errors.failed_precondition(f"You can't create a role_id ({rid}) which has been marked for deletion.")
    if existing is not None:
        raise errors.already_exists(f"A role named {rid} in projects/{p.project_id} already exists.")
    r = Role(
        name=name,
        title=req.role.title,
        description=req.role.description,
        permissions=_check_permissions(req.role.included_permissions),
        stage=iam.Role.RoleLaunchStage(req.role.stage).name,
    )
    ctx.world.roles[name] = r
    ctx.changed = True
    return _role_proto(r)


def _custom_role(ctx: Ctx, name: str, permission: str) -> Role:
    ref, rid = _parts(name, "projects", "roles")
    if not ROLE_ID_RE.match(rid):
        raise errors.invalid_argument(f"The role name {name} is invalid.", field="name")
    p = ctx.project(ref, permission, name, IAM_SVC)
    r = ctx.world.roles.get(f"projects/{p.project_id}/roles/{rid}")
    if r is None or r.purged:
        raise errors.not_found(f"The role named {name} was not found.")
    return r


def get_role(ctx: Ctx, req: iam.GetRoleRequest):
    if req.name.startswith("roles/"):
        from coiled_setup.sandbox.roles import PREDEFINED_ROLES

        if req.name not in PREDEFINED_ROLES:
            raise errors.not_found(f"The role named {req.name} was not found.")
        return iam.Role(name=req.name, title=req.name[6:], included_permissions=[
            x for x in PREDEFINED_ROLES[req.name] if "*" not in x], stage=iam.Role.RoleLaunchStage.GA)
    return _role_proto(_custom_role(ctx, req.name, "iam.roles.get"))


def list_roles(ctx: Ctx, req: iam.ListRolesRequest):
    (ref,) = _parts(req.parent, "projects")
    p = ctx.project(ref, "iam.roles.list", f"projects/{ref}", IAM_SVC)
    prefix = f"projects/{p.project_id}/roles/"
    found = sorted(
        (r for n, r in ctx.world.roles.items()
         if n.startswith(prefix) and not r.purged and (req.show_deleted or not r.deleted)),
        key=lambda r: r.name,
    )
    full = req.view == iam.RoleView.FULL
    start = _page_start(req.page_token)
    size = req.page_size or 300
    nxt = str(start + size) if start + size < len(found) else ""
    return iam.ListRolesResponse(roles=[_role_proto(r, full) for r in found[start:start + size]], next_page_token=nxt)


def update_role(ctx: Ctx, req: iam.UpdateRoleRequest):
    r = _custom_role(ctx, req.name, "iam.roles.update")
    if r.deleted:
        raise errors.failed_precondition(f"You can't update role {req.name}: it is marked for deletion.")
    if req.role.etag and req.role.etag != r.etag:
        raise errors.aborted("There were concurrent changes to the role. Read it again and retry.")
    paths = list(req.update_mask.paths) or ["title", "description", "included_permissions", "stage"]
    for path in paths:
        if path == "title":
            r.title = req.role.title
        elif path == "description":
            r.description = req.role.description
        elif path in ("included_permissions", "includedPermissions"):
            r.permissions = _check_permissions(req.role.included_permissions)
        elif path == "stage":
            r.stage = iam.Role.RoleLaunchStage(req.role.stage).name
        else:
            raise errors.invalid_argument(f"Invalid update mask path {path!r}.", field="update_mask")
    r.counter += 1
    ctx.changed = True
    return _role_proto(r)


def delete_role(ctx: Ctx, req: iam.DeleteRoleRequest):
    r = _custom_role(ctx, req.name, "iam.roles.delete")
    if r.deleted:
        rid = r.name.rsplit("/", 1)[1]
        raise errors.failed_precondition(f"You can't delete role_id ({rid}) as it is already marked for deletion.")
    if req.etag and req.etag != r.etag:
        raise errors.aborted("There were concurrent changes to the role. Read it again and retry.")
    r.deleted = True
    r.counter += 1
    ctx.changed = True
    return _role_proto(r)


def undelete_role(ctx: Ctx, req: iam.UndeleteRoleRequest):
    r = _custom_role(ctx, req.name, "iam.roles.undelete")
    if not r.deleted:
        rid = r.name.rsplit("/", 1)[1]
        raise errors.failed_precondition(f"You can't undelete role_id ({rid}) as it is not marked for deletion.")
    r.deleted = False
    r.counter += 1
    ctx.changed = True
    return _role_proto(r)


# -- Resource Manager ---------------------------------------------------------------------------


def get_project(ctx: Ctx, req: rm.GetProjectRequest):
    (ref,) = _parts(req.name, "projects")
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
    (ref,) = _parts(req.resource, "projects")
    p = ctx.project(ref, "resourcemanager.projects.getIamPolicy", f"projects/{ref}", CRM_SVC)
    return policy_to_proto(p.policy, req.options.requested_policy_version)


def project_set_policy(ctx: Ctx, req: iam_policy_pb2.SetIamPolicyRequest):
    (ref,) = _parts(req.resource, "projects")
    p = ctx.project(ref, "resourcemanager.projects.setIamPolicy", f"projects/{ref}", CRM_SVC)
    apply_policy(ctx, p.policy, req.policy, req.resource, req.update_mask.paths)
    return policy_to_proto(p.policy, 3)


def project_test_permissions(ctx: Ctx, req: iam_policy_pb2.TestIamPermissionsRequest):
    (ref,) = _parts(req.resource, "projects")
    p = ctx.world.project(ref)
    if p is None:
        raise errors.permission_denied("resourcemanager.projects.get", req.resource)
    live(p, CRM_SVC)
    return iam_policy_pb2.TestIamPermissionsResponse(
        permissions=test_permissions(ctx, list(req.permissions), p, None)
    )


# -- Service Usage ---------------------------------------------------------------------------------


def _service_proto(p: Project, name: str, enabled: bool) -> su.Service:
    return su.Service(
        name=f"projects/{p.number}/services/{name}",
        parent=f"projects/{p.number}",
        config=su.ServiceConfig(name=name, title=SERVICE_TITLES.get(name, name)),
        state=su.State.ENABLED if enabled else su.State.DISABLED,
    )


def get_service(ctx: Ctx, req: su.GetServiceRequest):
    ref, name = _parts(req.name, "projects", "services")
    p = ctx.project(ref, "serviceusage.services.get", req.name, SU_SVC)
    return _service_proto(p, name, ctx.world.service_enabled(p, name))


def _enable(ctx: Ctx, p: Project, names: list[str]):
    w = ctx.world
    if not p.billing:
        needing = [n for n in names if n in BILLED_SERVICES and not w.service_enabled(p, n)]
        if needing:
            svc = ",".join(needing)
            raise errors.failed_precondition(
                f"Billing account for project '{p.number}' is not found. Billing must be enabled for "
                f"activation of service(s) '{svc}' to proceed.",
                reason="UREQ_PROJECT_BILLING_NOT_FOUND",
                domain="serviceusage.googleapis.com/billing-enabled",
                metadata={"project": p.number, "services": svc},
                violations=[("googleapis.com/billing-enabled",
                             f"?error_code=390001&project={p.number}"
                             + "".join(f"&services={n}" for n in needing), "")],
            )
    pending = [n for n in names if n not in p.services]
    done_at = w.now() + w.config.operation_s
    for n in pending:
        p.services[n] = done_at
    if pending:
        ctx.changed = True
    ready = max([p.services[n] for n in names] + [w.now()])
    return pending, ready


def _enable_operation_name(w: World, p: Project, ready: float) -> str:
    """Google's shared no-op name only when everything asked for is already enabled; an enable
    still under way (even one started by an earlier call) gets an operation of its own."""
    if ready <= w.now():
        return "operations/noop.DONE_OPERATION"
    return f"operations/acf.p2-{p.number}-{new_operation_id()}"


def _failed_operation(ctx: Ctx, p: Project, method: str, kind: str, names: list[str]):
    """An operation that ends in the scenario's error, having enabled nothing."""
    err = ctx.world.operation_error(method)
    if err is None:
        return None
    op = ctx.world.new_operation(f"operations/acf.p2-{p.number}-{new_operation_id()}", kind,
                                 {"project": p.project_id, "services": names})
    op.error = err
    return _operation_proto(ctx.world, op)


def enable_service(ctx: Ctx, req: su.EnableServiceRequest):
    ref, name = _parts(req.name, "projects", "services")
    p = ctx.project(ref, "serviceusage.services.enable", req.name, SU_SVC)
    failed = _failed_operation(ctx, p, "EnableService", "enable", [name])
    if failed is not None:
        return failed
    _, ready = _enable(ctx, p, [name])
    op_name = _enable_operation_name(ctx.world, p, ready)
    op = ctx.world.new_operation(op_name, "enable", {"project": p.project_id, "services": [name]},
                                 delay=ready - ctx.world.now())
    return _operation_proto(ctx.world, op)


def batch_enable(ctx: Ctx, req: su.BatchEnableServicesRequest):
    (ref,) = _parts(req.parent, "projects")
    p = ctx.project(ref, "serviceusage.services.enable", req.parent, SU_SVC)
    names = list(req.service_ids)
    if not names or len(names) > 20:
        raise errors.invalid_argument("Between 1 and 20 service ids are allowed in one batch.", field="service_ids")
    failed = _failed_operation(ctx, p, "BatchEnableServices", "batch_enable", names)
    if failed is not None:
        return failed
    _, ready = _enable(ctx, p, names)
    op_name = _enable_operation_name(ctx.world, p, ready)
    op = ctx.world.new_operation(op_name, "batch_enable", {"project": p.project_id, "services": names},
                                 delay=ready - ctx.world.now())
    return _operation_proto(ctx.world, op)


def disable_service(ctx: Ctx, req: su.DisableServiceRequest):
    ref, name = _parts(req.name, "projects", "services")
    p = ctx.project(ref, "serviceusage.services.disable", req.name, SU_SVC)
    if p.services.pop(name, None) is not None:
        ctx.changed = True
    op = ctx.world.new_operation(f"operations/acf.p2-{p.number}-{new_operation_id()}", "disable",
                                 {"project": p.project_id, "services": [name]}, delay=0)
    return _operation_proto(ctx.world, op)


# -- Artifact Registry -------------------------------------------------------------------------------


def _repo_proto(r: Repository) -> ar.Repository:
    _, project, _, location, _, rid = r.name.split("/")
    return ar.Repository(
        name=r.name,
        format_=getattr(ar.Repository.Format, r.format),
        description=r.description,
        create_time=_ts(r.created),
        update_time=_ts(r.created),
        mode=ar.Repository.Mode.STANDARD_REPOSITORY,
        registry_uri=f"{location}-docker.pkg.dev/{project}/{rid}",
    )


def _repository(ctx: Ctx, name: str, permission: str) -> tuple[Repository, Project]:
    ref, location, rid = _parts(name, "projects", "locations", "repositories")
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
    ref, location = _parts(req.parent, "projects", "locations")
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
    err = w.operation_error("CreateRepository")
    if err is not None:
        op = w.new_operation(f"projects/{p.project_id}/locations/{location}/operations/{new_operation_id()}",
                             "create_repository", {"repository": name})
        op.error = err
        return _operation_proto(w, op)
    op = w.new_operation(f"projects/{p.project_id}/locations/{location}/operations/{new_operation_id()}",
                         "create_repository", {"repository": name})
    w.repositories[name] = Repository(
        name=name, format=fmt, description=req.repository.description, created=time.time(),
        ready_at=op.done_at, policy=Policy(salt=name),
    )
    ctx.changed = True
    return _operation_proto(w, op)


def get_repository(ctx: Ctx, req: ar.GetRepositoryRequest):
    r, _ = _repository(ctx, req.name, "artifactregistry.repositories.get")
    return _repo_proto(r)


def list_repositories(ctx: Ctx, req: ar.ListRepositoriesRequest):
    ref, location = _parts(req.parent, "projects", "locations")
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
    return _operation_proto(ctx.world, op)


def repo_get_policy(ctx: Ctx, req: iam_policy_pb2.GetIamPolicyRequest):
    r, _ = _repository(ctx, req.resource, "artifactregistry.repositories.getIamPolicy")
    return policy_to_proto(r.policy, req.options.requested_policy_version)


def repo_set_policy(ctx: Ctx, req: iam_policy_pb2.SetIamPolicyRequest):
    r, _ = _repository(ctx, req.resource, "artifactregistry.repositories.setIamPolicy")
    apply_policy(ctx, r.policy, req.policy, req.resource, req.update_mask.paths)
    return policy_to_proto(r.policy, 3)


def repo_test_permissions(ctx: Ctx, req: iam_policy_pb2.TestIamPermissionsRequest):
    ref, location, rid = _parts(req.resource, "projects", "locations", "repositories")
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


# -- long-running operations -------------------------------------------------------------------------


def _operation_proto(w: World, op) -> operations_pb2.Operation:
    out = operations_pb2.Operation(name=op.name)
    done = w.now() >= op.done_at
    if op.kind in ("enable", "batch_enable", "disable"):
        names = [f"services/{n}" for n in op.payload.get("services", [])]
        out.metadata.Pack(su.OperationMetadata.pb(su.OperationMetadata(resource_names=names)))
    else:
        out.metadata.Pack(ar.OperationMetadata.pb(ar.OperationMetadata()))
    if not done:
        return out
    out.done = True
    if op.error is not None:
        out.error.CopyFrom(op.error.status())
        return out
    if op.kind in ("enable", "batch_enable", "disable"):
        p = w.projects[op.payload["project"]]
        services = [_service_proto(p, n, w.service_enabled(p, n)) for n in op.payload["services"]]
        if op.kind == "enable":
            out.response.Pack(su.EnableServiceResponse.pb(su.EnableServiceResponse(service=services[0])))
        elif op.kind == "batch_enable":
            out.response.Pack(su.BatchEnableServicesResponse.pb(su.BatchEnableServicesResponse(services=services)))
        else:
            out.response.Pack(su.DisableServiceResponse.pb(su.DisableServiceResponse(service=services[0])))
    elif op.kind == "create_repository":
        r = w.repositories.get(op.payload["repository"])
        if r is not None:
            out.response.Pack(ar.Repository.pb(_repo_proto(r)))
    else:
        out.response.Pack(empty_pb2.Empty())
    return out


def get_operation(ctx: Ctx, req: operations_pb2.GetOperationRequest):
    op = ctx.world.operations.get(req.name)
    if op is None:
        raise errors.not_found(f"Operation {req.name} not found.")
    return _operation_proto(ctx.world, op)


# -- wiring ------------------------------------------------------------------------------------------------

IAM_PATH = "google.iam.admin.v1.IAM"
CRM_PATH = "google.cloud.resourcemanager.v3.Projects"
SU_PATH = "google.api.serviceusage.v1.ServiceUsage"
AR_PATH = "google.devtools.artifactregistry.v1.ArtifactRegistry"
OPS_PATH = "google.longrunning.Operations"


# (service path, method, handler, request class, writes?)
METHODS: list[tuple[str, str, Callable, type, bool]] = [
    (IAM_PATH, "CreateServiceAccount", create_service_account, iam.CreateServiceAccountRequest, True),
    (IAM_PATH, "GetServiceAccount", get_service_account, iam.GetServiceAccountRequest, False),
    (IAM_PATH, "ListServiceAccounts", list_service_accounts, iam.ListServiceAccountsRequest, False),
    (IAM_PATH, "DeleteServiceAccount", delete_service_account, iam.DeleteServiceAccountRequest, True),
    (IAM_PATH, "EnableServiceAccount", lambda c, r: _set_disabled(c, r.name, False),
     iam.EnableServiceAccountRequest, True),
    (IAM_PATH, "DisableServiceAccount", lambda c, r: _set_disabled(c, r.name, True),
     iam.DisableServiceAccountRequest, True),
    (IAM_PATH, "CreateServiceAccountKey", create_key, iam.CreateServiceAccountKeyRequest, True),
    (IAM_PATH, "ListServiceAccountKeys", list_keys, iam.ListServiceAccountKeysRequest, False),
    (IAM_PATH, "GetServiceAccountKey", get_key, iam.GetServiceAccountKeyRequest, False),
    (IAM_PATH, "DeleteServiceAccountKey", delete_key, iam.DeleteServiceAccountKeyRequest, True),
    (IAM_PATH, "DisableServiceAccountKey", lambda c, r: _set_key_disabled(c, r.name, True),
     iam.DisableServiceAccountKeyRequest, True),
    (IAM_PATH, "EnableServiceAccountKey", lambda c, r: _set_key_disabled(c, r.name, False),
     iam.EnableServiceAccountKeyRequest, True),
    (IAM_PATH, "CreateRole", create_role, iam.CreateRoleRequest, True),
    (IAM_PATH, "GetRole", get_role, iam.GetRoleRequest, False),
    (IAM_PATH, "ListRoles", list_roles, iam.ListRolesRequest, False),
    (IAM_PATH, "UpdateRole", update_role, iam.UpdateRoleRequest, True),
    (IAM_PATH, "DeleteRole", delete_role, iam.DeleteRoleRequest, True),
    (IAM_PATH, "UndeleteRole", undelete_role, iam.UndeleteRoleRequest, True),
    (CRM_PATH, "GetProject", get_project, rm.GetProjectRequest, False),
    (CRM_PATH, "GetIamPolicy", project_get_policy, iam_policy_pb2.GetIamPolicyRequest, False),
    (CRM_PATH, "SetIamPolicy", project_set_policy, iam_policy_pb2.SetIamPolicyRequest, True),
    (CRM_PATH, "TestIamPermissions", project_test_permissions, iam_policy_pb2.TestIamPermissionsRequest, False),
    (SU_PATH, "GetService", get_service, su.GetServiceRequest, False),
    (SU_PATH, "EnableService", enable_service, su.EnableServiceRequest, True),
    (SU_PATH, "BatchEnableServices", batch_enable, su.BatchEnableServicesRequest, True),
    (SU_PATH, "DisableService", disable_service, su.DisableServiceRequest, True),
    (AR_PATH, "CreateRepository", create_repository, ar.CreateRepositoryRequest, True),
    (AR_PATH, "GetRepository", get_repository, ar.GetRepositoryRequest, False),
    (AR_PATH, "ListRepositories", list_repositories, ar.ListRepositoriesRequest, False),
    (AR_PATH, "DeleteRepository", delete_repository, ar.DeleteRepositoryRequest, True),
    (AR_PATH, "GetIamPolicy", repo_get_policy, iam_policy_pb2.GetIamPolicyRequest, False),
    (AR_PATH, "SetIamPolicy", repo_set_policy, iam_policy_pb2.SetIamPolicyRequest, True),
    (AR_PATH, "TestIamPermissions", repo_test_permissions, iam_policy_pb2.TestIamPermissionsRequest, False),
    (OPS_PATH, "GetOperation", get_operation, operations_pb2.GetOperationRequest, False),
]

API_HOSTS = {"iam": IAM_SVC, "resourcemanager": CRM_SVC, "serviceusage": SU_SVC,
             "artifactregistry": AR_SVC, "operations": SU_SVC}
SERVICE_NAMES = {IAM_PATH: "iam", CRM_PATH: "resourcemanager", SU_PATH: "serviceusage",
                 AR_PATH: "artifactregistry", OPS_PATH: "operations"}


def _resource_of(req) -> str:
    for attr in ("name", "parent", "resource"):
        v = getattr(req, attr, None)
        if isinstance(v, str) and v:
            return v
    return ""


def _serialize(resp) -> bytes:
    if hasattr(resp, "SerializeToString"):
        return resp.SerializeToString()
    return type(resp).serialize(resp)


def build_handlers(world: World) -> list[grpc.GenericRpcHandler]:
    by_service: dict[str, dict] = {}
    for path, method, fn, req_cls, writes in METHODS:
        deser = req_cls.FromString if hasattr(req_cls, "FromString") else req_cls.deserialize
        behaviour = grpc.unary_unary_rpc_method_handler(
            _wrap(world, SERVICE_NAMES[path], method, fn, writes),
            request_deserializer=deser,
            response_serializer=_serialize,
        )
        by_service.setdefault(path, {})[method] = behaviour
    return [grpc.method_handlers_generic_handler(p, m) for p, m in by_service.items()]


def _wrap(world: World, service: str, method: str, fn: Callable, writes: bool):
    def handle(request, context: grpc.ServicerContext):
        cfg = world.config
        if cfg.latency_ms:
            time.sleep(cfg.latency_ms / 1000.0)
        fault = None
        if world.faults(method):
            fault = world.pick(FAULT_CODES)
        caller = None
        ctx = None
        code = "OK"
        try:
            if fault == grpc.StatusCode.UNAVAILABLE:
                raise ApiError(fault, "The service is currently unavailable.")
            if fault == grpc.StatusCode.RESOURCE_EXHAUSTED:
                host = API_HOSTS[service]
                raise ApiError(
                    fault,
                    f"Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of "
                    f"service '{host}'.",
                    reason="RATE_LIMIT_EXCEEDED",
                    metadata={"service": host, "quota_metric": f"{host}/default_requests"},
                )
            md = {k: v for k, v in context.invocation_metadata()}
            caller = caller_of(world, md.get("authorization"))
            ctx = Ctx(world, caller)
            with world.lock:
                if cfg.fail_method == method and cfg.fail_times > 0:
                    cfg.fail_times -= 1
                    raise ApiError(getattr(grpc.StatusCode, cfg.fail_code), "Injected failure.")
                resp = fn(ctx, request)
            if fault is not None:
                # The change was made but the answer is lost, as with a real deadline.
                raise ApiError(fault, "Deadline expired before operation could complete.")
            return resp
        except ApiError as e:
            code = e.code.name
            context.abort_with_status(rpc_status.to_status(e.status()))
        except Exception as e:  # a sandbox bug: answer INTERNAL, visibly
            code = "INTERNAL"
            context.abort(grpc.StatusCode.INTERNAL, f"sandbox error: {type(e).__name__}: {e}")
        finally:
            seq = world.record(
                service=service,
                method=method,
                caller=caller,
                code=code,
                write=writes,
                mutating=bool(ctx and ctx.changed),
                resource=_resource_of(request),
                fault=fault.name if fault else None,
            )
            world.hold_answer(method, code, seq)

    return handle
