"""Scenario files: the starting state of a sandbox.

A scenario is YAML or JSON:

    projects:                       # the first project is the default one
      - id: coiled-demo
        number: "123456789012"
        billing: true               # false: enabling billed APIs fails
        state: ACTIVE               # or DELETE_REQUESTED
        disable_key_creation: false # org policy iam.disableServiceAccountKeyCreation
        services: [iam.googleapis.com, ...]      # enabled APIs (default: the usual five)
        service_accounts:
          - {id: coiled, display_name: Coiled, disabled: false, keys: 2}
        roles:
          - {id: coiled, title: coiled, permissions: [...], deleted: false}
          # purged: deleted over 7 days ago: NOT_FOUND everywhere, yet its id cannot be created again
          - {id: old_role, purged: true}
        bindings:
          - {role: roles/viewer, members: [user:ann@example.com]}
          - role: roles/storage.objectViewer
            members: [group:data@example.com]
            condition: {title: expires, expression: 'request.time < timestamp("2030-01-01T00:00:00Z")'}
        audit_configs:              # data access logs, as google.iam.v1.AuditConfig
          - {service: allServices, audit_log_configs: [{log_type: DATA_READ}]}
        repositories:
          - {location: us-east1, id: coiled, format: DOCKER, bindings: [...]}
    operation_errors:               # long-running operations that end in error (Operation.error)
      - {method: BatchEnableServices, code: FAILED_PRECONDITION, message: "...", times: 1}  # times -1: always
    operator:                       # the principal whose key the product uses
      id: operator                  # account id in the first project
      roles: [roles/owner]          # project roles (predefined or projects/P/roles/R)
    coiled:
      users:
        - {token: ..., username: demo, workspaces: [demo]}
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from coiled_setup.sandbox.world import DEFAULT_SERVICES, Binding, Policy, Repository, Role, Workspace, World, CoiledUser

DEFAULT_PROJECT = "coiled-demo"
DEFAULT_TOKEN = "sandbox-1f3c9a7e-token"

DEFAULT_SCENARIO: dict = {
    "projects": [
        {
            "id": DEFAULT_PROJECT,
            "number": "123456789012",
            "billing": True,
            "bindings": [
                {"role": "roles/viewer", "members": ["user:ann@example.com"]},
                {
                    "role": "roles/storage.objectViewer",
                    "members": ["group:analysts@example.com"],
                    "condition": {
                        "title": "until-2030",
                        "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")',
                    },
                },
            ],
        }
    ],
    "operator": {"id": "operator", "roles": ["roles/owner"]},
    "coiled": {"users": [{"token": DEFAULT_TOKEN, "username": "demo", "workspaces": ["demo"]}]},
}


def load(path: str | Path | None) -> dict:
    if path is None:
        return json.loads(json.dumps(DEFAULT_SCENARIO))
    text = Path(path).read_text()
    data = yaml.safe_load(text) if not text.lstrip().startswith("{") else json.loads(text)
    if not isinstance(data, dict) or not data.get("projects"):
        raise ValueError(f"{path}: a scenario needs a 'projects' list.")
    return data


def _bindings(items: list[dict]) -> list[Binding]:
    return [Binding(role=b["role"], members=list(b["members"]), condition=b.get("condition")) for b in items or []]


def apply(world: World, scenario: dict) -> dict:
    """Builds the world; answers the operator's key file (the only private key kept, by the caller)."""
    with world.lock:
        for spec in scenario["projects"]:
            pid = spec["id"]
            p = world.add_project(
                pid,
                str(spec["number"]) if spec.get("number") else None,
                billing=spec.get("billing", True),
                state=spec.get("state", "ACTIVE"),
                key_creation_disabled=spec.get("disable_key_creation", False),
            )
            for svc in spec.get("services", DEFAULT_SERVICES):
                p.services[svc] = 0.0
            for sa in spec.get("service_accounts", []):
                acc = world.add_account(pid, sa["id"], display_name=sa.get("display_name", ""),
                                        disabled=sa.get("disabled", False))
                for _ in range(int(sa.get("keys", 0))):
                    world.issue_key(acc)  # private halves are dropped at once
            for r in spec.get("roles", []):
                name = f"projects/{pid}/roles/{r['id']}"
                world.roles[name] = Role(
                    name=name,
                    title=r.get("title", r["id"]),
                    description=r.get("description", ""),
                    permissions=list(r.get("permissions", [])),
                    stage=r.get("stage", "GA"),
                    deleted=r.get("deleted", False) or r.get("purged", False),
                    purged=r.get("purged", False),
                )
            bindings = _bindings(spec.get("bindings", []))
            p.policy.version = 3 if any(b.condition for b in bindings) else 1
            p.policy.bindings = bindings
            p.policy.audit_configs = list(spec.get("audit_configs", []))
            for repo in spec.get("repositories", []):
                name = f"projects/{pid}/locations/{repo['location']}/repositories/{repo['id']}"
                rp = Repository(name=name, format=repo.get("format", "DOCKER"), description="",
                                created=0.0, ready_at=0.0, policy=Policy(salt=name))
                rp.policy.bindings = _bindings(repo.get("bindings", []))
                world.repositories[name] = rp
        first = world.projects[scenario["projects"][0]["id"]]
        op = scenario.get("operator", {"id": "operator", "roles": ["roles/owner"]})
        operator = world.add_account(first.project_id, op.get("id", "operator"), display_name="Operator")
        member = f"serviceAccount:{operator.email}"
        for role in op.get("roles", []):
            first.policy.bindings.append(Binding(role=role, members=[member]))
        _, keyfile = world.issue_key(operator)
        world.operation_errors = [dict(e) for e in scenario.get("operation_errors", [])]
        for u in scenario.get("coiled", {}).get("users", []):
            world.coiled.users[u["token"]] = CoiledUser(u["username"], list(u["workspaces"]), u.get("admin", True))
            for slug in u["workspaces"]:
                world.coiled.workspaces.setdefault(slug, Workspace(slug))
        return keyfile
