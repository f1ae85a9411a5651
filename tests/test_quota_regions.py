"""Quotas in every region a setup uses: the cluster region and each registry region, end to end.

One sandbox for the module whose two regions have different limits: us-east1 (the cluster region) fits 11 workers,
us-central1 (a registry region) a new project's 5. One `gcp --registry-regions us-central1` run, made by whichever
test asks for it first, records both regions for verify and `coiled-setup quotas`.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import calls

SERVICES = ["iam.googleapis.com", "cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com",
            "compute.googleapis.com", "cloudquotas.googleapis.com", "artifactregistry.googleapis.com",
            "bigquery.googleapis.com"]
CPUS, ADDRESSES = "CPUS-per-project-region", "IN-USE-ADDRESSES-per-project-region"
EAST = "us-east1: 11 workers of e2-standard-4 fit beside the scheduler"  # 500 GB SSD: 12 VMs
CENTRAL = "us-central1: 5 workers of e2-standard-4 fit beside the scheduler"  # 24 vCPUs: 6 VMs


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    from coiled_setup.sandbox import Config, Sandbox

    s = Sandbox({"projects": [{"id": "coiled-demo", "number": "123456789012", "services": SERVICES,
                               "quotas": {CPUS: {"default": 24, "us-east1": 400},
                                          ADDRESSES: {"default": 8, "us-east1": 100}}}],
                 "coiled": {"users": [{"token": "sandbox-1f3c9a7e-token", "username": "demo",
                                       "workspaces": ["demo"]}]}},
                Config(operation_s=0, propagation_delay_s=0, infra_s=0),
                state_dir=tmp_path_factory.mktemp("quota-regions")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def setup(sb, module_cli):
    """The gcp run with a registry region besides the cluster region: its output and its calls."""
    mark = len(calls(sb))
    out = module_cli(sb, "gcp", "--registry-regions", "us-central1", "--firewall-cidr", "203.0.113.0/24",
                     "--non-interactive", "--yes", env={"COLUMNS": "600"}, check=0)  # a table row on one line
    return out, calls(sb, mark)


def _json(proc) -> dict:
    return json.loads(proc.stdout)


def test_gcp_reads_both_regions_in_one_round_and_warns_for_the_small_one(setup):
    out, made = setup
    plan, summary = out.stdout.split("Summary", 1)
    for text in (plan, summary):
        assert EAST in text and CENTRAL in text
    assert "fewer than 10 workers in us-central1" in plan and "--region us-central1 --request cpus=44" in plan
    warnings = " ".join(out.stdout.split()).split("Warning: ")[1:]
    assert any(w.startswith("Only 5 workers fit in us-central1") for w in warnings)
    assert not any("fit in us-east1" in w for w in warnings)
    # One QuotaInfo holds every region's limit: both regions cost what the cluster region alone did.
    assert sum(1 for x in made if x["method"] == "GetQuotaInfo") == 3


def test_verify_checks_each_region_and_only_warns(setup, sb, module_cli):
    doc = _json(module_cli(sb, "verify", "--strict", "--output", "json", check=0))
    check = next(c for c in doc["checks"] if c["name"] == "quotas")
    assert check["status"] == "warning"
    assert EAST in check["detail"] and CENTRAL in check["detail"]
    assert [(r["region"], r["workers"], r["warning"]) for r in check["data"]["regions"]] == [
        ("us-east1", 11, False), ("us-central1", 5, True)]
    assert check["data"]["region"] == "us-east1" and check["data"]["workers"] == 11  # the cluster region's, as before
    assert "--region us-central1 --request cpus=44" in check["remedy"] and "--region us-east1" not in check["remedy"]


def test_quotas_shows_the_recorded_regions_unless_one_is_named_and_requests_for_the_cluster_region(setup, sb,
                                                                                                  module_cli):
    out = module_cli(sb, "quotas", check=0)
    assert "Quotas of coiled-demo in us-east1" in out.stdout and "Quotas of coiled-demo in us-central1" in out.stdout
    assert EAST in out.stdout and CENTRAL in out.stdout
    assert "Only 5 workers fit in us-central1" in out.stdout and "fit in us-east1" not in out.stdout
    doc = _json(module_cli(sb, "quotas", "--output", "json", check=0))
    assert doc["region"] == "us-east1" and doc["regions"] == ["us-east1", "us-central1"]
    assert [(r["region"], r["workers"]) for r in doc["readings"]] == [("us-east1", 11), ("us-central1", 5)]
    assert doc["quotas"] == doc["readings"][0]
    named = _json(module_cli(sb, "quotas", "--region", "us-central1", "--output", "json", check=0))
    assert named["regions"] == ["us-central1"] and [r["region"] for r in named["readings"]] == ["us-central1"]
    # --request asks in the cluster region only (its limit already: nothing the other tests read changes).
    asked = _json(module_cli(sb, "quotas", "--request", "cpus=400", "--email", "ops@example.com", "--output", "json",
                             check=0))
    assert [(r["region"], r["requested"], r["state"]) for r in asked["requests"]] == [("us-east1", 400, "granted")]


def test_an_interactive_quotas_offers_more_in_the_small_region_only(setup, sb, tmp_path):
    import os
    import sys

    import pexpect

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", COLUMNS="160", NO_COLOR="1")
    writes = sum(1 for x in calls(sb) if x["write"])
    child = pexpect.spawn(sys.executable, ["-m", "coiled_setup", "quotas"], env=env, encoding="utf-8", timeout=60,
                          dimensions=(50, 160))
    child.expect(r"Ask Google for 44 vCPUs, 11 addresses in (\S+) \(enough for 10 workers\)\? \[y/N\]")
    assert child.match.group(1) == "us-central1"
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Ask Google" not in child.before  # no offer for us-east1
    assert sum(1 for x in calls(sb) if x["write"]) == writes
