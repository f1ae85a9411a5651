"""Org Policy v2 (google.cloud.orgpolicy.v2.OrgPolicy): effective policies inherited from the organization, and
project-level policies set with CreatePolicy/UpdatePolicy/DeletePolicy; the other services enforce them here.

A spec is kept as plain data: {"rules": [{"enforce": bool} | {"allow_all": True} | {"deny_all": True} |
{"values": {"allowed_values": [...], "denied_values": [...]}}], "inherit_from_parent": bool, "reset": bool}.
"""

from __future__ import annotations

import hashlib

import grpc
from google.cloud.orgpolicy_v2 import types as op

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.errors import ApiError
from coiled_setup.sandbox.services.common import Ctx
from coiled_setup.sandbox.world import SA_DOMAIN, Project, World

PATH = "google.cloud.orgpolicy.v2.OrgPolicy"
OP_SVC = "orgpolicy.googleapis.com"
KEY_LEGACY = "iam.disableServiceAccountKeyCreation"
KEY_MANAGED = "iam.managed.disableServiceAccountKeyCreation"
DOMAINS = "iam.allowedPolicyMemberDomains"
LOCATIONS = "gcp.resourceLocations"
EXTERNAL_IP = "compute.vmExternalIpAccess"
BOOLEAN = (KEY_LEGACY, KEY_MANAGED)
KNOWN = (*BOOLEAN, DOMAINS, LOCATIONS, EXTERNAL_IP)


def _values(rule: dict) -> dict:
    return rule.get("values") or {}


def effective(world: World, p: Project, constraint: str) -> dict:
    """The spec in force on the project: its own policy over the organization's (list values merged when it
    inherits from its parent)."""
    org = world.organization.get("policies", {}).get(constraint)
    inherited = {"rules": [dict(r) for r in org.get("rules", [])]} if org else {"rules": []}
    if constraint == KEY_LEGACY and p.key_creation_disabled:
        inherited = {"rules": [{"enforce": True}]}
    own = p.org_policies.get(constraint)
    if own is None:
        return inherited
    spec = own["spec"]
    if spec.get("reset"):
        return {"rules": []}
    if constraint in BOOLEAN or not spec.get("inherit_from_parent"):
        return {"rules": [dict(r) for r in spec.get("rules", [])]}
    rules = spec.get("rules", [])
    if any(r.get("allow_all") or r.get("deny_all") for r in rules):
        return {"rules": [dict(r) for r in rules]}
    allowed, denied = [], []
    for r in inherited["rules"] + rules:
        allowed += _values(r).get("allowed_values", [])
        denied += _values(r).get("denied_values", [])
    return {"rules": [{"values": {"allowed_values": allowed, "denied_values": denied}}]}


def enforced(world: World, p: Project, constraint: str) -> bool:
    return any(r.get("enforce") for r in effective(world, p, constraint)["rules"])


def allows(world: World, p: Project, constraint: str, matches) -> bool:
    """Whether a list constraint allows a value; `matches(v)` says whether a policy value covers it."""
    rules = effective(world, p, constraint)["rules"]
    if not rules:
        return True
    if any(r.get("deny_all") for r in rules):
        return False
    if any(r.get("allow_all") for r in rules):
        return True
    allowed = [v for r in rules for v in _values(r).get("allowed_values", [])]
    denied = [v for r in rules for v in _values(r).get("denied_values", [])]
    if any(matches(v) for v in denied):
        return False
    return not allowed or any(matches(v) for v in allowed)


# Google's value groups, by the first part of a region's name (in:us-locations, in:eu-locations, ...).
_GROUPS = {"us": "us", "northamerica": "northamerica", "europe": "eu", "asia": "asia", "australia": "australia",
           "southamerica": "southamerica", "me": "me", "africa": "africa"}


def location_matches(location: str):
    group = _GROUPS.get(location.split("-", 1)[0], "")
    covered = {location, f"in:{location}-locations", f"in:{group}-locations" if group else ""}
    return lambda v: v in covered


def check_location(world: World, p: Project, location: str, what: str) -> None:
    """Google's refusal of a resource outside the allowed locations."""
    if allows(world, p, LOCATIONS, location_matches(location)):
        return
    msg = (f"Constraint constraints/{LOCATIONS} violated for [orgpolicy:projects/{p.number}] attempting to create "
           f"a {what} in [{location}]. For more information, see "
           "https://cloud.google.com/resource-manager/docs/organization-policy/defining-locations.")
    raise errors.failed_precondition(msg, violations=[(f"constraints/{LOCATIONS}", f"orgpolicy:projects/{p.number}",
                                                       msg)])


def _customer(world: World, member: str) -> str | None:
    """The Cloud Identity customer a principal belongs to: the organization's, or None (another one)."""
    kind, _, who = member.partition(":")
    org = world.organization
    domain = who.rsplit("@", 1)[-1] if kind != "domain" else who
    if kind == "serviceAccount" and domain.endswith(f".{SA_DOMAIN}") and domain[:-len(SA_DOMAIN) - 1] in world.projects:
        return org.get("customer_id")
    if kind in ("user", "group", "domain") and domain == org.get("domain"):
        return org.get("customer_id")
    return None


def check_members(world: World, p: Project, old: set[str], new: set[str]) -> None:
    """Domain restricted sharing: a new member outside the allowed customers is refused, as Google does."""
    for m in sorted(new - old):
        if m.startswith("deleted:"):
            continue
        customer = _customer(world, m)
        if allows(world, p, DOMAINS, lambda v, c=customer: v in ("is:" + str(c), str(c))):
            continue
        who = m.partition(":")[2]
        raise errors.failed_precondition(
            "One or more users named in the policy do not belong to a permitted customer.",
            violations=[(f"constraints/{DOMAINS}", f"orgpolicy:projects/{p.project_id}?configvalue={who}",
                         f"User {who} is not in permitted organization.")])


def check_key_creation(world: World, p: Project, subject: str) -> None:
    for c in (KEY_LEGACY, KEY_MANAGED):
        if enforced(world, p, c):
            msg = "Key creation is not allowed on this service account."
            raise errors.failed_precondition(msg, violations=[(f"constraints/{c}", subject, msg)])


# -- the API -----------------------------------------------------------------------------------------------------

def _rule_pb(r: dict) -> op.PolicySpec.PolicyRule:
    if "enforce" in r:
        return op.PolicySpec.PolicyRule(enforce=bool(r["enforce"]))
    if r.get("allow_all"):
        return op.PolicySpec.PolicyRule(allow_all=True)
    if r.get("deny_all"):
        return op.PolicySpec.PolicyRule(deny_all=True)
    v = _values(r)
    return op.PolicySpec.PolicyRule(values=op.PolicySpec.PolicyRule.StringValues(
        allowed_values=list(v.get("allowed_values", [])), denied_values=list(v.get("denied_values", []))))


def _rule_back(r: op.PolicySpec.PolicyRule) -> dict:
    kind = op.PolicySpec.PolicyRule.pb(r).WhichOneof("kind")
    if kind == "enforce":
        return {"enforce": r.enforce}
    if kind == "allow_all":
        return {"allow_all": True}
    if kind == "deny_all":
        return {"deny_all": True}
    if kind == "values":
        return {"values": {"allowed_values": list(r.values.allowed_values),
                           "denied_values": list(r.values.denied_values)}}
    raise errors.invalid_argument("A rule needs one of values, allow_all, deny_all or enforce.", field="spec.rules")


def _name(ctx: Ctx, name: str, permission: str) -> tuple[Project, str]:
    bits = name.split("/")
    if len(bits) != 4 or bits[0] != "projects" or bits[2] != "policies":
        raise errors.invalid_argument(f"Invalid resource name: {name!r}.", field="name")
    p = ctx.world.project(bits[1])
    if p is None:
        raise errors.permission_denied(permission, f"projects/{bits[1]}")
    ctx.require(permission, p, f"projects/{bits[1]}")
    constraint = bits[3]
    if constraint not in KNOWN:
        raise errors.not_found(f"Constraint constraints/{constraint} was not found.")
    return p, constraint


def _etag(p: Project, constraint: str, counter: int) -> str:
    return hashlib.sha1(f"{p.number}/{constraint}/{counter}".encode()).hexdigest()[:16]


def _policy_pb(p: Project, constraint: str, spec: dict, etag: str = "") -> op.Policy:
    pb = op.Policy(name=f"projects/{p.number}/policies/{constraint}")
    pb.spec = op.PolicySpec(rules=[_rule_pb(r) for r in spec.get("rules", [])],
                            inherit_from_parent=bool(spec.get("inherit_from_parent")), reset=bool(spec.get("reset")),
                            etag=etag)
    pb.etag = etag
    return pb


def get_effective_policy(ctx: Ctx, req: op.GetEffectivePolicyRequest):
    p, c = _name(ctx, req.name, "orgpolicy.policy.get")
    return _policy_pb(p, c, effective(ctx.world, p, c))


def get_policy(ctx: Ctx, req: op.GetPolicyRequest):
    p, c = _name(ctx, req.name, "orgpolicy.policy.get")
    own = p.org_policies.get(c)
    if own is None:
        raise errors.not_found(f"Policy {req.name} was not found.")
    return _policy_pb(p, c, own["spec"], own["etag"])


def _spec_back(pb: op.Policy) -> dict:
    return {"rules": [_rule_back(r) for r in pb.spec.rules], "inherit_from_parent": pb.spec.inherit_from_parent,
            "reset": pb.spec.reset}


def _store(ctx: Ctx, p: Project, c: str, pb: op.Policy):
    counter = p.org_policies.get(c, {}).get("counter", 0) + 1
    p.org_policies[c] = {"spec": _spec_back(pb), "counter": counter, "etag": _etag(p, c, counter)}
    ctx.changed = True
    return _policy_pb(p, c, p.org_policies[c]["spec"], p.org_policies[c]["etag"])


def create_policy(ctx: Ctx, req: op.CreatePolicyRequest):
    p, c = _name(ctx, req.policy.name, "orgpolicy.policies.create")
    if req.parent.split("/")[:2] != req.policy.name.split("/")[:2]:
        raise errors.invalid_argument("The policy's name must be under its parent.", field="policy.name")
    if c in p.org_policies:
        raise errors.already_exists(f"Policy {req.policy.name} already exists.")
    return _store(ctx, p, c, req.policy)


def update_policy(ctx: Ctx, req: op.UpdatePolicyRequest):
    p, c = _name(ctx, req.policy.name, "orgpolicy.policies.update")
    own = p.org_policies.get(c)
    if own is None:
        raise errors.not_found(f"Policy {req.policy.name} was not found.")
    if req.policy.etag and req.policy.etag != own["etag"]:
        raise ApiError(grpc.StatusCode.ABORTED, "The etag does not match the policy's current etag.")
    return _store(ctx, p, c, req.policy)


def delete_policy(ctx: Ctx, req: op.DeletePolicyRequest):
    from google.protobuf import empty_pb2

    p, c = _name(ctx, req.name, "orgpolicy.policies.delete")
    own = p.org_policies.get(c)
    if own is None:
        raise errors.not_found(f"Policy {req.name} was not found.")
    if req.etag and req.etag != own["etag"]:
        raise ApiError(grpc.StatusCode.ABORTED, "The etag does not match the policy's current etag.")
    del p.org_policies[c]
    ctx.changed = True
    return empty_pb2.Empty()


METHODS = [
    ("GetEffectivePolicy", get_effective_policy, op.GetEffectivePolicyRequest, False),
    ("GetPolicy", get_policy, op.GetPolicyRequest, False),
    ("CreatePolicy", create_policy, op.CreatePolicyRequest, True),
    ("UpdatePolicy", update_policy, op.UpdatePolicyRequest, True),
    ("DeletePolicy", delete_policy, op.DeletePolicyRequest, True),
]
