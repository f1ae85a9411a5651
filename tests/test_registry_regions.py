"""Several registry regions (`gcp --registry-regions`), end to end against the sandbox.

Regressions these tests guard: a region's repository or grant not made (or made one after the other's failure);
a re-run writing again; verify checking only the cluster region's repository; teardown leaving a repository it
created, or deleting one it did not; a re-run with fewer regions deleting the dropped region's repository; a bad
region found only after the first write.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

from coiled_setup.journal import Journal
from coiled_setup.needs import REPO_ROLE
from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients

P = "coiled-demo"
SA = f"serviceAccount:coiled@{P}.iam.gserviceaccount.com"
EAST = f"projects/{P}/locations/us-east1/repositories/coiled"
CENTRAL = f"projects/{P}/locations/us-central1/repositories/coiled"
FAST = dict(propagation_delay_s=0, operation_s=0.05, infra_s=0.05)
GCP = ("gcp", "--non-interactive", "--yes")
TWO = ("--registry-regions", "us-east1,us-central1")


def repos(c, region: str) -> list[str]:
    return [r.name for r in c.registry.list_repositories(parent=f"projects/{P}/locations/{region}")]


def granted(c, name: str) -> bool:
    policy = c.registry.get_iam_policy(request={"resource": name})
    return any(b.role == REPO_ROLE and SA in b.members for b in policy.bindings)


def writes(sb, since: int) -> list[dict]:
    return [x for x in calls(sb, since) if x["write"]]


def test_two_regions_are_made_kept_and_verified_each(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    out = cli(sb, *GCP, *TWO, "--output", "json", check=0)
    doc = json.loads(out.stdout)
    assert doc["repositories"] == [EAST, CENTRAL]
    registry = next(s for s in doc["steps"] if s["step"] == "registry")
    assert EAST in registry["detail"] and CENTRAL in registry["detail"]
    c = clients(sb)
    for name in (EAST, CENTRAL):
        assert c.registry.get_repository(name=name).format_.name == "DOCKER"
        assert granted(c, name)
    made = [x for x in calls(sb) if x["method"] == "CreateRepository"]
    assert len(made) == 2
    journal = json.loads(next(Path(sb.env["COILED_SETUP_HOME"]).rglob("journal-coiled-demo.json")).read_text())
    assert sorted(journal["created"]["repository"]) == [CENTRAL, EAST]  # several: a list
    assert journal["settings"]["registry_regions"] == ["us-central1"]

    mark = len(calls(sb))
    again = cli(sb, *GCP, *TWO, check=0)
    assert writes(sb, mark) == [] and "Nothing to change" in again.stdout

    checked = json.loads(cli(sb, "verify", "--output", "json", check=0).stdout)
    assert checked["repositories"] == [EAST, CENTRAL]
    held = [x for x in calls(sb, mark) if x["method"] == "TestIamPermissions" and "repositories" in x["resource"]]
    assert {x["resource"] for x in held} >= {EAST, CENTRAL}  # tested as the account, on each repository

    # Fewer regions: the dropped region's repository is kept, and said so.
    mark = len(calls(sb))
    fewer = json.loads(cli(sb, *GCP, "--registry-regions", "us-east1", "--output", "json", check=0).stdout)
    assert writes(sb, mark) == [] and fewer["repositories"] == [EAST]
    assert f"kept {CENTRAL}" in next(s for s in fewer["steps"] if s["step"] == "registry")["detail"]
    assert repos(c, "us-central1") == [CENTRAL]

    cli(sb, *GCP, *TWO, check=0)  # both again (verify checks the regions the last run set up)
    c.registry.delete_repository(name=CENTRAL).result()
    failed = json.loads(cli(sb, "verify", "--output", "json", check=1).stdout)
    repo = next(x for x in failed["checks"] if x["name"] == "registry_repository")
    assert repo["status"] == "failed" and "us-central1" in repo["detail"] and "us-east1" not in repo["detail"]


def test_exports_review_then_teardown_delete_each_repository_it_made_and_leave_a_foreign_one(make_sandbox, cli,
                                                                                                 tmp_path):
    sb = make_sandbox(**FAST)
    cli(sb, *GCP, *TWO, check=0)
    # The exports and the review name each region's repository and grant (a converged project: imported).
    tf, sh = tmp_path / "tf", tmp_path / "setup.sh"
    cli(sb, "gcp", "--non-interactive", *TWO, "--export", "terraform", str(tf), check=0)
    cli(sb, "gcp", "--non-interactive", *TWO, "--export", "gcloud", str(sh), check=0)
    main = (tf / "main.tf").read_text()
    imports = (tf / "imports.tf").read_text()
    for address in (f"{kind}.{label}" for kind in ("google_artifact_registry_repository",
                                                   "google_artifact_registry_repository_iam_member")
                    for label in ("coiled", "coiled_us_central1")):
        assert f'"{address.split(".")[1]}"' in main and address in imports
    assert 'location      = "us-central1"' in main and "locations/us-central1/repositories/coiled" in imports
    script = sh.read_text()
    assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0
    assert f"# resource: repository {EAST} " in script and f"# resource: repository {CENTRAL} " in script
    assert script.count("gcloud artifacts repositories add-iam-policy-binding") == 2
    review = json.loads(cli(sb, "review", "--project", P, "--format", "json", check=0).stdout)
    assert [r["name"] for r in review["resources"] if r["kind"] == "repository"] == [EAST, CENTRAL]
    assert all(r["state"] == "exists" for r in review["resources"] if r["kind"].startswith("repository"))
    c = clients(sb)
    foreign = c.registry.create_repository(parent=f"projects/{P}/locations/us-central1", repository_id="other",
                                           repository={"format_": 1}).result().name
    mark = len(calls(sb))
    out = cli(sb, "teardown", "--non-interactive", "--yes", "--delete-repository", "--output", "json", check=0)
    assert json.loads(out.stdout)["repositories"] == [EAST, CENTRAL]
    assert repos(c, "us-east1") == [] and repos(c, "us-central1") == [foreign]
    assert sum(x["method"] == "DeleteRepository" for x in writes(sb, mark)) == 2


def test_teardown_without_delete_repository_unbinds_each_region(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, *GCP, *TWO, check=0)
    out = cli(sb, "teardown", "--non-interactive", "--yes", check=0)
    c = clients(sb)
    for name in (EAST, CENTRAL):
        assert c.registry.get_repository(name=name) and not granted(c, name)
    assert CENTRAL in " ".join(out.stdout.split())  # left on purpose, named


def test_a_bad_registry_region_exits_2_before_any_write(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    out = cli(sb, *GCP, "--registry-regions", "us-east1,europe-west9", check=2)
    assert "europe-west9" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not [x for x in calls(sb) if x["write"]]
    out = cli(sb, *GCP, "--registry-regions", "us-east1,atlantis1", check=2)
    assert "atlantis1" in out.stderr
    assert not [x for x in calls(sb) if x["write"]]


def test_a_registry_region_the_organization_refuses_blocks_before_any_write(make_sandbox, cli):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["organization"] = {"id": "123456789", "customer_id": "C01abc234", "domain": "example.com",
                         "policies": {"gcp.resourceLocations": {"allowed_values": ["in:us-central1-locations"]}}}
    sb = make_sandbox(s, **FAST)
    out = cli(sb, *GCP, "--region", "us-central1", "--registry-regions", "us-central1,us-east1", check=5)
    assert "constraints/gcp.resourceLocations does not allow region us-east1" in " ".join(out.stdout.split())
    assert not [x for x in calls(sb) if x["write"]]


def test_an_older_journal_naming_one_repository_is_read(tmp_path):
    path = tmp_path / "journal.json"
    path.write_text(json.dumps({"project": P, "created": {"repository": EAST}, "keys": []}))
    j = Journal(P, path)
    assert j.created_repositories() == [EAST]
    j.created_repository(CENTRAL)
    assert Journal(P, path).created_repositories() == [EAST, CENTRAL]
    j.forget_repository(EAST)
    assert Journal(P, path).get("created") == {"repository": CENTRAL}  # one name: a string, as before
    j.forget_repository(CENTRAL)
    assert Journal(P, path).created_repositories() == []
