"""`coiled-setup review`: what coiled-setup would create in a project and why, for a security reviewer who reads
rather than runs. With --project it reads the project (only reads, through the engine's observe and plan); without
one, or when the project cannot be read, it works offline from the templates and the defaults."""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from coiled_setup import inventory, needs, org_policies, role_templates
from coiled_setup.errors import OK, BadInput, UserError
from coiled_setup.options import INSTANCE_ROLE_ID, Options, project_error
from coiled_setup.remedies import command
from coiled_setup.wording import count

EXPLAINED = "permissions-explained.yaml"
INSTANCE_STEPS = ("instance", "instance_role", "instance_binding")
KEY_ORG_POLICY = "constraints/iam.disableServiceAccountKeyCreation"
DOMAIN_ORG_POLICY = "constraints/iam.allowedPolicyMemberDomains"


@dataclass
class ReviewOptions:
    project: str | None = None
    format: str = "markdown"
    output_file: Path | None = None


@cache
def explained() -> dict:
    """The data file beside the templates: one entry per permission of the bundled roles, and the groups."""
    import yaml

    return yaml.safe_load(resources.files("coiled_setup").joinpath("templates", EXPLAINED).read_text())


def _options(project: str | None) -> Options:
    # The instance account is optional: planned here so that its resources are listed (marked optional).
    return Options(project=project or "PROJECT_ID", interactive=False, dry_run=True, output="json",
                   create_instance_service_account=True)


def _steps(o: Options):
    from coiled_setup import steps as registry

    # Coiled's side (the upload) makes nothing in the project, and reading it needs a Coiled login.
    return [s for s in registry.build(o) if s.key != "upload"]


def _offline(o: Options) -> list[inventory.Resource]:
    from coiled_setup.steps.base import Run

    run = Run(opts=o, google=None, journal=None, ui=None)
    return inventory.collect(run, _steps(o), observed=False)


def _observed(o: Options) -> tuple[list[inventory.Resource], tuple[dict, str]]:
    """Reads the project through the wizard's own observe and plan, and its organization policies as the wizard
    reads them before its first write: Google is only read, never written."""
    from coiled_setup.commands.common import connect_google
    from coiled_setup.engine import Consent, Engine
    from coiled_setup.journal import Journal
    from coiled_setup.steps.base import Run
    from coiled_setup.ui import Ui

    g = connect_google(project=o.project)
    try:
        run = Run(opts=o, google=g, journal=Journal(o.project), ui=Ui(interactive=False, output="json"))
        steps = _steps(o)
        Engine(run, steps, Consent(interactive=False, dry_run=True), o.project).plan()
        return inventory.collect(run, steps, observed=True), org_policies.read(g, o.project)
    finally:
        g.close()


def _recorded_registry_regions(project: str) -> tuple[str, ...]:
    """The registry regions `gcp` set up for the project on this machine (its journal), each listed."""
    from coiled_setup.journal import Journal
    from coiled_setup.options import region_error

    regions = Journal(project).settings().get("registry_regions")
    return tuple(r for r in regions if isinstance(r, str) and not region_error(r, True)) \
        if isinstance(regions, list) else ()


def gather(ro: ReviewOptions) -> dict:
    """The report's fields (the JSON document less its five common fields)."""
    o = _options(ro.project)
    note = None
    source = "templates"
    found = policies = None
    if ro.project:
        o.registry_regions = _recorded_registry_regions(o.project)
        try:
            found, policies = _observed(o)
            source = "project"
        except UserError as e:
            note = (f"Project {o.project} could not be read ({e.message.rstrip('.')}), so this report is made from "
                    "the templates and the defaults.")
    items = found if found is not None else _offline(o)
    for r in items:
        r.attrs.setdefault("optional", r.step in INSTANCE_STEPS)
    control, instance = needs.control_role(), needs.instance_role()
    holders: dict[str, list[str]] = {}
    for role_id, t in ((o.role_id, control), (INSTANCE_ROLE_ID, instance)):
        for p in t.permissions:
            holders.setdefault(p, []).append(role_id)
    data = explained()
    perms = []
    for p, e in data["permissions"].items():
        perms.append({"permission": p, "service": e["service"], "group": e["group"],
                      "group_title": data["groups"][e["group"]], "use": e["use"], "notes": e.get("notes", ""),
                      "attention": e.get("attention"), "predefined": list(e.get("predefined", [])),
                      "roles": holders.get(p, [])})
    key = next(r for r in items if r.kind == "key")
    return {
        "project": ro.project or None,
        "source": source,
        "note": note,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {"service_account": o.account_email, "role": o.role_name, "region": o.region,
                     "artifact_registry": o.gar, "repository": o.repository, "repositories": o.repositories},
        "roles": [
            {"role_id": o.role_id, "template": role_templates.CONTROL_PLANE, "title": control.title,
             "permissions": len(control.permissions), "member": f"serviceAccount:{o.account_email}",
             "optional": False},
            {"role_id": INSTANCE_ROLE_ID, "template": role_templates.INSTANCE, "title": instance.title,
             "permissions": len(instance.permissions), "member": f"serviceAccount:{o.instance_email}",
             "optional": True},
        ],
        "permissions": perms,
        "resources": [r.as_dict() for r in items if r.kind not in ("api", "key")],
        "apis": [{"name": r.name, "state": r.state} for r in items if r.kind == "api"],
        "key": {"account": key.attrs["account"], "state": key.state, "file": key.attrs["file"], "mode": "0600",
                "to_coiled": key.attrs["to_coiled"]},
        "org_policies": _org_policies(o, policies),
    }


def _org_policies(o: Options, policies: tuple[dict, str] | None) -> list[dict]:
    """What each organization policy that matters does to a run: read from the project when it could be (what the
    wizard would tell before its first write), else the constraints known to matter."""
    domains = {"constraint": DOMAIN_ORG_POLICY, "in_force": None,
               "finding": "Not needed by coiled-setup, which grants roles only to accounts of the project itself; "
                          "Coiled's own setup of a log sink to BigQuery may need an exception when it restricts the "
                          "members a policy may name (gcp warns, and lifts it for that moment only with "
                          "--allow-log-sink-exception)."}
    effective, skipped = policies or ({}, "")
    if policies is None or skipped:
        why = f" (the project's were not read: {skipped})" if skipped else ""
        return [{"constraint": KEY_ORG_POLICY, "in_force": None,
                 "finding": "When enforced on the project (or its managed twin "
                            f"constraints/{org_policies.KEY_MANAGED}), Google refuses to create the account's key: "
                            "the run stops before its first change and names the exemption an organisation policy "
                            f"administrator grants{why}."},
                {"constraint": f"constraints/{org_policies.LOCATIONS}", "in_force": None,
                 "finding": "When it does not allow the region, Google refuses the registry repository there (the "
                            "run stops before its first change) and Coiled's clusters cannot run there."},
                {"constraint": f"constraints/{org_policies.EXTERNAL_IP}", "in_force": None,
                 "finding": "When it refuses external IP addresses, Coiled's clusters, whose VMs get public IPs by "
                            "default, fail to start; the run warns and goes on."}, domains]
    found = {f.constraint: f for f in org_policies.findings(effective, o.project, o.region, key_needed=True,
                                                            repository_needed=o.gar, registry_regions=o.repo_regions)}
    out = []
    for c in org_policies.CONSTRAINTS:
        f = found.get(c)
        if f is None:
            out.append({"constraint": f"constraints/{c}", "in_force": False,
                        "finding": f"Nothing of this setup or of Coiled's clusters is blocked in project {o.project}."})
        else:
            stops = "the run stops before its first change" if f.blocks else "a warning; the run goes on"
            out.append({"constraint": f"constraints/{c}", "in_force": True, "exception": f.exception,
                        "finding": f"{f.sentence(o.project).rstrip('.')} ({stops})."})
    return out + [domains]


# -- Markdown ------------------------------------------------------------------------------------------

_STATE = {inventory.CREATE: "create", inventory.UPDATE: "update", inventory.EXISTS: "exists, kept",
          inventory.UNKNOWN: "create if missing"}
_KIND = {"service_account": "Service account", "custom_role": "Custom role", "project_binding": "Project IAM binding",
         "repository": "Artifact Registry repository", "repository_binding": "Repository IAM binding"}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _resource_line(r: dict) -> str:
    a = r["attrs"]
    if r["kind"] == "custom_role":
        what = f"`{r['name']}` ({count(len(a['permissions']), 'permission')}, title {a['title']}, stage {a['stage']})"
    elif r["kind"] in ("project_binding", "repository_binding"):
        where = "the project" if r["kind"] == "project_binding" else f"`{a['repository']}`"
        what = f"`{a['member']}` → `{a['role']}` on {where}, without a condition"
    elif r["kind"] == "repository":
        what = f"`{r['name']}` ({a['format']}, {a['location']})"
    else:
        what = f"`{r['name']}`"
    state = "used, never created or changed" if not r["managed"] else _STATE[r["state"]]
    optional = " (only with `--create-instance-service-account`)" if a.get("optional") else ""
    return f"| {_KIND.get(r['kind'], r['kind'])} | {_cell(what)} | {state}{optional} |"


def markdown(f: dict, version: str) -> str:
    lines = []
    s = f["settings"]
    where = f"project `{f['project']}`" if f["project"] else "a project"
    lines.append(f"# What coiled-setup would set up for Coiled in {where}")
    lines.append("")
    if f["source"] == "project":
        lines.append(f"Read from project `{f['project']}` on {f['generated']} by coiled-setup {version}; nothing "
                     "was changed. The last column says what a run with the default settings would do.")
    else:
        lines.append(f"Made offline by coiled-setup {version} on {f['generated']} from its bundled templates and "
                     "default settings; no project was read. Pass --project to see what already exists.")
    if f["note"]:
        lines.append("")
        lines.append(f"> {f['note']}")
    perms = f["permissions"]
    identity = [p["permission"] for p in perms if p["attention"] == "identity"]
    data = [p["permission"] for p in perms if p["attention"] == "data"]
    control, instance = f["roles"]
    lines += [
        "",
        "## Summary",
        "",
        f"- Coiled gets a service account, `{s['service_account']}`, and one JSON key of it, held by Coiled.",
        f"- The account is bound on the project, without a condition, to the custom role `{s['role']}`: "
        f"{count(control['permissions'], 'permission')} (template `{control['template']}`).",
        f"- Optional, with `--create-instance-service-account`: an account for cluster instances, bound to the "
        f"custom role `{instance['role_id']}` with {count(instance['permissions'], 'permission')} "
        f"(template `{instance['template']}`).",
    ]
    if s["artifact_registry"]:
        for repo in s.get("repositories") or [s["repository"]]:  # one per registry region
            lines.append(f"- A Docker repository `{repo}`, on which the account gets "
                         f"`{needs.REPO_ROLE}` (not with `--no-gar`).")
    lines += [
        "- Permissions that let the holder act as another identity: " + ", ".join(f"`{p}`" for p in identity) + ".",
        "- Permissions that read data that is not Coiled's: " + ", ".join(f"`{p}`" for p in data) + ".",
        "- A project-level grant applies to every resource of its kind in the project, not only Coiled's.",
        "",
        "## Resources and bindings",
        "",
        "| Kind | What | The run |",
        "|---|---|---|",
    ]
    lines += [_resource_line(r) for r in f["resources"]]
    lines += ["", "## APIs enabled", "", "| API | The run |", "|---|---|"]
    lines += [f"| `{a['name']}` | {_STATE[a['state']].replace('create', 'enable')} |" for a in f["apis"]]
    k = f["key"]
    where = (f"written to `{k['file']}` (mode {k['mode']}, in a 0700 directory) on the machine that runs coiled-setup"
             if k["file"] else "kept in memory only")
    now = _STATE[k["state"]].replace("exists, kept", "a live key exists, kept")
    lines += ["", "## The key", "",
              f"One user-managed JSON key of `{k['account']}` ({now}): "
              f"{where}, and sent to Coiled's workspace (its GCP credentials), which starts clusters with it. "
              "The private key is never printed, logged or stored in coiled-setup's journal. "
              f"`{command('rotate-key')}` replaces it; `{command('teardown')}` deletes it.",
              "", "## Organisation policies", ""]
    if any(p.get("in_force") is not None for p in f["org_policies"]):
        lines += [f"Read from project `{f['project']}` (the effective policy of each constraint), as a run reads "
                  "them before its first change:", ""]
    else:
        lines += ["Not read from a project; these are the ones known to matter:", ""]
    lines += [f"- `{p['constraint']}`: {p['finding']}" for p in f["org_policies"]]
    lines += ["", "## Permissions", "",
              "Each permission of the roles, what Coiled uses it for, and what a reviewer looks for. \"Also in\" "
              "names the smallest usual predefined roles that grant it too.", ""]
    groups: dict[str, list[dict]] = {}
    for p in perms:
        groups.setdefault(p["group_title"], []).append(p)
    for title, items in groups.items():
        lines += [f"### {title}", "", "| Permission | Service | Used for | Reviewer notes | Also in |",
                  "|---|---|---|---|---|"]
        for p in items:
            mark = {"identity": "**acts as another identity.** ", "data": "**reads data.** "}.get(p["attention"], "")
            roles = "" if p["roles"] == [control["role_id"]] else f" Role: {', '.join(p['roles'])}."
            lines.append(f"| `{p['permission']}` | {p['service']} | {_cell(p['use'])} | "
                         f"{_cell(mark + p['notes'] + roles).strip()} | {', '.join(p['predefined'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run(ro: ReviewOptions) -> int:
    from coiled_setup import __version__, report

    if ro.format not in ("markdown", "json"):
        raise BadInput(f"--format {ro.format!r} is not one of markdown, json: pass --format markdown or json.")
    if ro.project is not None:
        wrong = project_error(ro.project)
        if wrong:
            raise BadInput(wrong)
    fields = gather(ro)
    if ro.format == "json":
        if ro.output_file is None:
            report.emit("review", OK, None, **fields)
            return OK
        doc = {"schema_version": report.SCHEMA_VERSION, "tool_version": __version__, "command": "review",
               "exit_code": OK, "error": None, **fields}
        text = json.dumps(doc, indent=2) + "\n"
    else:
        text = markdown(fields, __version__)
    if ro.output_file is None:
        sys.stdout.write(text)
        return OK
    try:
        ro.output_file.write_text(text)
    except OSError as e:
        raise BadInput(f"The report cannot be written to {ro.output_file} ({e.strerror or e}): pass another "
                       "--output-file.") from None
    print(f"Wrote the review report to {ro.output_file}.", file=sys.stderr)
    return OK
