"""What a run makes in the project, resource by resource: read from its steps once they observed and planned (what
exists, what is to create or change), or, offline, from the options and the templates alone. The review report and
the exports (Terraform, gcloud) render it; none of them calls Google."""

from __future__ import annotations

from dataclasses import dataclass, field

from coiled_setup import paths
from coiled_setup.needs import REPO_ROLE
from coiled_setup.options import repository_name

# What the run does with a resource.
CREATE = "create"  # absent: the run creates it
UPDATE = "update"  # there but not as needed (a drifted or soft-deleted role): the run changes it
EXISTS = "exists"  # there as needed: the run leaves it
UNKNOWN = "unknown"  # offline: created unless it exists

ACCOUNT_DISPLAY = "Coiled"
INSTANCE_DISPLAY = "Coiled instances"
REPOSITORY_ID = "coiled"
REPOSITORY_DESCRIPTION = "Software environments for Coiled"


@dataclass
class Resource:
    kind: str  # api, service_account, custom_role, project_binding, repository, repository_binding, key
    name: str  # as Google names it (a binding: "RESOURCE ROLE MEMBER")
    state: str  # CREATE / UPDATE / EXISTS / UNKNOWN
    step: str  # the step that makes it
    attrs: dict = field(default_factory=dict)
    managed: bool = True  # False: used by the run, never created or changed (an instance account you named)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "state": self.state, "step": self.step,
                "managed": self.managed, "attrs": self.attrs}


def _state(known: bool, present: bool, changes: bool = False) -> str:
    if not known:
        return UNKNOWN
    if not present:
        return CREATE
    return UPDATE if changes else EXISTS


def collect(run, steps, observed: bool) -> list[Resource]:
    """The resources of the planned (observed=True) or merely built (observed=False, offline) steps, in step order."""
    out: list[Resource] = []
    for s in steps:
        out.extend(_of(s, run, observed))
    return out


def _of(step, run, observed: bool) -> list[Resource]:
    from coiled_setup.steps import account, apis, binding, instance, registry, role

    o = run.opts
    if isinstance(step, apis.ApisStep):
        return [Resource("api", s, _state(observed, bool(step.enabled.get(s))), step.key)
                for s in apis.wanted_services(o)]
    if isinstance(step, account.AccountStep):
        email = o.account_email
        key_file = None
        if not o.no_local_key:
            key_file = step.local_path or (o.key_file if o.key_file is not None
                                           else paths.default_key_path(o.project, o.account_id))
        return [
            Resource("service_account", email, _state(observed, step.account is not None), step.key,
                     {"account_id": o.account_id, "display_name": ACCOUNT_DISPLAY,
                      "description": f"Used by Coiled to run Dask clusters {account.MARKER}."}),
            Resource("key", email, _state(observed, step.account is not None and not step.needs_key(run)), step.key,
                     {"account": email, "file": str(key_file) if key_file else None, "to_coiled": o.upload}),
        ]
    if isinstance(step, role.RoleStep):
        t = step.template
        present = step.role is not None
        return [Resource("custom_role", step.name(run),
                         _state(observed, present, present and (step.role.deleted or step._drifted())), step.key,
                         {"role_id": step.role_id, "title": t.title, "description": t.description, "stage": t.stage,
                          "permissions": list(t.permissions), "deleted": bool(present and step.role.deleted)})]
    if isinstance(step, binding.BindingStep):
        member, role_name = step.member(run), step.role(run)
        return [Resource("project_binding", f"{o.project} {role_name} {member}", _state(observed, step.present),
                         step.key, {"role": role_name, "member": member})]
    if isinstance(step, registry.RegistryStep):
        member = step.member(run)
        repos = step.repos or [registry.Repo(r, repository_name(o.project, r)) for r in o.repo_regions]
        out = []
        for r in repos:  # one repository and one grant in each registry region
            there = r.format is not None
            out += [
                Resource("repository", r.name, _state(observed, there), step.key,
                         {"location": r.region, "repository_id": REPOSITORY_ID, "format": "DOCKER",
                          "description": REPOSITORY_DESCRIPTION, "cluster_region": r.region == o.region}),
                Resource("repository_binding", f"{r.name} {REPO_ROLE} {member}",
                         _state(observed, there and r.granted), step.key,
                         {"repository": r.name, "role": REPO_ROLE, "member": member, "location": r.region,
                          "cluster_region": r.region == o.region}),
            ]
        return out
    if isinstance(step, instance.InstanceAccountStep):
        email = instance.instance_email(o)
        if not o.create_instance_service_account:  # one you named: used, never made
            return [Resource("service_account", email, _state(observed, True), step.key,
                             {"account_id": email.split("@", 1)[0]}, managed=False)]
        return [Resource("service_account", email, _state(observed, step.account is not None), step.key,
                         {"account_id": email.split("@", 1)[0], "display_name": INSTANCE_DISPLAY,
                          "description": "Attached to Coiled's cluster instances; grant it only the data access your "
                                         f"work needs {account.MARKER}."})]
    return []  # the checks and Coiled's side make nothing in the project
