"""`coiled-setup verify`: after a real wizard run, each way the setup can break makes exactly its check fail.

Every breakage is made through the real Google client libraries (or Coiled's HTTP API), and every
verify run is checked to have written nothing: the sandbox records each call with its `write` flag.
"""

from __future__ import annotations

import json
import time

import pytest
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.type import expr_pb2

from coiled_setup import role_templates
from tests.helpers import calls, clients, http

WS = "demo"
ALL = ("key_file", "service_account", "custom_role", "binding", "effective_permissions", "google_apis",
       "registry_api", "registry_repository", "registry_access", "instance_account", "coiled_credentials",
       "coiled_backend", "firewall", "quotas", "org_policies")
NARROW = "203.0.113.0/24"
FAST = dict(propagation_delay_s=0, operation_s=0.05, infra_s=0.05)


# -- helpers -------------------------------------------------------------------------------------------------

def journal(sb) -> dict:
    return json.loads((sb.state_dir / "home" / "state" / f"journal-{sb.project}.json").read_text())


def account(sb) -> str:
    return f"coiled@{sb.project}.iam.gserviceaccount.com"


def role_name(sb) -> str:
    return f"projects/{sb.project}/roles/coiled"


def repo_name(sb) -> str:
    return f"projects/{sb.project}/locations/us-east1/repositories/coiled"


def converge(sb) -> str:
    return f"coiled-setup gcp --project {sb.project}"


def run_verify(cli, sb, *args, code=None):
    """Runs verify with --output json; asserts it wrote nothing and printed no traceback; answers (proc, doc)."""
    before = len(calls(sb))
    proc = cli(sb, "verify", "--output", "json", *args, check=code)
    made = calls(sb, since=before)
    writes = [c for c in made if c["write"] or c["mutating"]]
    assert not writes, f"verify wrote: {writes}"
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == proc.returncode
    return proc, doc, made


def statuses(doc) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"]}


def check(doc, name) -> dict:
    return next(c for c in doc["checks"] if c["name"] == name)


def expect(doc, **special):
    """Every check ok except those named, which have the given status."""
    # A new project has the Cloud Quotas API off: its quotas are skipped, in one sentence.
    want = {n: special.get(n, "skipped" if n == "quotas" else "ok") for n in ALL}
    assert statuses(doc) == want, json.dumps(doc["checks"], indent=1)
    for c in doc["checks"]:
        assert set(c) >= {"name", "status", "detail", "remedy"}
        if c["status"] in ("failed", "warning"):
            assert c["remedy"], c
    summary = doc["summary"]
    for s in ("ok", "failed", "warning", "skipped"):
        assert summary[s] == sum(1 for v in want.values() if v == s)


@pytest.fixture
def ready(make_sandbox, cli):
    """A sandbox after a full wizard run: instance account, narrow firewall, everything in place."""
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", "--create-instance-service-account", "--firewall-cidr", NARROW,
        check=0)
    return sb


def project_policy(c):
    req = iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/{c.project}")
    req.options.requested_policy_version = 3
    return c.projects.get_iam_policy(request=req)


def without_member(policy, role: str, member: str) -> None:
    for i, b in enumerate(policy.bindings):
        if b.role == role and not b.HasField("condition") and member in b.members:
            b.members.remove(member)
            if not b.members:
                del policy.bindings[i]
            return
    raise AssertionError(f"{member} not bound to {role}")


# -- the whole setup ---------------------------------------------------------------------------------------

def test_all_checks_pass_after_the_wizard(ready, cli):
    sb = ready
    before = len(calls(sb))
    proc = cli(sb, "verify", check=0)
    made = calls(sb, since=before)
    assert made and not [c for c in made if c["write"] or c["mutating"]]
    assert "All 14 checks passed (1 skipped)." in proc.stdout
    for title in ("Key file", "Service account", "Custom role", "Project IAM binding", "Permissions in effect",
                  "Artifact Registry API", "Registry repository", "Registry access", "Instance service account",
                  "Coiled credentials", "Coiled backend options", "Scheduler firewall"):
        assert title in proc.stdout
    # The permissions are proven as the account itself, with its key, in one TestIamPermissions call.
    tests = [c for c in made if c["method"] == "TestIamPermissions" and c["service"] == "resourcemanager"]
    assert [c["caller"] for c in tests] == [account(sb)]
    # Nothing secret is printed.
    key = json.loads(open(journal(sb)["key_file"]).read())
    out = proc.stdout + proc.stderr
    assert "PRIVATE KEY" not in out and key["private_key"][40:80] not in out
    assert sb.coiled_token not in out and key["private_key_id"] not in out

    _, doc, _ = run_verify(cli, sb, code=0)
    expect(doc)
    assert doc["project"] == sb.project and doc["service_account"] == account(sb) and doc["workspace"] == WS
    assert doc["summary"]["passed"] is True

    # Without Coiled and Artifact Registry: those checks are skipped, the firewall too (a workspace setting: the
    # dask config decides nothing); the instance account is the one the wizard recorded.
    _, doc, made = run_verify(cli, sb, "--no-coiled", "--no-gar", code=0)
    expect(doc, registry_api="skipped", registry_repository="skipped", registry_access="skipped",
           coiled_credentials="skipped", coiled_backend="skipped", firewall="skipped")
    assert "--no-coiled" in check(doc, "firewall")["detail"]
    assert not [c for c in made if c["service"] in ("coiled", "artifactregistry")]


# -- one breakage per check ------------------------------------------------------------------------------------

def test_deleted_key(ready, cli):
    sb = ready
    kid = journal(sb)["key_id"]
    clients(sb).iam.delete_service_account_key(name=f"projects/-/serviceAccounts/{account(sb)}/keys/{kid}")
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, key_file="failed", effective_permissions="skipped", coiled_credentials="failed",
           coiled_backend="skipped")
    c = check(doc, "key_file")
    assert "no longer exists" in c["detail"] and c["remedy"].startswith(converge(sb))
    # Coiled holds that same key: it cannot work either.
    c = check(doc, "coiled_credentials")
    assert f"key {kid[:12]}" in c["detail"] and "no longer exists" in c["detail"]
    assert c["remedy"].startswith(converge(sb))

    # Operator credentials Google refuses are bad input, said once, not a failure per check.
    proc = cli(sb, "verify", env={"GOOGLE_APPLICATION_CREDENTIALS": journal(sb)["key_file"]}, check=2)
    assert "Google did not accept your credentials" in proc.stderr and "Traceback" not in proc.stderr


def test_disabled_account(ready, cli):
    sb = ready
    clients(sb).iam.disable_service_account(request={"name": f"projects/-/serviceAccounts/{account(sb)}"})
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, service_account="failed", effective_permissions="skipped")
    c = check(doc, "service_account")
    assert "disabled" in c["detail"]
    assert c["remedy"] == f"gcloud iam service-accounts enable {account(sb)} --project {sb.project}"


def test_role_missing_and_extra_permissions(ready, cli):
    sb = ready
    c = clients(sb)
    role = c.iam.get_role(request={"name": role_name(sb)})
    removed, added = "compute.disks.create", "storage.buckets.list"
    perms = [p for p in role.included_permissions if p != removed] + [added]
    c.iam.update_role(request={"name": role_name(sb), "role": {"included_permissions": perms, "etag": role.etag},
                               "update_mask": {"paths": ["included_permissions"]}})
    _, doc, _ = run_verify(cli, sb, code=1)
    # Google, asked as the account, confirms the one permission it no longer holds.
    expect(doc, custom_role="failed", effective_permissions="failed")
    r = check(doc, "custom_role")
    assert r["data"] == {"missing": [removed], "extra": [added]}
    assert f"missing 1: {removed}" in r["detail"] and f"extra 1: {added}" in r["detail"]
    assert r["remedy"].startswith(converge(sb))
    e = check(doc, "effective_permissions")
    assert e["data"] == {"not_held": [removed]}
    assert e["remedy"].startswith("Fix the custom role and binding above")


def test_binding_removed(ready, cli):
    sb = ready
    c = clients(sb)
    policy = project_policy(c)
    without_member(policy, role_name(sb), f"serviceAccount:{account(sb)}")
    c.projects.set_iam_policy(request={"resource": f"projects/{sb.project}", "policy": policy})
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, binding="failed", effective_permissions="failed")
    b = check(doc, "binding")
    assert "is not bound" in b["detail"] and b["remedy"].startswith(converge(sb))
    assert len(check(doc, "effective_permissions")["data"]["not_held"]) == len(role_templates.load().permissions)


def test_binding_only_conditional(ready, cli):
    sb = ready
    c = clients(sb)
    member = f"serviceAccount:{account(sb)}"
    policy = project_policy(c)
    without_member(policy, role_name(sb), member)
    policy.bindings.append(policy_pb2.Binding(
        role=role_name(sb), members=[member],
        condition=expr_pb2.Expr(title="until-2031", expression='request.time < timestamp("2031-01-01T00:00:00Z")'),
    ))
    policy.version = 3
    c.projects.set_iam_policy(request={"resource": f"projects/{sb.project}", "policy": policy})
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, binding="failed", effective_permissions="failed")
    b = check(doc, "binding")
    assert "only under the condition 'until-2031'" in b["detail"]
    assert b["data"]["condition"]["title"] == "until-2031"
    assert b["remedy"].startswith(converge(sb)) and "unconditional" in b["remedy"]


def test_repository_deleted(ready, cli):
    sb = ready
    clients(sb).registry.delete_repository(name=repo_name(sb))
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, registry_repository="failed", registry_access="skipped")
    r = check(doc, "registry_repository")
    assert "no repository coiled in us-east1" in r["detail"] and r["remedy"].startswith(converge(sb))


def test_repo_admin_grant_dropped(ready, cli):
    sb = ready
    c = clients(sb)
    policy = c.registry.get_iam_policy(request={"resource": repo_name(sb), "options": {"requested_policy_version": 3}})
    without_member(policy, "roles/artifactregistry.repoAdmin", f"serviceAccount:{account(sb)}")
    c.registry.set_iam_policy(request={"resource": repo_name(sb), "policy": policy})
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, registry_access="failed")
    r = check(doc, "registry_access")
    assert "does not hold roles/artifactregistry.repoAdmin" in r["detail"]
    assert r["remedy"].startswith(converge(sb)) and "add-iam-policy-binding" in r["remedy"]


def test_registry_api_disabled(ready, cli):
    sb = ready
    clients(sb).usage.disable_service(
        request={"name": f"projects/{sb.project}/services/artifactregistry.googleapis.com"})
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, registry_api="failed", registry_repository="skipped", registry_access="skipped")
    r = check(doc, "registry_api")
    assert "disabled" in r["detail"]
    assert r["remedy"].startswith(f"gcloud services enable artifactregistry.googleapis.com --project {sb.project}")


def test_coiled_credentials_removed(ready, cli):
    sb = ready
    journal_key = journal(sb)["key_file"]
    status, _ = http("DELETE", f"{sb.coiled_url}/api/v2/cloud-credentials/{WS}/gcp", token=sb.coiled_token)
    assert status == 204
    _, doc, _ = run_verify(cli, sb, code=1)
    # Without credentials Coiled names no instance account (the recorded one is checked); the firewall is still
    # the workspace's setting.
    expect(doc, coiled_credentials="failed", coiled_backend="skipped")
    r = check(doc, "coiled_credentials")
    assert "has no Google Cloud credentials" in r["detail"]
    assert r["remedy"].startswith(f"{converge(sb)} --workspace {WS}")
    assert "workspace's settings" in check(doc, "firewall")["detail"]

    # Told which instance account to expect, verify checks it without Coiled or the journal.
    (sb.state_dir / "home" / "state" / f"journal-{sb.project}.json").unlink()
    _, doc, _ = run_verify(cli, sb, "--key-file", journal_key, "--instance-service-account",
                           f"coiled-instance@{sb.project}.iam.gserviceaccount.com", code=1)
    expect(doc, coiled_credentials="failed", coiled_backend="skipped")
    _, doc, _ = run_verify(cli, sb, "--key-file", journal_key, code=1)
    expect(doc, coiled_credentials="failed", coiled_backend="skipped", instance_account="skipped")


# -- warnings, bad input, and what the operator cannot read -------------------------------------------------------

def test_open_firewall_warns_and_a_shared_instance_account_fails(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    _, doc, _ = run_verify(cli, sb, code=0)
    expect(doc, firewall="warning", instance_account="skipped")
    fw = check(doc, "firewall")
    assert "from anywhere (0.0.0.0/0)" in fw["detail"] and "--firewall-cidr" in fw["remedy"]
    # gcp refuses Coiled's own account for instances (exit 2): verify fails it too.
    _, doc, _ = run_verify(cli, sb, "--instance-service-account", account(sb), code=1)
    expect(doc, firewall="warning", instance_account="failed")
    r = check(doc, "instance_account")
    assert account(sb) in r["detail"] and "--create-instance-service-account" in r["remedy"]
    _, doc, _ = run_verify(cli, sb, "--strict", code=1)
    expect(doc, firewall="warning", instance_account="skipped")
    assert doc["summary"]["passed"] is False


def test_no_key_file_is_bad_input(sandbox, cli):
    sb = sandbox
    before = len(calls(sb))
    proc = cli(sb, "verify", check=2)
    assert "pass --key-file" in proc.stderr and f"coiled-setup gcp --project {sb.project}" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    proc = cli(sb, "verify", "--key-file", str(sb.state_dir / "nowhere.json"), check=2)
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(sb, "verify", "--output", "json", check=2)
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 2 and "pass --key-file" in doc["error"] and doc["checks"] == []
    # Nothing recorded: Coiled's workspace was asked which account it holds (none), and nothing was written.
    made = calls(sb, since=before)
    assert not [c for c in made if c["write"] or c["mutating"]]
    assert {c["service"] for c in made} <= {"coiled"}
    # With --no-coiled nothing but the local files can tell: no call at all.
    before = len(calls(sb))
    cli(sb, "verify", "--no-coiled", check=2)
    assert calls(sb, since=before) == []


def test_unusable_key_file_fails_its_check(ready, cli, tmp_path):
    sb = ready
    broken = tmp_path / "broken.json"
    key = json.loads(open(journal(sb)["key_file"]).read())
    del key["client_x509_cert_url"]
    broken.write_text(json.dumps(key))
    broken.chmod(0o600)
    _, doc, _ = run_verify(cli, sb, "--key-file", str(broken), code=1)
    # The account is still known from the journal; only what needs the key is skipped.
    expect(doc, key_file="failed", effective_permissions="skipped", coiled_credentials="ok")
    assert "client_x509_cert_url" in check(doc, "key_file")["detail"]
    broken.chmod(0o644)
    _, doc, _ = run_verify(cli, sb, "--key-file", str(broken), code=1)
    assert check(doc, "key_file")["remedy"] == f"chmod 600 {broken}"


def test_operator_lacking_a_read_permission_is_named(ready, cli):
    sb = ready
    c = clients(sb)
    policy = project_policy(c)
    operator = f"serviceAccount:{sb.operator_email}"
    without_member(policy, "roles/owner", operator)
    for role in ("roles/iam.serviceAccountKeyAdmin", "roles/resourcemanager.projectIamAdmin",
                 "roles/serviceusage.serviceUsageAdmin", "roles/artifactregistry.admin"):
        policy.bindings.append(policy_pb2.Binding(role=role, members=[operator]))
    c.projects.set_iam_policy(request={"resource": f"projects/{sb.project}", "policy": policy})
    _, doc, _ = run_verify(cli, sb, code=1)
    expect(doc, custom_role="failed", instance_account="failed", org_policies="skipped")
    for name in ("custom_role", "instance_account"):
        r = check(doc, name)
        assert f"{sb.operator_email} lacks the permission iam.roles.get" in r["detail"]
        assert "roles/viewer" in r["remedy"]
        assert r["data"] == {"missing_permission": "iam.roles.get"}


def test_wall_time_at_100ms_latency(ready, cli):
    """Independent reads go together: a handful of round trips, not one per check."""
    sb = ready
    status, _ = http("POST", f"{sb.coiled_url}/_sandbox/config", {"latency_ms": 100})
    assert status == 200
    start = time.monotonic()
    proc, doc, made = run_verify(cli, sb, code=0)
    wall = time.monotonic() - start
    expect(doc)
    # Measured from the call record: first call to last answer, imports and process start excluded.
    span = max(c["time"] for c in made) - min(c["time"] for c in made)
    print(f"\nverify at 100 ms latency: {len(made)} calls, calls span {span:.2f} s, process wall {wall:.2f} s")
    assert span < 1.0 + 0.1  # the record marks each answer after its 100 ms sleep


def test_transient_faults_are_retried(ready, cli):
    sb = ready
    # Random faults, and one sure to be met whatever order verify's concurrent reads draw them in.
    status, _ = http("POST", f"{sb.coiled_url}/_sandbox/config", {"fault_rate": 0.1, "seed": 7,
                                                                   "fail_method": "GetIamPolicy",
                                                                   "fail_code": "UNAVAILABLE", "fail_times": 1})
    assert status == 200
    _, doc, made = run_verify(cli, sb, code=0)
    expect(doc)
    # Faults were met: calls that failed with an injected transient error, each retried to the same verdict.
    failed = [c for c in made if (c["fault"] or c["method"] == "GetIamPolicy") and c["code"] not in ("OK", 200)]
    print(f"\nfaults met and retried: {len(failed)}")
    assert failed, "no fault was injected into verify's calls: the test tested nothing"
    assert {c["code"] for c in failed} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", 429, 502, 503}


# -- verify checks the setup that was made, not the defaults -----------------------------------------------------

def test_verify_checks_the_region_and_settings_the_wizard_recorded(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", "--region", "us-central1", "--role-id", "coiled_ops",
        "--firewall-cidr", NARROW, check=0)
    assert journal(sb)["settings"]["region"] == "us-central1"
    assert "private_key" not in json.dumps(journal(sb))
    _, doc, _ = run_verify(cli, sb, code=0)
    expect(doc, instance_account="skipped")
    assert "locations/us-central1/repositories/coiled" in check(doc, "registry_repository")["detail"]
    assert "projects/coiled-demo/roles/coiled_ops" in check(doc, "custom_role")["detail"]
    assert "region us-central1" in check(doc, "coiled_backend")["detail"]
    proc = cli(sb, "verify", check=0)
    assert "region us-central1 (as the setup recorded)" in proc.stdout

    # A remedy names the region (and role) actually used, so following it never moves the setup.
    c = clients(sb)
    c.registry.delete_repository(name=f"projects/{sb.project}/locations/us-central1/repositories/coiled").result()
    _, doc, _ = run_verify(cli, sb, code=1)
    remedy = check(doc, "registry_repository")["remedy"]
    assert "--region us-central1" in remedy and "--role-id coiled_ops" in remedy

    # Flags still override what was recorded.
    _, doc, _ = run_verify(cli, sb, "--region", "us-east1", code=1)
    assert "locations/us-east1/" in check(doc, "registry_repository")["detail"]


def test_without_a_journal_verify_reads_the_region_from_coiled(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", "--region", "us-central1", "--firewall-cidr", NARROW, check=0)
    key = journal(sb)["key_file"]
    (sb.state_dir / "home" / "state" / f"journal-{sb.project}.json").unlink()
    _, doc, _ = run_verify(cli, sb, "--key-file", key, code=0)
    expect(doc, instance_account="skipped")
    assert "locations/us-central1/" in check(doc, "registry_repository")["detail"]


def test_without_artifact_registry_recorded_its_checks_are_skipped(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", "--no-gar", "--firewall-cidr", NARROW, check=0)
    _, doc, _ = run_verify(cli, sb, code=0)
    expect(doc, registry_api="skipped", registry_repository="skipped", registry_access="skipped",
           instance_account="skipped")


def test_no_local_key_verifies_everything_but_what_needs_the_key(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", "--no-local-key", "--firewall-cidr", NARROW, check=0)
    for args in ((), ("--strict",)):
        _, doc, made = run_verify(cli, sb, *args, code=0)
        expect(doc, key_file="skipped", effective_permissions="skipped", instance_account="skipped")
        assert "--no-local-key" in check(doc, "key_file")["detail"]
        assert "needs the key file; pass --key-file" in check(doc, "effective_permissions")["detail"]
        assert "needs the key file" in check(doc, "registry_access")["detail"]
        assert "enabled on Google" in check(doc, "coiled_credentials")["detail"]
        assert doc["key_file"] is None and doc["service_account"] == account(sb)
        # Only the operator called Google: there is no key to call it as the account.
        callers = {c["caller"] for c in made if c["service"] != "coiled"}
        assert callers == {f"operator@{sb.project}.iam.gserviceaccount.com"}
    proc = cli(sb, "verify", check=0)
    assert "no key file" in proc.stdout
    assert "All 11 checks passed (4 skipped, 2 of them needing the key file: pass --key-file)." in proc.stdout

    # The key Coiled holds is deleted on Google: that is found without the key file too.
    held = http("GET", f"{sb.coiled_url}/_sandbox/state")[1]["coiled"]["workspaces"][WS]["credentials"]
    clients(sb).iam.delete_service_account_key(
        name=f"projects/-/serviceAccounts/{account(sb)}/keys/{held['private_key_id']}")
    _, doc, _ = run_verify(cli, sb, code=1)
    r = check(doc, "coiled_credentials")
    assert r["status"] == "failed" and "no longer exists" in r["detail"]
    assert "--no-local-key" in r["remedy"]  # the fix keeps the key out of files, as chosen


def test_verify_checks_the_workspace_the_wizard_set_up(make_sandbox, cli):
    from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO, DEFAULT_TOKEN

    scen = json.loads(json.dumps(DEFAULT_SCENARIO))
    scen["coiled"]["users"] = [{"token": DEFAULT_TOKEN, "username": "demo", "workspaces": ["demo", "team"]}]
    sb = make_sandbox(scen, **FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", "--workspace", "team", "--firewall-cidr", NARROW, check=0)
    _, doc, _ = run_verify(cli, sb, code=0)  # not the personal workspace demo, which holds nothing
    assert doc["workspace"] == "team"
    expect(doc, instance_account="skipped")
    _, doc, _ = run_verify(cli, sb, "--workspace", "demo", code=1)  # the flag still wins
    assert check(doc, "coiled_credentials")["status"] == "failed"
