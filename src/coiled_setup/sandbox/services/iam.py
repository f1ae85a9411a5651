"""IAM admin (google.iam.admin.v1.IAM): service accounts, their keys, custom roles."""

from __future__ import annotations

import json

from google.cloud.iam_admin_v1 import types as iam
from google.protobuf import empty_pb2

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.services import org_policy
from coiled_setup.sandbox.services.common import IAM_SVC, Ctx, page_start, parts, ts
from coiled_setup.sandbox.world import (
    ACCOUNT_ID_RE,
    MAX_USER_KEYS,
    PERMISSION_RE,
    ROLE_ID_RE,
    SA_DOMAIN,
    Project,
    Role,
    ServiceAccount,
)

PATH = "google.iam.admin.v1.IAM"
FAR_FUTURE = 253402300799  # 9999-12-31T23:59:59Z, Google's "never expires"


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
    (ref,) = parts(req.name, "projects")
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
    (ref,) = parts(req.name, "projects")
    p = ctx.project(ref, "iam.serviceAccounts.list", f"projects/{ref}", IAM_SVC)
    w = ctx.world
    found = sorted(
        (sa for sa in w.accounts.values()
         if sa.project_id == p.project_id and w.account_age(sa) >= w.config.propagation_delay_s / 2),
        key=lambda sa: sa.email,
    )
    start = page_start(req.page_token)
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
        valid_after_time=ts(k.created),
        valid_before_time=ts(FAR_FUTURE if k.key_type == "USER_MANAGED" else k.created + 14 * 86400),
        key_origin=iam.ServiceAccountKeyOrigin.GOOGLE_PROVIDED,
        key_type=getattr(iam.ListServiceAccountKeysRequest.KeyType, k.key_type),
        disabled=k.disabled,
    )


def create_key(ctx: Ctx, req: iam.CreateServiceAccountKeyRequest):
    sa, p = _account(ctx, req.name, "iam.serviceAccountKeys.create")
    # The subject names the account, then the constraint's config value (the email, URL-encoded).
    org_policy.check_key_creation(ctx.world, p, f"projects/{p.project_id}/serviceAccounts/{sa.email}?configvalue="
                                                f"{sa.email.replace('@', '%40')}")
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
    keys = [k for k in ctx.world.listed_keys(sa.email) if not wanted or k.key_type in wanted]
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
    ctx.world.delete_key(k.key_id)
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
        # Google names the first offending permission, whether it does not exist or is organization-level only.
        if not PERMISSION_RE.match(perm) or not valid_in_project_role(perm):
            raise errors.invalid_argument(f"Permission {perm} is not valid.", field="role.included_permissions")
    return list(dict.fromkeys(perms))


def create_role(ctx: Ctx, req: iam.CreateRoleRequest):
    (ref,) = parts(req.parent, "projects")
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
    ref, rid = parts(name, "projects", "roles")
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
    (ref,) = parts(req.parent, "projects")
    p = ctx.project(ref, "iam.roles.list", f"projects/{ref}", IAM_SVC)
    prefix = f"projects/{p.project_id}/roles/"
    found = sorted(
        (r for n, r in ctx.world.roles.items()
         if n.startswith(prefix) and not r.purged and (req.show_deleted or not r.deleted)),
        key=lambda r: r.name,
    )
    full = req.view == iam.RoleView.FULL
    start = page_start(req.page_token)
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


METHODS = [
    ("CreateServiceAccount", create_service_account, iam.CreateServiceAccountRequest, True),
    ("GetServiceAccount", get_service_account, iam.GetServiceAccountRequest, False),
    ("ListServiceAccounts", list_service_accounts, iam.ListServiceAccountsRequest, False),
    ("DeleteServiceAccount", delete_service_account, iam.DeleteServiceAccountRequest, True),
    ("EnableServiceAccount", lambda c, r: _set_disabled(c, r.name, False),
     iam.EnableServiceAccountRequest, True),
    ("DisableServiceAccount", lambda c, r: _set_disabled(c, r.name, True),
     iam.DisableServiceAccountRequest, True),
    ("CreateServiceAccountKey", create_key, iam.CreateServiceAccountKeyRequest, True),
    ("ListServiceAccountKeys", list_keys, iam.ListServiceAccountKeysRequest, False),
    ("GetServiceAccountKey", get_key, iam.GetServiceAccountKeyRequest, False),
    ("DeleteServiceAccountKey", delete_key, iam.DeleteServiceAccountKeyRequest, True),
    ("DisableServiceAccountKey", lambda c, r: _set_key_disabled(c, r.name, True),
     iam.DisableServiceAccountKeyRequest, True),
    ("EnableServiceAccountKey", lambda c, r: _set_key_disabled(c, r.name, False),
     iam.EnableServiceAccountKeyRequest, True),
    ("CreateRole", create_role, iam.CreateRoleRequest, True),
    ("GetRole", get_role, iam.GetRoleRequest, False),
    ("ListRoles", list_roles, iam.ListRolesRequest, False),
    ("UpdateRole", update_role, iam.UpdateRoleRequest, True),
    ("DeleteRole", delete_role, iam.DeleteRoleRequest, True),
    ("UndeleteRole", undelete_role, iam.UndeleteRoleRequest, True),
]
