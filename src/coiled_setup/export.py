"""`gcp --export`: a run's exact plan, for teams that apply IAM changes themselves, as Terraform for the Google
provider or as a shell script of gcloud commands. Made from the inventory of the planned steps: what exists is
imported (Terraform) or found and kept (gcloud), what is missing is created. Writes local files only."""

from __future__ import annotations

import datetime
import re
import shlex
from pathlib import Path

from coiled_setup import inventory
from coiled_setup.errors import BadInput
from coiled_setup.needs import ARTIFACT_REGISTRY
from coiled_setup.options import Options
from coiled_setup.remedies import command
from coiled_setup.wording import count

KINDS = ("terraform", "gcloud")
PROVIDER_VERSION = ">= 5.0"
TERRAFORM_VERSION = ">= 1.6"  # import blocks whose id refers to variables

_TF_TYPE = {"api": "google_project_service", "service_account": "google_service_account",
            "custom_role": "google_project_iam_custom_role", "project_binding": "google_project_iam_member",
            "repository": "google_artifact_registry_repository",
            "repository_binding": "google_artifact_registry_repository_iam_member", "key": "google_service_account_key"}


def kind_error(kind: str) -> str | None:
    if kind not in KINDS:
        return (f"--export {kind!r} is not one of terraform, gcloud: pass --export terraform DIR or --export gcloud "
                "FILE.")
    return None


def exported(items: list[inventory.Resource], with_key: bool) -> list[inventory.Resource]:
    """The resources an export holds: those the run manages (the key in Terraform only when asked)."""
    return [r for r in items if r.managed and (r.kind != "key" or with_key)]


def _label(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower()) or "coiled"


def label(r: inventory.Resource) -> str:
    """The Terraform label of a resource (google_service_account.coiled, google_project_service.compute, ...)."""
    if r.kind == "api":
        return _label(r.name.split(".", 1)[0])
    if r.kind in ("service_account", "key"):
        return _label(r.name.split("@", 1)[0])
    if r.kind == "custom_role":
        return _label(r.attrs["role_id"])
    if r.kind == "project_binding":
        return _label(r.attrs["role"].rsplit("/", 1)[-1])
    # The repository and its grant: the cluster region's are "coiled", another registry region's name it.
    return "coiled" if r.attrs.get("cluster_region", True) else f"coiled_{_label(r.attrs['location'])}"


def _tf_location(r: inventory.Resource) -> str:
    """The cluster region follows var.region; another registry region is written out."""
    return "var.region" if r.attrs.get("cluster_region", True) else _q(r.attrs["location"])


def address(r: inventory.Resource) -> str:
    return f"{_TF_TYPE[r.kind]}.{label(r)}"


def _q(text: str) -> str:
    """An HCL string literal (no interpolation of what it holds)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "$${").replace("%{", "%%{") + '"'


class _Names:
    """Google's names written with var.project and var.region, so the configuration follows its variables."""

    def __init__(self, o: Options):
        self.project, self.region = o.project, o.region

    def email(self, email: str) -> str:
        suffix = f"@{self.project}.iam.gserviceaccount.com"
        if email.endswith(suffix):
            return email[: -len(suffix)] + "@${var.project}.iam.gserviceaccount.com"
        return email

    def role(self, name: str) -> str:
        prefix = f"projects/{self.project}/roles/"
        return "projects/${var.project}/roles/" + name[len(prefix):] if name.startswith(prefix) else name

    def member(self, member: str) -> str:
        kind, _, email = member.partition(":")
        return f"{kind}:{self.email(email)}"

    def repository(self, r: inventory.Resource) -> str:
        where = "${var.region}" if r.attrs.get("cluster_region", True) else r.attrs["location"]
        return "projects/${var.project}/locations/" + where + "/repositories/" + inventory.REPOSITORY_ID

    def import_id(self, r: inventory.Resource) -> str:
        if r.kind == "api":
            return "${var.project}/" + r.name
        if r.kind == "service_account":
            return "projects/${var.project}/serviceAccounts/" + self.email(r.name)
        if r.kind == "custom_role":
            return self.role(r.name)
        if r.kind == "project_binding":
            return f"${{var.project}} {self.role(r.attrs['role'])} {self.member(r.attrs['member'])}"
        if r.kind == "repository":
            return self.repository(r)
        if r.kind == "repository_binding":
            return f"{self.repository(r)} {r.attrs['role']} {self.member(r.attrs['member'])}"
        raise ValueError(r.kind)


def _ref_member(member: str, by_email: dict[str, str]) -> str:
    """A member naming an account of this configuration refers to it (so Terraform orders the two)."""
    kind, _, email = member.partition(":")
    if email in by_email:
        return '"' + kind + ":${" + by_email[email] + '.email}"'
    return _q(member)


def _header(o: Options, version: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"coiled-setup {version} on {when}, from what project {o.project} holds now"


def terraform(items: list[inventory.Resource], o: Options, with_key: bool, version: str) -> dict[str, str]:
    """The files of a Terraform configuration (name -> text) holding exactly the plan's resources."""
    items = exported(items, with_key)
    names = _Names(o)
    accounts = {r.name: address(r) for r in items if r.kind == "service_account"}
    roles = {r.name: address(r) for r in items if r.kind == "custom_role"}
    apis = {r.name: address(r) for r in items if r.kind == "api"}
    repos = {r.name: address(r) for r in items if r.kind == "repository"}
    blocks: list[str] = []
    for r in items:
        a = r.attrs
        body: list[str] = []
        note = ""
        if r.kind == "api":
            body += ["project            = var.project", f"service            = {_q(r.name)}",
                     "disable_on_destroy = false # other workloads may use it too"]
        elif r.kind == "service_account":
            body += ["project      = var.project", f"account_id   = {_q(a['account_id'])}",
                     f"display_name = {_q(a['display_name'])}", f"description  = {_q(a['description'])}"]
        elif r.kind == "custom_role":
            body += ["project     = var.project", f"role_id     = {_q(a['role_id'])}",
                     f"title       = {_q(a['title'])}",
                     f"description = {_q(a['description'])}", f"stage       = {_q(a['stage'])}",
                     "permissions = ["] + [f"  {_q(p)}," for p in a["permissions"]] + ["]"]
            if a.get("deleted"):
                note = ("# Soft-deleted in the project now: the Google provider undeletes a deleted role of the same "
                        "id when it creates it.\n")
        elif r.kind == "project_binding":
            role = f"{roles[a['role']]}.name" if a["role"] in roles else _q(a["role"])
            body += ["project = var.project", f"role    = {role}", f"member  = {_ref_member(a['member'], accounts)}"]
        elif r.kind == "repository":
            body += ["project       = var.project", f"location      = {_tf_location(r)}",
                     f"repository_id = {_q(a['repository_id'])}", f"format        = {_q(a['format'])}",
                     f"description   = {_q(a['description'])}"]
            if ARTIFACT_REGISTRY in apis:
                body.append(f"depends_on    = [{apis[ARTIFACT_REGISTRY]}]")
        elif r.kind == "repository_binding":
            repo = repos.get(a["repository"])
            body += ["project    = var.project", f"location   = {_tf_location(r)}",
                     f"repository = {repo}.name" if repo else f"repository = {_q(inventory.REPOSITORY_ID)}",
                     f"role       = {_q(a['role'])}", f"member     = {_ref_member(a['member'], accounts)}"]
        elif r.kind == "key":
            note = ("# The key Coiled gets. Its private half is in the Terraform state (base64, unencrypted unless the "
                    "backend encrypts it):\n# whoever can read the state can act as the account. Without "
                    "--terraform-key the key stays out of Terraform.\n")
            body += [f"service_account_id = {accounts.get(r.name, _q(r.name))}.name" if r.name in accounts
                     else f"service_account_id = {_q(r.name)}"]
        if r.state in (inventory.EXISTS, inventory.UPDATE) and r.kind != "key":
            note += "# Exists in the project now: imported (imports.tf)" + (
                ", then updated to this.\n" if r.state == inventory.UPDATE else ".\n")
        t, lab = _TF_TYPE[r.kind], label(r)
        blocks.append(note + f'resource "{t}" "{lab}" {{\n' + "".join(f"  {line}\n" for line in body) + "}\n")
    key = next((r for r in items if r.kind == "key"), None)
    if key is not None:
        blocks.append(f'output "{label(key)}_key_json" {{\n  description = "The key file Coiled gets (JSON)."\n'
                      f"  value       = base64decode({address(key)}.private_key)\n  sensitive   = true\n}}\n")
    main = (f"# The Google Cloud resources `{command('gcp')}` would make for Coiled, written by "
            f"{_header(o, version)}.\n"
            "# Resources that exist already are imported (imports.tf), not created. The key Coiled needs is "
            + ("managed here too (see its resource).\n" if with_key else
               "not in this configuration, so its\n# private half never reaches the Terraform state; after `terraform "
               "apply`, make it and hand it to Coiled with\n"
               f"#   {command('gcp')} --project {o.project} --region {o.region}\n"
               "# (it finds everything in place, writes the key 0600 and sends it to Coiled), or with "
               "`--terraform-key` to manage the key here.\n")
            + "\nterraform {\n"
            f"  required_version = {_q(TERRAFORM_VERSION)}\n"
            "  required_providers {\n"
            f"    google = {{\n      source  = \"hashicorp/google\"\n      version = {_q(PROVIDER_VERSION)}\n    }}\n"
            "  }\n}\n\n"
            'provider "google" {\n  project = var.project\n  region  = var.region\n}\n\n' + "\n".join(blocks))
    variables = (f'variable "project" {{\n  description = "The Google Cloud project Coiled uses."\n'
                 f"  type        = string\n  default     = {_q(o.project)}\n}}\n\n"
                 f'variable "region" {{\n  description = "The region of Coiled\'s clusters and registry."\n'
                 f"  type        = string\n  default     = {_q(o.region)}\n}}\n")
    files = {"main.tf": main, "variables.tf": variables}
    imports = [r for r in items if r.state in (inventory.EXISTS, inventory.UPDATE) and r.kind != "key"]
    if imports:
        blocks = [f"import {{\n  to = {address(r)}\n  id = {_quote_id(names.import_id(r))}\n}}\n" for r in imports]
        files["imports.tf"] = ("# What exists in the project already: Terraform adopts it instead of creating it.\n\n"
                               + "\n".join(blocks))
    return files


def _quote_id(text: str) -> str:
    """An import id: a string holding ${var.…} references (the only interpolation in it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- gcloud ---------------------------------------------------------------------------------------------

def _sh(text: str) -> str:
    return shlex.quote(text)


def _shp(text: str, o: Options) -> str:
    """A shell word with the project and region as the script's variables."""
    parts = re.split(f"({re.escape(o.project)}|{re.escape(o.region)})", text)
    out = []
    for p in parts:
        if p == o.project:
            out.append('"${PROJECT}"')
        elif p == o.region:
            out.append('"${REGION}"')
        elif p:
            out.append(shlex.quote(p))
    return "".join(out) or "''"


_NOW = {inventory.CREATE: "missing now: created", inventory.UPDATE: "exists now but differs: updated",
        inventory.EXISTS: "exists now: kept", inventory.UNKNOWN: "created if missing"}


def gcloud(items: list[inventory.Resource], o: Options, version: str) -> str:
    """A bash script of gcloud commands making exactly the plan's resources, each looked for before it is made."""
    items = exported(items, with_key=True)
    lines = [
        "#!/usr/bin/env bash",
        f"# The Google Cloud resources `{command('gcp')}` would make for Coiled, as gcloud commands, written by",
        f"# {_header(o, version)}.",
        "# Review it, then run it as an account that may make these changes. Each step looks for what it makes",
        "# first (describe) and creates only what is missing, so running it again changes nothing more.",
        "# Each '# resource:' line names one resource of the plan.",
        "set -euo pipefail",
        "",
        f'PROJECT="${{PROJECT:-{o.project}}}"',
        f'REGION="${{REGION:-{o.region}}}"',
    ]
    apis = [r for r in items if r.kind == "api"]
    if apis:
        lines += ["", "# Google APIs (enabling one that is on changes nothing)"]
        lines += [f"# resource: api {r.name} ({_NOW[r.state]})" for r in apis]
        lines.append("gcloud services enable " + " ".join(_sh(r.name) for r in apis) + ' --project "${PROJECT}"')
    # The key last: it is made once everything it needs is in place.
    for r in sorted(items, key=lambda r: r.kind == "key"):
        a = r.attrs
        head = f"# resource: {r.kind} {r.name} ({_NOW[r.state]})"
        if r.kind == "service_account":
            email = _shp(r.name, o)
            lines += ["", head,
                      f'if ! gcloud iam service-accounts describe {email} --project "${{PROJECT}}" >/dev/null 2>&1; '
                      "then",
                      f'  gcloud iam service-accounts create {_sh(a["account_id"])} --project "${{PROJECT}}" '
                      f'--display-name {_sh(a["display_name"])} --description {_sh(a["description"])}',
                      "fi"]
        elif r.kind == "custom_role":
            rid = _sh(a["role_id"])
            var = "PERMISSIONS_" + label(r).upper()
            common = (f'--project "${{PROJECT}}" --title {_sh(a["title"])} --description {_sh(a["description"])} '
                      f'--stage {_sh(a["stage"])} --permissions "${{{var}}}"')
            lines += ["", head, f"# exactly these {count(len(a['permissions']), 'permission')}:",
                      f"{var}={_sh(','.join(a['permissions']))}",
                      f'if deleted=$(gcloud iam roles describe {rid} --project "${{PROJECT}}" '
                      "--format='value(deleted)' 2>/dev/null); then",
                      '  if [ -n "${deleted}" ]; then',
                      f'    gcloud iam roles undelete {rid} --project "${{PROJECT}}" --quiet >/dev/null',
                      "  fi",
                      f"  gcloud iam roles update {rid} {common} --quiet >/dev/null",
                      "else",
                      f"  gcloud iam roles create {rid} {common}",
                      "fi"]
        elif r.kind == "project_binding":
            lines += ["", head, "# (adding a binding that is there changes nothing)",
                      f'gcloud projects add-iam-policy-binding "${{PROJECT}}" --member {_shp(a["member"], o)} '
                      f'--role {_shp(a["role"], o)} --condition None >/dev/null']
        elif r.kind == "repository":
            where = '"${REGION}"' if a.get("cluster_region", True) else _sh(a["location"])
            lines += ["", head,
                      f'if ! gcloud artifacts repositories describe {_sh(a["repository_id"])} --location {where} '
                      '--project "${PROJECT}" >/dev/null 2>&1; then',
                      f'  gcloud artifacts repositories create {_sh(a["repository_id"])} --repository-format docker '
                      f'--location {where} --project "${{PROJECT}}" --description {_sh(a["description"])}',
                      "fi"]
        elif r.kind == "repository_binding":
            where = '"${REGION}"' if a.get("cluster_region", True) else _sh(a["location"])
            lines += ["", head, "# (adding a binding that is there changes nothing)",
                      f"gcloud artifacts repositories add-iam-policy-binding {inventory.REPOSITORY_ID} "
                      f'--location {where} --project "${{PROJECT}}" --member {_shp(a["member"], o)} '
                      f"--role {_sh(a['role'])} >/dev/null"]
        elif r.kind == "key":
            default = a["file"] or f"{o.account_id}-key.json"
            lines += ["", head,
                      "# The key Coiled gets: its private half is a secret, written 0600 and never printed.",
                      f'KEY_FILE="${{KEY_FILE:-{default}}}"',
                      'if [ ! -e "${KEY_FILE}" ]; then',
                      '  (umask 077 && mkdir -p "$(dirname "${KEY_FILE}")" && '
                      f'gcloud iam service-accounts keys create "${{KEY_FILE}}" --iam-account {_shp(r.name, o)} '
                      '--project "${PROJECT}")',
                      "fi",
                      f'echo "Now hand the key to Coiled: {command("gcp")} --project ${{PROJECT}} --region ${{REGION}} '
                      '--key-file ${KEY_FILE}"']
    return "\n".join(lines) + "\n"


def write(kind: str, target: Path, items: list[inventory.Resource], o: Options, with_key: bool,
          version: str) -> list[Path]:
    """Writes the export; answers the files written."""
    try:
        if kind == "terraform":
            if target.exists() and not target.is_dir():
                raise BadInput(f"--export terraform {target}: that is a file, not a directory: pass a directory.")
            target.mkdir(parents=True, exist_ok=True)
            written = []
            for name, text in terraform(items, o, with_key, version).items():
                (target / name).write_text(text)
                written.append(target / name)
            stale = target / "imports.tf"
            if stale not in written and stale.exists():
                stale.unlink()  # an earlier export's imports would adopt what this plan creates
            return written
        if target.is_dir():
            raise BadInput(f"--export gcloud {target}: that is a directory: pass a file name.")
        target.write_text(gcloud(items, o, version))
        target.chmod(0o755)
        return [target]
    except OSError as e:
        raise BadInput(f"The export cannot be written to {target} ({e.strerror or e}): pass another path.") from None
