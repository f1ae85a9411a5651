"""The Google APIs Coiled uses, enabled as Coiled's own `coiled setup gcp` does: compute, logging, monitoring,
bigquery (unless --no-bigquery) and artifactregistry in one batch; verify checks the same set."""

from __future__ import annotations

import copy
import json

from coiled_setup import needs
from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients

ARGS = ("gcp", "--non-interactive", "--yes")
CORE = ["iam.googleapis.com", "cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com"]
LOGS = ["logging.googleapis.com", "monitoring.googleapis.com", "bigquery.googleapis.com"]


def bare(**project) -> dict:
    """A project with only the APIs every call needs on (an organisation's project often starts so)."""
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update({"services": CORE, **project})
    return s


def enabled(sb) -> set[str]:
    from google.cloud import service_usage_v1

    c = clients(sb)
    names = [f"projects/{sb.project}/services/{s}" for s in needs.services(True)]
    got = c.usage.batch_get_services(request={"parent": f"projects/{sb.project}", "names": names}).services
    return {s.config.name for s in got if s.state == service_usage_v1.State.ENABLED}


def test_every_api_coiled_uses_is_enabled_in_one_batch_after_one_read(make_sandbox, cli):
    sb = make_sandbox(bare(), operation_s=0.05, infra_s=0.05)
    out = cli(sb, *ARGS, "--output", "json", check=0)
    doc = json.loads(out.stdout)
    apis = next(s for s in doc["steps"] if s["step"] == "apis")
    assert apis["action"] == "create" and apis["detail"] == (
        "enable compute.googleapis.com, logging.googleapis.com, monitoring.googleapis.com, bigquery.googleapis.com, "
        "artifactregistry.googleapis.com")
    record = calls(sb)
    assert enabled(sb) == set(needs.services(True))
    assert [c["method"] for c in record if c["method"] == "BatchEnableServices"] == ["BatchEnableServices"]
    # What is on was read in one call, before the first write; no API was read one by one.
    assert ([c["method"] for c in record if c["method"] in ("GetService", "BatchGetServices")]
            == ["BatchGetServices"])
    first_write = next(i for i, c in enumerate(record) if c["write"])
    assert record[first_write]["method"] == "BatchEnableServices"
    # verify checks the same set, and finds it.
    v = json.loads(cli(sb, "verify", "--output", "json", check=0).stdout)
    apis = next(c for c in v["checks"] if c["name"] == "google_apis")
    assert apis["status"] == "ok" and all(s in apis["detail"] for s in LOGS)


def test_no_bigquery_leaves_it_off_and_verify_follows_the_recorded_choice(make_sandbox, cli):
    sb = make_sandbox(bare(), operation_s=0.05, infra_s=0.05)
    out = cli(sb, *ARGS, "--no-bigquery", check=0)
    assert "bigquery.googleapis.com" not in out.stdout
    assert enabled(sb) == set(needs.services(True)) - {"bigquery.googleapis.com"}
    assert json.loads(cli(sb, "verify", "--output", "json", check=0).stdout)["exit_code"] == 0
    # Asked to check BigQuery too, verify names it and the command that turns it on.
    v = json.loads(cli(sb, "verify", "--bigquery", "--output", "json", check=1).stdout)
    apis = next(c for c in v["checks"] if c["name"] == "google_apis")
    assert apis["status"] == "failed" and apis["data"] == {"disabled": ["bigquery.googleapis.com"]}
    assert apis["remedy"].startswith(f"gcloud services enable bigquery.googleapis.com --project {sb.project}")


def test_without_billing_nothing_is_enabled(make_sandbox, cli):
    sb = make_sandbox(bare(billing=False), operation_s=0.05)
    out = cli(sb, *ARGS, "--no-bigquery", check=1)
    assert "has no billing account" in out.stderr
    assert [c["method"] for c in calls(sb) if c["write"]] == ["BatchEnableServices"]
    assert enabled(sb) == set()
    assert "enable compute.googleapis.com, logging.googleapis.com, monitoring.googleapis.com, artifactregistry" \
        in " ".join(out.stdout.split())


# -- the project Google names when an API is off ------------------------------------------------------------------

QUOTA = "billing-proj"
QUOTA_NUMBER = "555000111222"


def with_quota_project(**quota) -> dict:
    """The usual project, and a second one the operator's calls are billed to (its quota project)."""
    s = copy.deepcopy(DEFAULT_SCENARIO)
    operator = f"serviceAccount:operator@{s['projects'][0]['id']}.iam.gserviceaccount.com"
    s["projects"].append({"id": QUOTA, "number": QUOTA_NUMBER, "services": CORE,
                          "bindings": [{"role": "roles/serviceusage.serviceUsageConsumer", "members": [operator]}],
                          **quota})
    return s


def test_service_disabled_names_the_quota_project_google_named(make_sandbox, cli):
    sb = make_sandbox(with_quota_project(services=CORE[:2]))  # Service Usage is off in the quota project only
    out = cli(sb, *ARGS, env={"GOOGLE_CLOUD_QUOTA_PROJECT": QUOTA}, check=1)
    sentence = " ".join(out.stderr.split())
    assert (f"The API serviceusage.googleapis.com is disabled in project {QUOTA} (number {QUOTA_NUMBER}), the quota "
            f"project your credentials bill their calls to, not {sb.project}: enable it there (gcloud services enable "
            f"serviceusage.googleapis.com --project {QUOTA})") in sentence
    assert "GOOGLE_CLOUD_QUOTA_PROJECT" in sentence and "Traceback" not in out.stderr
    assert [c for c in calls(sb) if c["write"]] == []
    # Without the quota project, the same project is fine: the remedy named the right one.
    cli(sb, *ARGS, "--dry-run", check=0)
    # A quota project the operator may not use is named too, as a missing permission of the operator.
    out = cli(sb, *ARGS, env={"GOOGLE_CLOUD_QUOTA_PROJECT": "nobodys-project"}, check=3)
    assert "quota project your credentials name, nobodys-project" in " ".join(out.stderr.split())
    assert [c for c in calls(sb) if c["write"]] == []
