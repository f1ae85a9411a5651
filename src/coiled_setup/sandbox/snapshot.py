"""The one serializer of a sandbox world: the state dump, the saved world and scenarios all go through it.

`to_dict(world)` is the public dump (`GET /_sandbox/state`): no private key, no token. `to_dict(world,
full=True)` adds what rebuilding the world needs (etag counters, creation times, Coiled tokens, system keys);
`load(world, data)` adds such a dict to a world. Everything pending (propagation, operations, Coiled
infrastructure) is written as settled; a repository still being created is left out.
"""

from __future__ import annotations

import base64

from coiled_setup.sandbox.world import (
    DEFAULT_SETTINGS,
    Binding,
    CoiledUser,
    Key,
    Policy,
    Repository,
    Role,
    ServiceAccount,
    Workspace,
    World,
)


def _policy(p: Policy, full: bool) -> dict:
    out = {
        "version": p.version,
        "etag": base64.b64encode(p.etag).decode(),
        "bindings": [{"role": b.role, "members": list(b.members), **({"condition": b.condition} if b.condition else {})}
                     for b in p.bindings],
    }
    if p.audit_configs or full:
        out["audit_configs"] = p.audit_configs
    if full:
        out.update(salt=p.salt, counter=p.counter)
    return out


def _policy_back(d: dict, salt: str) -> Policy:
    return Policy(salt=d.get("salt", salt), version=d.get("version", 1), counter=d.get("counter", 0),
                  bindings=[Binding(b["role"], list(b["members"]), b.get("condition")) for b in d.get("bindings", [])],
                  audit_configs=list(d.get("audit_configs", [])))


def _infra(c: dict | None) -> dict | None:
    return None if c is None else {k: v for k, v in c.items() if k != "ready_at"}


def to_dict(world: World, *, full: bool = False) -> dict:
    """The world as plain data: public parts only, or (`full`) everything `load` needs but private keys."""
    with world.lock:
        now = world.now()
        accounts = {}
        for e, sa in world.accounts.items():
            accounts[e] = {"project_id": sa.project_id, "unique_id": sa.unique_id, "display_name": sa.display_name,
                           "disabled": sa.disabled, "user_keys": sorted(k.key_id for k in world.user_keys(e))}
            if full:
                accounts[e]["description"] = sa.description
        keys = {}
        for k in world.keys.values():
            if k.key_type != "USER_MANAGED" and not full:
                continue
            keys[k.key_id] = {"email": k.email, "type": k.key_type, "disabled": k.disabled,
                              "public_key": k.public_pem.decode()}
            if full:
                keys[k.key_id]["created"] = k.created
        roles = {}
        for n, r in world.roles.items():
            roles[n] = {"title": r.title, "description": r.description, "stage": r.stage, "deleted": r.deleted,
                        "purged": r.purged, "permissions": list(r.permissions)}
            if full:
                roles[n]["counter"] = r.counter
        repositories = {}
        for n, r in world.repositories.items():
            ready = r.ready_at <= now
            if full and not ready:
                continue
            repositories[n] = {"format": r.format, "ready": ready, "policy": _policy(r.policy, full)}
            if full:
                repositories[n].update(description=r.description, created=r.created)
        users = []
        for t, u in world.coiled.users.items():
            users.append({"username": u.username, "workspaces": u.workspaces, "default": u.default,
                          **({"token": t, "admin": u.admin} if full else {})})
        return {
            "config": dict(world.config.__dict__),
            "projects": {
                pid: {
                    "number": p.number,
                    "billing": p.billing,
                    "state": p.state,
                    "key_creation_disabled": p.key_creation_disabled,
                    **({"org_policies": {c: dict(v) for c, v in p.org_policies.items()}} if p.org_policies else {}),
                    "services": sorted(s for s, t in p.services.items() if t <= now),
                    "policy": _policy(p.policy, full),
                    **({"quotas": p.quotas} if p.quotas or full else {}),
                    **({"quota_preferences": p.quota_preferences} if p.quota_preferences or full else {}),
                    **({"quota_grant_up_to": p.quota_grant_up_to} if full else {}),
                }
                for pid, p in world.projects.items()
            },
            **({"organization": world.organization} if world.organization else {}),
            **({"perimeter": list(world.perimeter)} if world.perimeter else {}),
            "service_accounts": accounts,
            "keys": keys,
            "roles": roles,
            "repositories": repositories,
            "coiled": {
                "users": users,
                "workspaces": {
                    s: {
                        "credentials": w.credentials,
                        "instance_service_account": w.instance_service_account,
                        "settings": w.settings,
                        "registry": w.registry,
                        "global_infra": _infra(w.global_infra),
                        "regions": [{**r, "component": _infra(r["component"])} for r in w.regions],
                    }
                    for s, w in world.coiled.workspaces.items()
                },
            },
        }


def _settled(c: dict | None) -> dict | None:
    return None if c is None else {**c, "ready_at": 0.0}


def load(world: World, data: dict) -> None:
    """Adds the projects, accounts, keys, roles, repositories and Coiled users of `data` (to_dict's full form;
    fields it leaves out take their defaults) to the world, all settled."""
    settled = world.now() - 10**6
    with world.lock:
        for pid, p in data.get("projects", {}).items():
            proj = world.add_project(pid, p.get("number"), billing=p.get("billing", True),
                                     state=p.get("state", "ACTIVE"),
                                     key_creation_disabled=p.get("key_creation_disabled", False))
            proj.services = {s: 0.0 for s in p.get("services", [])}
            proj.org_policies = {c: dict(v) for c, v in p.get("org_policies", {}).items()}
            proj.policy = _policy_back(p.get("policy", {}), f"projects/{pid}")
            proj.quotas = {q: dict(v) for q, v in p.get("quotas", {}).items()}
            proj.quota_preferences = {n: dict(v) for n, v in p.get("quota_preferences", {}).items()}
            proj.quota_grant_up_to = dict(p.get("quota_grant_up_to", {}))
        for email, a in data.get("service_accounts", {}).items():
            sa = ServiceAccount(a["project_id"], email.split("@", 1)[0], a.get("unique_id") or world.new_unique_id(),
                                a.get("display_name", ""), a.get("description", ""), a.get("disabled", False),
                                created_at=settled)
            world.accounts[sa.email] = sa
        for kid, k in data.get("keys", {}).items():
            world.keys[kid] = Key(kid, k["email"], k["public_key"].encode(), k["type"], k["created"], k["disabled"])
        for email in data.get("service_accounts", {}):
            # Google keeps a system-managed key per account, listed beside user keys.
            if not any(k.email == email and k.key_type == "SYSTEM_MANAGED" for k in world.keys.values()):
                world.add_system_key(email)
        for n, r in data.get("roles", {}).items():
            world.roles[n] = Role(n, r.get("title", ""), r.get("description", ""), list(r.get("permissions", [])),
                                  r.get("stage", "GA"), r.get("deleted", False) or r.get("purged", False),
                                  r.get("counter", 0), r.get("purged", False))
        for n, r in data.get("repositories", {}).items():
            world.repositories[n] = Repository(n, r.get("format", "DOCKER"), r.get("description", ""),
                                               r.get("created", 0.0), 0.0, _policy_back(r.get("policy", {}), n))
        if data.get("organization"):
            world.organization = dict(data["organization"])
        if data.get("perimeter"):
            world.perimeter = list(data["perimeter"])
        coiled = data.get("coiled", {})
        for u in coiled.get("users", []):
            world.coiled.users[u["token"]] = CoiledUser(u["username"], list(u["workspaces"]), u.get("admin", True),
                                                        u.get("default"))
            for slug in u["workspaces"]:
                world.coiled.workspaces.setdefault(slug, Workspace(slug))
        for slug, ws in coiled.get("workspaces", {}).items():
            world.coiled.workspaces[slug] = Workspace(
                slug, ws.get("credentials"), ws.get("instance_service_account"),
                ws.get("settings", dict(DEFAULT_SETTINGS)),
                ws.get("registry"), _settled(ws.get("global_infra")),
                [{**r, "component": _settled(r["component"])} for r in ws.get("regions", [])])
