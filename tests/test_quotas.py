"""Quotas end to end: the real CLI against the sandbox, inspected through the real Cloud Quotas client.

One sandbox with the Cloud Quotas API on (a new project's limits: 24 vCPUs, 500 GB SSD, 8 addresses) and one as a
new project has it (the API off), for the whole module; each test asks in a region of its own.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import calls, clients

SERVICES = ["iam.googleapis.com", "cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com",
            "compute.googleapis.com", "cloudquotas.googleapis.com"]
CPUS = "CPUS-per-project-region"
WRITES = ("CreateQuotaPreference", "UpdateQuotaPreference")


def _start(tmp_path_factory, name, scenario=None):
    from coiled_setup.sandbox import Config, Sandbox

    return Sandbox(scenario, Config(operation_s=0), state_dir=tmp_path_factory.mktemp(name)).start()


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    s = _start(tmp_path_factory, "quotas", {
        "projects": [{"id": "coiled-demo", "number": "123456789012", "services": SERVICES,
                      "quotas": {CPUS: {"default": 24, "us-west1": 400}}}],
        "coiled": {"users": [{"token": "sandbox-1f3c9a7e-token", "username": "demo", "workspaces": ["demo"]}]}})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def new_project(tmp_path_factory):
    s = _start(tmp_path_factory, "new-project")
    yield s
    s.stop()


def _json(proc) -> dict:
    return json.loads(proc.stdout)


def _limit(sb, region: str, quota_id: str = CPUS) -> int:
    c = clients(sb)
    info = c.quotas.get_quota_info(
        name=f"projects/{c.project}/locations/global/services/compute.googleapis.com/quotaInfos/{quota_id}")
    by = {dict(d.dimensions).get("region", ""): d.details.value for d in info.dimensions_infos}
    return by.get(region, by[""])


def _preferences(sb) -> dict:
    c = clients(sb)
    return {p.name: p for p in c.quotas.list_quota_preferences(parent=f"projects/{c.project}/locations/global")}


def _writes(sb) -> int:
    return sum(1 for x in calls(sb) if x["method"] in WRITES)


def test_quotas_reads_the_region_in_workers_with_a_table(sb, cli):
    out = cli(sb, "quotas", "--region", "us-east4", check=0)
    for row in ("CPUs", "24 vCPUs", "Persistent Disk SSD", "500 GB", "In-use IPv4 addresses", "8 addresses"):
        assert row in out.stdout
    assert "us-east4: 5 workers of e2-standard-4 fit beside the scheduler" in out.stdout
    assert "Only 5 workers fit in us-east4 (bound by CPUs)" in out.stdout and "--request cpus=44" in out.stdout
    doc = _json(cli(sb, "quotas", "--region", "us-west1", "--output", "json", check=0))
    assert doc["quotas"]["workers"] == 7 and doc["quotas"]["bound_by"] == "addresses"  # 400 vCPUs, 8 addresses
    assert {q["name"]: q["limit"] for q in doc["quotas"]["quotas"]} == {"cpus": _limit(sb, "us-west1"),
                                                                       "ssd_gb": 500, "addresses": 8}
    assert doc["requests"] == [] and _writes(sb) == 0


def test_gcp_shows_the_quotas_in_plan_and_summary_and_never_requests_unasked(sb, cli):
    before = _writes(sb)
    out = cli(sb, "gcp", "--region", "us-central1", "--firewall-cidr", "203.0.113.0/24", "--non-interactive", "--yes",
              check=0)
    plan, summary = out.stdout.split("Summary", 1)
    assert "us-central1: 5 workers of e2-standard-4 fit beside the scheduler" in plan
    assert "fewer than 10 workers" in plan
    assert "Quotas" in summary and "5 workers" in summary
    assert "Warning: Only 5 workers fit in us-central1" in out.stdout
    assert _writes(sb) == before
    doc = _json(cli(sb, "verify", "--strict", "--output", "json", check=0))  # a quota warning never fails verify
    check = next(c for c in doc["checks"] if c["name"] == "quotas")
    assert check["status"] == "warning" and check["data"]["workers"] == 5
    assert "--request cpus=44" in check["remedy"]


def test_a_request_under_the_threshold_is_granted_and_a_rerun_changes_nothing(sb, cli):
    doc = _json(cli(sb, "quotas", "--region", "us-south1", "--request", "cpus=60", "--email", "ops@example.com",
                    "--output", "json", check=0))
    (req,) = doc["requests"]
    assert (req["state"], req["requested"], req["granted"], req["changed"]) == ("granted", 60, 60, True)
    pref = _preferences(sb)[req["preference"]]
    assert pref.quota_config.preferred_value == 60 and not pref.reconciling and pref.contact_email == "ops@example.com"
    assert dict(pref.dimensions) == {"region": "us-south1"} and _limit(sb, "us-south1") == 60
    writes = _writes(sb)
    again = cli(sb, "quotas", "--region", "us-south1", "--request", "cpus=60", check=0)
    assert "already asked for (nothing changed) 60 vCPUs: granted" in again.stdout
    assert _writes(sb) == writes


def test_a_request_above_the_threshold_is_pending_with_the_console_link_and_updates_in_place(sb, cli):
    first = _json(cli(sb, "quotas", "--region", "us-west2", "--request", "cpus=50", "--output", "json", check=0))
    doc = _json(cli(sb, "quotas", "--region", "us-west2", "--request", "cpus=200", "--output", "json", check=0))
    (req,) = doc["requests"]
    assert (req["state"], req["requested"], req["granted"], req["changed"]) == ("pending", 200, 50, True)
    assert req["preference"] == first["requests"][0]["preference"]  # the same preference, updated
    pref = _preferences(sb)[req["preference"]]
    assert pref.reconciling and pref.quota_config.preferred_value == 200 and _limit(sb, "us-west2") == 50
    writes = _writes(sb)
    again = cli(sb, "quotas", "--region", "us-west2", "--request", "cpus=200", check=0)
    assert "already asked for (nothing changed) 200 vCPUs: pending Google's review" in again.stdout
    assert "https://console.cloud.google.com/iam-admin/quotas/qirs?project=coiled-demo" in again.stdout
    assert _writes(sb) == writes


def test_a_bad_request_is_one_sentence_and_exit_2(sb, cli):
    out = cli(sb, "quotas", "--request", "gpus=4", check=2)
    assert "names no quota coiled-setup knows" in out.stderr and "Traceback" not in out.stderr


def _key_without_quota_roles(sb) -> str:
    c = clients(sb)
    sa = c.iam.create_service_account(name=f"projects/{c.project}", account_id="no-quota-viewer")
    policy = c.projects.get_iam_policy(request={"resource": f"projects/{c.project}"})
    policy.bindings.add(role="roles/viewer", members=[f"serviceAccount:{sa.email}"])
    c.projects.set_iam_policy(request={"resource": f"projects/{c.project}", "policy": policy})
    key = c.iam.create_service_account_key(name=sa.name).private_key_data
    path = sb.state_dir / "no-quota-viewer.json"
    path.write_bytes(key)
    return str(path)


def test_without_the_permission_quotas_says_so_in_one_sentence(sb, cli):
    key = _key_without_quota_roles(sb)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": key}
    out = cli(sb, "quotas", "--region", "us-east5", env=env, check=3)
    assert "cannot read quotas in project coiled-demo (it lacks cloudquotas.quotas.get" in out.stderr
    assert "Traceback" not in out.stderr
    # With an account named (any key will do), verify does not depend on what the module's other tests set up.
    doc = _json(cli(sb, "verify", "--output", "json", "--key-file", key, "--no-coiled", env=env))
    check = next(c for c in doc["checks"] if c["name"] == "quotas")
    assert check["status"] == "skipped" and "cloudquotas.quotas.get" in check["detail"]


def test_a_new_project_without_the_api_is_told_in_one_sentence_and_gcp_goes_on(new_project, cli):
    out = cli(new_project, "gcp", "--dry-run", "--non-interactive", check=0)
    assert "The Cloud Quotas API is disabled in project coiled-demo, so its quotas were not read" in out.stdout
    c = clients(new_project)
    api = c.usage.get_service(request={"name": f"projects/{c.project}/services/cloudquotas.googleapis.com"})
    assert api.state.name == "DISABLED"  # offered, never enabled unasked
    doc = _json(cli(new_project, "quotas", "--output", "json", check=1))
    assert "--enable-api" in doc["error"]
    doc = _json(cli(new_project, "quotas", "--enable-api", "--output", "json", check=0))
    assert doc["quotas"]["workers"] == 5


def test_an_interactive_run_offers_the_request_when_the_warning_fires(sb, tmp_path):
    import os
    import sys

    import pexpect

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", COLUMNS="160", NO_COLOR="1")
    child = pexpect.spawn(sys.executable, ["-m", "coiled_setup", "quotas", "--region", "europe-west1"], env=env,
                          encoding="utf-8", timeout=60, dimensions=(50, 160))
    child.expect(r"Ask Google for 44 vCPUs, 11 addresses in europe-west1 \(enough for 10 workers\)\? \[y/N\]")
    child.sendline("y")
    child.expect("Contact email")
    child.sendline("")
    child.expect("In-use IPv4 addresses in europe-west1: asked for 11 addresses: granted")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert _limit(sb, "europe-west1") == 44 and _limit(sb, "europe-west1", "IN-USE-ADDRESSES-per-project-region") == 11
