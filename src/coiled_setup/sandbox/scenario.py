"""Scenario files: the starting state of a sandbox.

A scenario is YAML or JSON:

    projects:                       # the first project is the default one
      - id: coiled-demo
        number: "123456789012"
        billing: true               # false: enabling billed APIs fails
        state: ACTIVE               # or DELETE_REQUESTED
        disable_key_creation: false # org policy iam.disableServiceAccountKeyCreation
        services: [iam.googleapis.com, ...]      # enabled APIs (default: the usual seven)
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
        quotas:                     # Compute Engine limits: quota id -> region ("default": other regions)
          CPUS-per-project-region: {default: 24, us-east1: 8}   # defaults: 24 vCPUs, 500 GB SSD, 8 addresses
        quota_grant_up_to:          # a QuotaPreference up to this is granted at once, above it pending review
          CPUS-per-project-region: 100                          # defaults: 100, 2048 and 32
        audit_configs:              # data access logs, as google.iam.v1.AuditConfig
          - {service: allServices, audit_log_configs: [{log_type: DATA_READ}]}
        repositories:
          - {location: us-east1, id: coiled, format: DOCKER, bindings: [...]}
    operation_errors:               # long-running operations that end in error (Operation.error)
      - {method: BatchEnableServices, code: FAILED_PRECONDITION, message: "...", times: 1}  # times -1: always
    organization:                   # the organization every project inherits Org Policy v2 policies from
      id: "123456789"
      customer_id: C01abc234        # the Cloud Identity customer of its domain and of its projects' accounts
      domain: example.com
      policies:                     # constraint -> one rule: enforce, allowed_values/denied_values, allow_all, deny_all
        iam.disableServiceAccountKeyCreation: {enforce: true}  # or iam.managed.disableServiceAccountKeyCreation
        iam.allowedPolicyMemberDomains: {allowed_values: [C01abc234]}
        gcp.resourceLocations: {allowed_values: [in:eu-locations]}
        compute.vmExternalIpAccess: {deny_all: true}
    perimeter: [serviceusage.googleapis.com]  # APIs a VPC Service Controls perimeter refuses to this machine
    operator:                       # the principal whose key the product uses
      id: operator                  # account id in the first project
      roles: [roles/owner]          # project roles (predefined or projects/P/roles/R)
    coiled:
      users:                        # default: the workspace marked is_default_account (none: no mark)
        - {token: ..., username: demo, workspaces: [demo], default: demo, admin: true}
      # writes Coiled answers 409 action_required "confirm" (detail) until repeated with ?confirm=1
      confirm: {"POST /api/v2/cloud-credentials/{ws}/gcp": "Workspace demo has running clusters ..."}
      retry: {"POST /api/v2/setup/account/{ws}/gcp/regions": 1}   # 409 action_required "retry", N times
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from coiled_setup.sandbox import snapshot
from coiled_setup.sandbox.world import DEFAULT_SERVICES, SA_DOMAIN, World

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
    "coiled": {"users": [{"token": DEFAULT_TOKEN, "username": "demo", "workspaces": ["demo"], "default": "demo"}]},
}


def load(path: str | Path | None) -> dict:
    """The scenario in a file (the default one for None); ValueError saying where it is malformed."""
    if path is None:
        return json.loads(json.dumps(DEFAULT_SCENARIO))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    except IsADirectoryError:
        raise ValueError("it is a directory, not a file") from None
    except OSError as e:
        raise ValueError(f"it cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"it is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1}: {getattr(e, 'problem', '')})" if mark else ""
        raise ValueError(f"it is not valid YAML{where}") from None
    validate(data)
    return data


# -- validation: every field apply() reads, with its type, so that a typo is one sentence --------------------

_STATES = ("ACTIVE", "DELETE_REQUESTED")
_CODES = ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "INTERNAL",
          "UNAVAILABLE", "ABORTED", "ALREADY_EXISTS", "NOT_FOUND")


def _fail(where: str, what: str):
    raise ValueError(f"{where or 'the scenario'} {what}")


def _at(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def _mapping(value, where: str, fields: dict, required: tuple[str, ...] = ()) -> None:
    if not isinstance(value, dict):
        _fail(where, "must be a mapping")
    for k in value:
        if k not in fields:
            _fail(where, f"has an unknown field {k!r} (known: {', '.join(fields)})")
    for k in required:
        if k not in value:
            _fail(where, f"needs the field {k!r}")
    for k, check in fields.items():
        if k in value:
            check(value[k], _at(where, k))


def _text(value, where: str) -> None:
    if not isinstance(value, str) or not value:
        _fail(where, "must be non-empty text")


def _bool(value, where: str) -> None:
    if not isinstance(value, bool):
        _fail(where, "must be true or false")


def _count(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(where, "must be a whole number, 0 or more")


def _integer(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        _fail(where, "must be a whole number (-1 for always)")


def _number(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        _fail(where, "must be digits")


def _list_of(check):
    def run(value, where: str) -> None:
        if not isinstance(value, list):
            _fail(where, "must be a list")
        for i, item in enumerate(value):
            check(item, f"{where}[{i}]")
    return run


def _one_of(*choices):
    def run(value, where: str) -> None:
        if value not in choices:
            _fail(where, f"must be one of {', '.join(choices)}")
    return run


def _condition(value, where: str) -> None:
    _mapping(value, where, {"title": _text, "description": _text, "expression": _text}, ("expression",))


def _binding(value, where: str) -> None:
    _mapping(value, where, {"role": _text, "members": _list_of(_text), "condition": _condition}, ("role", "members"))


def _account(value, where: str) -> None:
    _mapping(value, where, {"id": _text, "display_name": _text, "disabled": _bool, "keys": _count}, ("id",))


def _role(value, where: str) -> None:
    _mapping(value, where, {"id": _text, "title": _text, "description": _text, "permissions": _list_of(_text),
                            "stage": _text, "deleted": _bool, "purged": _bool}, ("id",))


def _repository(value, where: str) -> None:
    _mapping(value, where, {"location": _text, "id": _text, "format": _text, "bindings": _list_of(_binding)},
             ("location", "id"))


def _audit_config(value, where: str) -> None:
    def log_config(v, w):
        _mapping(v, w, {"log_type": _one_of("ADMIN_READ", "DATA_WRITE", "DATA_READ"),
                        "exempted_members": _list_of(_text)}, ("log_type",))
    _mapping(value, where, {"service": _text, "audit_log_configs": _list_of(log_config)}, ("service",))


def _operation_error(value, where: str) -> None:
    _mapping(value, where, {"method": _one_of("EnableService", "BatchEnableServices", "CreateRepository"),
                            "code": _one_of(*_CODES), "message": _text, "times": _integer},
             ("method", "code", "message"))


_QUOTA_IDS = ("CPUS-per-project-region", "SSD-TOTAL-GB-per-project-region", "IN-USE-ADDRESSES-per-project-region")


def _region_counts(value, where: str) -> None:
    if not isinstance(value, dict):
        _fail(where, "must be a mapping of region (or default) to a whole number")
    for region, n in value.items():
        _text(region, _at(where, region))
        _count(n, _at(where, region))


def _quota_map(check):
    def run(value, where: str) -> None:
        _mapping(value, where, {q: check for q in _QUOTA_IDS})
    return run


def _project(value, where: str) -> None:
    _mapping(value, where, {
        "id": _text, "number": _number, "billing": _bool, "state": _one_of(*_STATES),
        "disable_key_creation": _bool, "services": _list_of(_text), "service_accounts": _list_of(_account),
        "roles": _list_of(_role), "bindings": _list_of(_binding), "repositories": _list_of(_repository),
        "audit_configs": _list_of(_audit_config), "quotas": _quota_map(_region_counts),
        "quota_grant_up_to": _quota_map(_count),
    }, ("id",))


def _org_rule(value, where: str) -> None:
    _mapping(value, where, {"enforce": _bool, "allow_all": _bool, "deny_all": _bool,
                            "allowed_values": _list_of(_text), "denied_values": _list_of(_text)})
    if len(value) != 1 and set(value) - {"allowed_values", "denied_values"}:
        _fail(where, "must hold one rule: enforce, allow_all, deny_all, or allowed_values/denied_values")


def _organization(value, where: str) -> None:
    _mapping(value, where, {"id": _number, "customer_id": _text, "domain": _text,
                            "policies": lambda v, w: [_org_rule(r, _at(w, c)) for c, r in _dict(v, w).items()]})


def _dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        _fail(where, "must be a mapping")
    return value


def _rule(r: dict) -> dict:
    """A scenario's shorthand rule in the Org Policy v2 rule form the sandbox keeps."""
    if "allowed_values" in r or "denied_values" in r:
        return {"values": {"allowed_values": list(r.get("allowed_values", [])),
                           "denied_values": list(r.get("denied_values", []))}}
    return dict(r)


def _user(value, where: str) -> None:
    _mapping(value, where, {"token": _text, "username": _text, "workspaces": _list_of(_text), "admin": _bool,
                            "default": _text}, ("token", "username", "workspaces"))
    if "default" in value and value["default"] not in value["workspaces"]:
        _fail(f"{where}.default", "must be one of the user's workspaces")


def _routes(check):
    def run(value, where: str) -> None:
        if not isinstance(value, dict):
            _fail(where, "must be a mapping of routes (\"POST /api/...\")")
        for k, v in value.items():
            if not isinstance(k, str) or " /api/" not in k:
                _fail(where, f"has {k!r}, not a route such as \"POST /api/v2/cloud-credentials/{{ws}}/gcp\"")
            check(v, _at(where, k))
    return run


def validate(data) -> None:
    """Raises ValueError naming the first malformed field (for example projects[0].service_accounts[1].keys)."""
    if not isinstance(data, dict):
        _fail("", "must be a mapping with a 'projects' list")

    def projects(value, where):
        _list_of(_project)(value, where)
        if not value:
            _fail(where, "must name at least one project")

    _mapping(data, "", {
        "projects": projects,
        "operator": lambda v, w: _mapping(v, w, {"id": _text, "roles": _list_of(_text)}),
        "coiled": lambda v, w: _mapping(v, w, {"users": _list_of(_user), "confirm": _routes(_text),
                                               "retry": _routes(_count)}),
        "operation_errors": _list_of(_operation_error),
        "organization": _organization,
        "perimeter": _list_of(_text),
    }, ("projects",))


def _policy(bindings: list[dict], audit_configs: list[dict] = ()) -> dict:
    return {"version": 3 if any(b.get("condition") for b in bindings) else 1,
            "bindings": [dict(b) for b in bindings], "audit_configs": list(audit_configs)}


def _operator(scenario: dict) -> str:
    """The email of the principal whose key the product uses: an account of the first project."""
    op = scenario.get("operator", {})
    return f"{op.get('id', 'operator')}@{scenario['projects'][0]['id']}.{SA_DOMAIN}"


def to_world(scenario: dict) -> dict:
    """The scenario in the world's serialized form (see snapshot), keys aside: they are made by apply()."""
    projects, accounts, roles, repositories = {}, {}, {}, {}
    for spec in scenario["projects"]:
        pid = spec["id"]
        projects[pid] = {
            "number": str(spec["number"]) if spec.get("number") else None,
            "billing": spec.get("billing", True),
            "state": spec.get("state", "ACTIVE"),
            "key_creation_disabled": spec.get("disable_key_creation", False),
            "services": list(spec.get("services", DEFAULT_SERVICES)),
            "policy": _policy(spec.get("bindings", []), spec.get("audit_configs", [])),
            "quotas": {q: {("" if r == "default" else r): n for r, n in per.items()}
                       for q, per in spec.get("quotas", {}).items()},
            "quota_grant_up_to": dict(spec.get("quota_grant_up_to", {})),
        }
        for sa in spec.get("service_accounts", []):
            accounts[f"{sa['id']}@{pid}.{SA_DOMAIN}"] = {
                "project_id": pid, "display_name": sa.get("display_name", ""), "disabled": sa.get("disabled", False)}
        for r in spec.get("roles", []):
            roles[f"projects/{pid}/roles/{r['id']}"] = {**r, "title": r.get("title", r["id"])}
        for repo in spec.get("repositories", []):
            name = f"projects/{pid}/locations/{repo['location']}/repositories/{repo['id']}"
            repositories[name] = {"format": repo.get("format", "DOCKER"), "policy": _policy(repo.get("bindings", []))}
    first = scenario["projects"][0]["id"]
    op = scenario.get("operator", {"id": "operator", "roles": ["roles/owner"]})
    operator = _operator(scenario)
    accounts[operator] = {"project_id": first, "display_name": "Operator"}
    projects[first]["policy"]["bindings"] += [{"role": r, "members": [f"serviceAccount:{operator}"]}
                                              for r in op.get("roles", [])]
    org = scenario.get("organization")
    organization = ({**org, "policies": {c: {"rules": [_rule(r)]} for c, r in org.get("policies", {}).items()}}
                    if org else {})
    return {"projects": projects, "service_accounts": accounts, "roles": roles, "repositories": repositories,
            "organization": organization, "perimeter": list(scenario.get("perimeter", [])),
            "coiled": {"users": scenario.get("coiled", {}).get("users", [])}}


def apply(world: World, scenario: dict) -> dict:
    """Builds the world; answers the operator's key file (the only private key kept, by the caller)."""
    data = to_world(scenario)
    with world.lock:
        snapshot.load(world, data)
        for spec in scenario["projects"]:
            for sa in spec.get("service_accounts", []):
                for _ in range(int(sa.get("keys", 0))):
                    # private halves are dropped at once
                    world.issue_key(world.accounts[f"{sa['id']}@{spec['id']}.{SA_DOMAIN}"], settled=True)
        _, keyfile = world.issue_key(world.accounts[_operator(scenario)], settled=True)
        world.operation_errors = [dict(e) for e in scenario.get("operation_errors", [])]
        world.config.coiled_confirm.update(scenario.get("coiled", {}).get("confirm", {}))
        world.config.coiled_retry.update(scenario.get("coiled", {}).get("retry", {}))
        return keyfile
