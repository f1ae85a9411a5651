"""IAM policies, shared by projects (Resource Manager) and repositories (Artifact Registry)."""

from __future__ import annotations

import hashlib

from google.iam.v1 import policy_pb2
from google.protobuf import json_format
from google.type import expr_pb2

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.services.common import Ctx
from coiled_setup.sandbox.world import MEMBER_PREFIXES, PERMISSION_RE, SA_DOMAIN, Binding, Policy, Project

MAX_POLICY_MEMBERS = 1500
MAX_TEST_PERMISSIONS = 100


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
