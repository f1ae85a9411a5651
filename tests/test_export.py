"""`gcp --export terraform DIR` and `--export gcloud FILE`: the run's exact plan, read from the project without one
write; Terraform parsed with an HCL parser (every resource and permission of the plan, nothing else; what exists
imported), the script checked by bash -n, for the same resources, and run against a stand-in gcloud."""

from __future__ import annotations

import os
import re
import subprocess
from importlib import resources

import pytest
import yaml

from tests.helpers import calls, clients

hcl2 = pytest.importorskip("hcl2")

ROLE = yaml.safe_load((resources.files("coiled_setup") / "templates" / "coiled-role.yaml").read_text())
INSTANCE_ROLE = yaml.safe_load(
    (resources.files("coiled_setup") / "templates" / "coiled-instance-role.yaml").read_text())

# The plan of a default run (Artifact Registry, no instance account), as Terraform addresses.
DEFAULT = {"google_project_service.compute", "google_project_service.artifactregistry",
           "google_project_service.logging", "google_project_service.monitoring", "google_project_service.bigquery",
           "google_service_account.coiled", "google_project_iam_custom_role.coiled",
           "google_project_iam_member.coiled", "google_artifact_registry_repository.coiled",
           "google_artifact_registry_repository_iam_member.coiled"}
INSTANCE = {"google_service_account.coiled_instance", "google_project_iam_custom_role.coiled_instance",
            "google_project_iam_member.coiled_instance"}
# The script's resource kinds, as Terraform's.
KIND = {"api": "google_project_service", "service_account": "google_service_account",
        "custom_role": "google_project_iam_custom_role", "project_binding": "google_project_iam_member",
        "repository": "google_artifact_registry_repository",
        "repository_binding": "google_artifact_registry_repository_iam_member", "key": "google_service_account_key"}


def _s(value):
    """A parsed HCL string without its quotes (python-hcl2 keeps them)."""
    return value[1:-1] if isinstance(value, str) and value.startswith('"') else value


def parse(directory) -> dict:
    """{resources: {address: attributes}, imports: {address: id}, variables: {...}, outputs: {...}}."""
    out = {"resources": {}, "imports": {}, "variables": {}, "outputs": {}}
    for f in sorted(directory.glob("*.tf")):
        with f.open() as fh:
            doc = hcl2.load(fh)
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, attrs in named.items():
                    out["resources"][f"{_s(rtype)}.{_s(name)}"] = attrs
        for block in doc.get("import", []):
            out["imports"][block["to"].strip("${}")] = _s(block["id"])
        for block in doc.get("variable", []):
            out["variables"].update({_s(k): v for k, v in block.items()})
        for block in doc.get("output", []):
            out["outputs"].update({_s(k): v for k, v in block.items()})
    return out


def writes(sb, since: int) -> list[dict]:
    return [c for c in calls(sb, since) if c["write"] or c["mutating"]]


def script_resources(text: str) -> set[str]:
    """The resources the script names, as Terraform addresses' types with Google's names."""
    return {f"{KIND[m.group(1)]} {m.group(2)}" for m in re.finditer(r"^# resource: (\w+) (.+?) \(", text, re.M)}


def test_terraform_and_gcloud_of_a_fresh_project_create_the_plan_and_import_what_exists(cli, make_sandbox, tmp_path):
    sb = make_sandbox(operation_s=0.0, infra_s=0.0)
    mark = len(calls(sb))
    tf = tmp_path / "tf"
    p = cli(sb, "gcp", "--non-interactive", "--export", "terraform", str(tf), check=0)
    assert "Nothing was changed." in p.stdout
    sh = tmp_path / "setup.sh"
    cli(sb, "gcp", "--non-interactive", "--create-instance-service-account", "--export", "gcloud", str(sh), check=0)
    assert len(calls(sb)) > mark and not writes(sb, mark)  # read, and never written

    got = parse(tf)
    assert set(got["resources"]) == DEFAULT
    role = got["resources"]["google_project_iam_custom_role.coiled"]
    assert [_s(p) for p in role["permissions"]] == ROLE["includedPermissions"]
    assert _s(role["role_id"]) == "coiled" and role["project"] == "${var.project}"
    assert _s(got["resources"]["google_project_iam_member.coiled"]["member"]) == \
        "serviceAccount:${google_service_account.coiled.email}"
    assert got["resources"]["google_artifact_registry_repository.coiled"]["location"] == "${var.region}"
    assert {k: _s(v["default"]) for k, v in got["variables"].items()} == {"project": sb.project, "region": "us-east1"}
    # The sandbox's project starts with Compute Engine, Logging, Monitoring and BigQuery on: they are imported,
    # everything else created.
    assert got["imports"] == {f"google_project_service.{s}": f"${{var.project}}/{s}.googleapis.com"
                              for s in ("compute", "logging", "monitoring", "bigquery")}
    assert "google_service_account_key" not in tf.joinpath("main.tf").read_text()

    text = sh.read_text()
    assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0
    assert os.access(sh, os.X_OK)
    assert script_resources(text) == {
        "google_project_service compute.googleapis.com", "google_project_service artifactregistry.googleapis.com",
        "google_project_service logging.googleapis.com", "google_project_service monitoring.googleapis.com",
        "google_project_service bigquery.googleapis.com",
        f"google_service_account coiled@{sb.project}.iam.gserviceaccount.com",
        f"google_service_account coiled-instance@{sb.project}.iam.gserviceaccount.com",
        f"google_project_iam_custom_role projects/{sb.project}/roles/coiled",
        f"google_project_iam_custom_role projects/{sb.project}/roles/coiled_instance",
        f"google_project_iam_member {sb.project} projects/{sb.project}/roles/coiled "
        f"serviceAccount:coiled@{sb.project}.iam.gserviceaccount.com",
        f"google_project_iam_member {sb.project} projects/{sb.project}/roles/coiled_instance "
        f"serviceAccount:coiled-instance@{sb.project}.iam.gserviceaccount.com",
        f"google_artifact_registry_repository projects/{sb.project}/locations/us-east1/repositories/coiled",
        f"google_artifact_registry_repository_iam_member projects/{sb.project}/locations/us-east1/repositories/coiled "
        f"roles/artifactregistry.repoAdmin serviceAccount:coiled@{sb.project}.iam.gserviceaccount.com",
        f"google_service_account_key coiled@{sb.project}.iam.gserviceaccount.com",
    }
    assert f"PERMISSIONS_COILED={','.join(ROLE['includedPermissions'])}\n" in text
    assert f"PERMISSIONS_COILED_INSTANCE={','.join(INSTANCE_ROLE['includedPermissions'])}\n" in text

    # Against a stand-in gcloud that finds nothing, every resource is created, the key last and 0600.
    fake = _fake_gcloud(tmp_path, finds=False)
    key = tmp_path / "keys" / "coiled.json"
    r = subprocess.run(["bash", str(sh)], env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}",
                                                "KEY_FILE": str(key)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ran = (tmp_path / "gcloud.log").read_text().splitlines()
    made = [line for line in ran if " create " in f" {line} " or line.startswith("services enable")]
    assert [m.split(" --", 1)[0] for m in made] == [
        "services enable compute.googleapis.com logging.googleapis.com monitoring.googleapis.com "
        "bigquery.googleapis.com artifactregistry.googleapis.com",
        "iam service-accounts create coiled", "iam roles create coiled",
        "artifacts repositories create coiled", "iam service-accounts create coiled-instance",
        "iam roles create coiled_instance",
        f"iam service-accounts keys create {key}"]
    assert oct(key.stat().st_mode & 0o777) == "0o600"

    # Finding everything, it creates nothing more (bindings are added again: gcloud's add is idempotent).
    (tmp_path / "gcloud.log").unlink()
    _fake_gcloud(tmp_path, finds=True)
    r = subprocess.run(["bash", str(sh)], env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}",
                                                "KEY_FILE": str(key)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    again = (tmp_path / "gcloud.log").read_text()
    assert " create " not in again and "iam roles update coiled " in again


def _fake_gcloud(tmp_path, finds: bool):
    """A gcloud that records its arguments; `describe` finds the resource or not; keys create writes a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "gcloud"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {tmp_path}/gcloud.log
case "$*" in
  *describe*) {'exit 0' if finds else 'exit 1'} ;;
  *"keys create"*) echo '{{}}' > "$5" ;;
esac
""")
    fake.chmod(0o755)
    return fake


def test_a_converged_project_exports_imports_not_creations_and_the_key_only_when_asked(cli, make_sandbox, tmp_path):
    sb = make_sandbox(operation_s=0.0, infra_s=0.0)
    cli(sb, "gcp", "--non-interactive", "--yes", "--create-instance-service-account", check=0)
    mark = len(calls(sb))
    tf = tmp_path / "tf"
    cli(sb, "gcp", "--non-interactive", "--export", "terraform", str(tf), "--terraform-key", "--output", "json",
        check=0)
    sh = tmp_path / "setup.sh"
    cli(sb, "gcp", "--non-interactive", "--export", "gcloud", str(sh), check=0)
    assert not writes(sb, mark)

    got = parse(tf)
    # The re-run keeps the instance account Coiled holds: it is part of the plan.
    assert set(got["resources"]) == DEFAULT | INSTANCE | {"google_service_account_key.coiled"}
    assert set(got["imports"]) == DEFAULT | INSTANCE  # everything but the key exists: imported
    assert got["imports"]["google_project_iam_member.coiled"] == ("${var.project} projects/${var.project}/roles/coiled "
                                                                   "serviceAccount:coiled@${var.project}.iam.gserviceaccount.com")
    assert got["imports"]["google_artifact_registry_repository.coiled"] == \
        "projects/${var.project}/locations/${var.region}/repositories/coiled"
    assert [_s(p) for p in got["resources"]["google_project_iam_custom_role.coiled_instance"]["permissions"]] == \
        INSTANCE_ROLE["includedPermissions"]
    # What the run made is what the export describes, setting for setting.
    real = clients(sb)
    for label, account_id in (("coiled", "coiled"), ("coiled_instance", "coiled-instance")):
        exported = got["resources"][f"google_service_account.{label}"]
        made = real.iam.get_service_account(
            name=f"projects/{sb.project}/serviceAccounts/{account_id}@{sb.project}.iam.gserviceaccount.com")
        assert (_s(exported["display_name"]), _s(exported["description"])) == (made.display_name, made.description)
        exported = got["resources"][f"google_project_iam_custom_role.{label}"]
        made = real.iam.get_role(request={"name": f"projects/{sb.project}/roles/{label}"})
        assert (_s(exported["title"]), _s(exported["description"]), _s(exported["stage"])) == \
            (made.title, made.description, made.stage.name)
        assert sorted(_s(p) for p in exported["permissions"]) == sorted(made.included_permissions)
    assert got["outputs"]["coiled_key_json"]["sensitive"] is True
    assert "in the Terraform state" in (tf / "main.tf").read_text()
    assert "(exists now: kept)" in sh.read_text() and "(missing now" not in sh.read_text()

    # A later export without the key leaves it out, and an export of the plain run drops the stale imports.
    cli(sb, "gcp", "--non-interactive", "--export", "terraform", str(tf), check=0)
    assert "google_service_account_key.coiled" not in parse(tf)["resources"]


def test_export_input_errors(cli):
    p = cli(None, "gcp", "--project", "some-project", "--export", "pulumi", "x", "--non-interactive")
    assert p.returncode == 2 and "not one of terraform, gcloud" in p.stderr
    p = cli(None, "gcp", "--project", "some-project", "--terraform-key", "--non-interactive")
    assert p.returncode == 2 and "--terraform-key goes with --export terraform" in p.stderr
