"""`coiled-setup review`: the permissions explained (every permission of both bundled roles, and no other), offline
without credentials, and from a project read through the sandbox without a single write."""

from __future__ import annotations

import json
from importlib import resources

import yaml

from tests.helpers import calls

TEMPLATES = resources.files("coiled_setup") / "templates"


def _template(name: str) -> list[str]:
    return yaml.safe_load((TEMPLATES / name).read_text())["includedPermissions"]


def _explained() -> dict:
    return yaml.safe_load((TEMPLATES / "permissions-explained.yaml").read_text())


def test_every_permission_of_both_roles_is_explained_and_nothing_else():
    data = _explained()
    want = set(_template("coiled-role.yaml")) | set(_template("coiled-instance-role.yaml"))
    assert set(data["permissions"]) == want
    catalogue = json.loads((resources.files("coiled_setup") / "sandbox" / "data" / "permissions.json").read_text())
    for p, e in data["permissions"].items():
        assert p in catalogue["permissions"], p  # a real permission, as Google names it
        assert e["group"] in data["groups"], p
        assert e["service"] == f"{p.split('.', 1)[0]}.googleapis.com", p
        assert e["use"].strip().endswith("."), p
        assert e.get("attention") in (None, "identity", "data"), p
        assert all(r.startswith("roles/") for r in e.get("predefined", [])), p
    # What a reviewer looks for first is marked.
    assert data["permissions"]["iam.serviceAccounts.actAs"]["attention"] == "identity"
    assert data["permissions"]["storage.objects.get"]["attention"] == "data"


def test_offline_needs_no_credentials_and_lists_every_permission_resource_and_api(cli):
    p = cli(None, "review", check=0)  # the fixture's environment holds no Google credentials
    text = p.stdout
    assert text.startswith("# What coiled-setup would set up for Coiled in a project\n")
    for perm in set(_template("coiled-role.yaml")) | set(_template("coiled-instance-role.yaml")):
        assert f"| `{perm}` |" in text
    for title in _explained()["groups"].values():
        assert f"### {title}" in text
    for what in ("`coiled@PROJECT_ID.iam.gserviceaccount.com` | create if missing",
                 "`projects/PROJECT_ID/roles/coiled` (81 permissions",
                 "`roles/artifactregistry.repoAdmin` on `projects/PROJECT_ID/locations/us-east1/repositories/coiled`",
                 "`compute.googleapis.com` | enable if missing", "## The key", "iam.disableServiceAccountKeyCreation"):
        assert what in text, what

    doc = json.loads(cli(None, "review", "--format", "json", check=0).stdout)  # the contract checks its schema
    assert doc["source"] == "templates" and doc["project"] is None
    assert {r["kind"] for r in doc["resources"]} == {"service_account", "custom_role", "project_binding",
                                                      "repository", "repository_binding"}
    assert {r["state"] for r in doc["resources"]} == {"unknown"}
    assert len(doc["permissions"]) == 81
    assert next(p for p in doc["permissions"] if p["permission"] == "logging.logEntries.create")["roles"] == \
        ["coiled", "coiled_instance"]


def test_a_project_that_cannot_be_read_is_said_and_the_report_made_offline(cli, tmp_path):
    out = tmp_path / "report.md"
    p = cli(None, "review", "--project", "some-project", "--output-file", str(out), check=0)
    text = out.read_text()
    assert "> Project some-project could not be read (No Google credentials found" in text
    assert "Made offline" in text and f"Wrote the review report to {out}" in p.stderr
    assert cli(None, "review", "--format", "yaml").returncode == 2


def test_with_a_project_it_says_what_exists_and_writes_nothing(cli, make_sandbox):
    sb = make_sandbox(operation_s=0.0, infra_s=0.0)
    fresh = json.loads(cli(sb, "review", "--project", sb.project, "--format", "json", check=0).stdout)
    assert fresh["source"] == "project" and fresh["note"] is None
    states = {(r["kind"], r["name"]): r["state"] for r in fresh["resources"] if not r["attrs"]["optional"]}
    assert set(states.values()) == {"create"}
    assert {a["name"]: a["state"] for a in fresh["apis"]} == {
        "compute.googleapis.com": "exists", "logging.googleapis.com": "exists", "monitoring.googleapis.com": "exists",
        "bigquery.googleapis.com": "exists", "artifactregistry.googleapis.com": "create"}
    mark = len(calls(sb))
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    done_at = len(calls(sb))
    text = cli(sb, "review", "--project", sb.project, check=0).stdout
    assert f"Read from project `{sb.project}`" in text
    assert f"`coiled@{sb.project}.iam.gserviceaccount.com` | exists, kept |" in text
    assert f"`projects/{sb.project}/roles/coiled` (81 permissions, title coiled, stage GA) | exists, kept |" in text
    assert "(a live key exists, kept)" in text
    assert "`coiled-instance@" in text and "create (only with `--create-instance-service-account`)" in text
    made = calls(sb)
    assert mark > 0 and not [c for c in made[done_at:] if c["write"] or c["mutating"]]
    assert not [c for c in made[:mark] if c["write"] or c["mutating"]]
