"""Saving a sandbox's world between runs, so a rehearsal can be repeated and verified.

Everything pending (propagation, operations, Coiled infrastructure) counts as settled once saved;
access tokens are not kept, callers authenticate again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from coiled_setup.sandbox.world import (
    Binding,
    CoiledUser,
    Config,
    Key,
    Policy,
    Repository,
    Role,
    ServiceAccount,
    Workspace,
    World,
)

FORMAT = 1


def _policy(p: Policy) -> dict:
    return {"salt": p.salt, "version": p.version, "counter": p.counter,
            "bindings": [{"role": b.role, "members": b.members, "condition": b.condition} for b in p.bindings],
            "audit_configs": p.audit_configs}


def _policy_back(d: dict) -> Policy:
    return Policy(salt=d["salt"], version=d["version"], counter=d["counter"],
                  bindings=[Binding(b["role"], list(b["members"]), b.get("condition")) for b in d["bindings"]],
                  audit_configs=list(d.get("audit_configs", [])))


def save(world: World, path: Path, ports: tuple[int, int]) -> None:
    with world.lock:
        data = {
            "format": FORMAT,
            "ports": list(ports),
            "token_uri": world.token_uri,
            "projects": {
                pid: {"number": p.number, "billing": p.billing, "state": p.state,
                      "key_creation_disabled": p.key_creation_disabled,
                      "services": sorted(s for s, t in p.services.items() if t <= world.now()),
                      "policy": _policy(p.policy)}
                for pid, p in world.projects.items()
            },
            "accounts": [{"project_id": a.project_id, "account_id": a.account_id, "unique_id": a.unique_id,
                          "display_name": a.display_name, "description": a.description, "disabled": a.disabled}
                         for a in world.accounts.values()],
            "keys": [{"key_id": k.key_id, "email": k.email, "public_pem": k.public_pem.decode(),
                      "key_type": k.key_type, "created": k.created, "disabled": k.disabled}
                     for k in world.keys.values()],
            "roles": [{"name": r.name, "title": r.title, "description": r.description, "permissions": r.permissions,
                       "stage": r.stage, "deleted": r.deleted, "counter": r.counter, "purged": r.purged}
                      for r in world.roles.values()],
            "repositories": [{"name": r.name, "format": r.format, "description": r.description,
                              "created": r.created, "policy": _policy(r.policy)}
                             for r in world.repositories.values() if r.ready_at <= world.now()],
            "coiled": {
                "users": [{"token": t, "username": u.username, "workspaces": u.workspaces, "admin": u.admin,
                           "default": u.default}
                          for t, u in world.coiled.users.items()],
                "workspaces": [{"slug": w.slug, "credentials": w.credentials,
                                "instance_service_account": w.instance_service_account, "settings": w.settings,
                                "registry": w.registry,
                                "global_infra": _component(w.global_infra),
                                "regions": [{**r, "component": _component(r["component"])} for r in w.regions]}
                               for w in world.coiled.workspaces.values()],
            },
        }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _component(c: dict | None) -> dict | None:
    return None if c is None else {**c, "ready_at": 0.0}


def load(path: Path, config: Config) -> tuple[World, tuple[int, int]] | None:
    """The saved world and the ports it used, or None when there is nothing usable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != FORMAT:
        return None
    w = World(config)
    w.token_uri = data["token_uri"]
    settled = w.now() - 10**6
    for pid, p in data["projects"].items():
        proj = w.add_project(pid, p["number"], billing=p["billing"], state=p["state"],
                             key_creation_disabled=p["key_creation_disabled"])
        proj.services = {s: 0.0 for s in p["services"]}
        proj.policy = _policy_back(p["policy"])
    for a in data["accounts"]:
        sa = ServiceAccount(a["project_id"], a["account_id"], a["unique_id"], a["display_name"], a["description"],
                            a["disabled"], created_at=settled)
        w.accounts[sa.email] = sa
    for k in data["keys"]:
        w.keys[k["key_id"]] = Key(k["key_id"], k["email"], k["public_pem"].encode(), k["key_type"], k["created"],
                                  k["disabled"])
    for r in data["roles"]:
        w.roles[r["name"]] = Role(r["name"], r["title"], r["description"], list(r["permissions"]), r["stage"],
                                  r["deleted"], r["counter"], r.get("purged", False))
    for r in data["repositories"]:
        w.repositories[r["name"]] = Repository(r["name"], r["format"], r["description"], r["created"], 0.0,
                                               _policy_back(r["policy"]))
    for u in data["coiled"]["users"]:
        w.coiled.users[u["token"]] = CoiledUser(u["username"], list(u["workspaces"]), u["admin"], u.get("default"))
    for ws in data["coiled"]["workspaces"]:
        w.coiled.workspaces[ws["slug"]] = Workspace(
            ws["slug"], ws["credentials"], ws["instance_service_account"], ws["settings"], ws["registry"],
            ws["global_infra"], ws["regions"])
    return w, tuple(data["ports"])
