"""End to end: the real CLI against the sandbox, then the sandbox inspected through the real clients."""

import copy
import json
import stat
import time
from pathlib import Path

import pytest
import yaml

from coiled_setup import role_templates
from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients, http, killed_when, state

P = "coiled-demo"
SA = f"coiled@{P}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{SA}"
ROLE = f"projects/{P}/roles/coiled"
REPO = f"projects/{P}/locations/us-east1/repositories/coiled"
ARGS = ("gcp", "--non-interactive", "--yes")


def journal(sb) -> dict:
    return json.loads((sb.state_dir / "home" / "state" / f"journal-{P}.json").read_text())


def writes(sb, since=0) -> list[dict]:
    return [c for c in calls(sb, since) if c["write"]]


def user_keys(c, email=SA) -> list[str]:
    resp = c.iam.list_service_account_keys(request={"name": f"projects/-/serviceAccounts/{email}", "key_types": [1]})
    return [k.name.rsplit("/", 1)[1] for k in resp.keys]


def bound(policy, role, member) -> bool:
    return any(b.role == role and member in b.members and not b.HasField("condition") for b in policy.bindings)


def project_policy(c):
    return c.projects.get_iam_policy(request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})


def scenario(**changes) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update(changes)
    return s


def test_fresh_run_builds_everything_and_a_second_run_changes_nothing(make_sandbox, cli):
    sb = make_sandbox()
    out = cli(sb, *ARGS, check=0)
    c = clients(sb)

    # Account and exactly one user-managed key, in a private file that google-auth loads.
    assert c.iam.get_service_account(name=f"projects/-/serviceAccounts/{SA}").email == SA
    (kid,) = user_keys(c)
    key_path = Path(journal(sb)["key_file"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    data = json.loads(key_path.read_text())
    assert data["private_key_id"] == kid
    assert len({k for k in data if data[k]} & set(
        "type project_id private_key_id private_key client_email client_id auth_uri token_uri "
        "auth_provider_x509_cert_url client_x509_cert_url".split())) == 10
    as_account = clients(sb, data)
    held = as_account.projects.test_iam_permissions(resource=f"projects/{P}",
                                                    permissions=["compute.instances.create"]).permissions
    assert list(held) == ["compute.instances.create"]

    # Role equal to the template, bound without condition; the foreign conditional binding survives.
    role = c.iam.get_role(request={"name": ROLE})
    assert list(role.included_permissions) == list(role_templates.load().permissions)
    pol = project_policy(c)
    assert bound(pol, ROLE, MEMBER)
    assert any(b.HasField("condition") and b.role == "roles/storage.objectViewer" for b in pol.bindings)
    assert pol.version == 3

    # Registry, grant, Coiled (its own settings hold the defaults); the dask config is left alone unless asked.
    repo = c.registry.get_repository(name=REPO)
    assert repo.format_.name == "DOCKER"
    assert bound(c.registry.get_iam_policy(request={"resource": REPO}), "roles/artifactregistry.repoAdmin", MEMBER)
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["credentials"]["client_email"] == SA and ws["credentials"]["private_key_id"] == kid
    assert ws["global_infra"]["state"] == "created" and ws["regions"][0]["component"]["state"] == "created"
    assert ws["settings"]["scheduler_firewall"] == {"ingress": [{"ports": [22, 8786, 8787], "cidr": "0.0.0.0/0"}]}
    assert [(r["region"], r["default"]) for r in ws["regions"]] == [("us-east1", True)]
    assert not (sb.state_dir / "dask" / "coiled.yaml").exists()
    assert "PRIVATE KEY" not in out.stdout + out.stderr

    # The second run: nothing to do, and not one write attempted.
    mark = len(calls(sb))
    again = cli(sb, *ARGS, check=0)
    assert "Nothing to change" in again.stdout
    assert writes(sb, mark) == []
    assert user_keys(c) == [kid]


def test_dry_run_writes_nothing(make_sandbox, cli):
    sb = make_sandbox()
    out = cli(sb, *ARGS, "--dry-run", check=0)
    assert "Dry run" in out.stdout and "create" in out.stdout
    assert writes(sb) == []


def test_json_output_has_every_step_and_no_secret(make_sandbox, cli):
    sb = make_sandbox()
    out = cli(sb, *ARGS, "--output", "json", check=0)
    doc = json.loads(out.stdout)
    assert doc["exit_code"] == 0 and doc["error"] is None
    assert [s["step"] for s in doc["steps"]] == ["apis", "account", "role", "binding", "registry", "confirm", "upload",
                                               "quotas"]
    assert all(s["result"] == "ok" for s in doc["steps"])
    assert "PRIVATE KEY" not in out.stdout and sb.coiled_token not in out.stdout + out.stderr


def test_operator_without_a_permission_stops_before_any_write(make_sandbox, cli):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["operator"]["roles"] = ["roles/editor"]  # lacks iam.roles.create and setIamPolicy
    sb = make_sandbox(s)
    out = cli(sb, *ARGS, check=3)
    assert "iam.roles.create" in out.stderr and "roles/iam.roleAdmin" in out.stderr
    assert "resourcemanager.projects.setIamPolicy" in out.stderr
    assert "Traceback" not in out.stderr
    assert writes(sb) == []


def test_drifted_project_converges(make_sandbox, cli):
    perms = list(role_templates.load().permissions)
    sb = make_sandbox(scenario(
        service_accounts=[{"id": "coiled", "keys": 2}],
        roles=[{"id": "coiled", "title": "coiled", "description": "coiled-externally-hosted",
                "permissions": perms[5:] + ["storage.buckets.delete"], "deleted": True}],
        services=["iam.googleapis.com", "cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com",
                  "compute.googleapis.com", "logging.googleapis.com", "artifactregistry.googleapis.com"],
        repositories=[{"location": "us-east1", "id": "coiled", "format": "DOCKER",
                       "bindings": [{"role": "roles/artifactregistry.reader", "members": ["user:bo@example.com"]}]}],
    ))
    c = clients(sb)
    before = set(user_keys(c))
    out = cli(sb, *ARGS, check=0)
    assert "undelete" in out.stdout and "storage.buckets.delete" in out.stdout
    role = c.iam.get_role(request={"name": ROLE})
    assert not role.deleted and list(role.included_permissions) == perms
    assert bound(project_policy(c), ROLE, MEMBER)
    rpol = c.registry.get_iam_policy(request={"resource": REPO})
    assert bound(rpol, "roles/artifactregistry.repoAdmin", MEMBER)
    assert bound(rpol, "roles/artifactregistry.reader", "user:bo@example.com")
    # The two keys we did not make are left alone; one new key is ours.
    keys = set(user_keys(c))
    assert before < keys and len(keys - before) == 1

    # Drift after set-up: binding removed and our key deleted; a re-run restores both.
    pol = project_policy(c)
    for b in pol.bindings:
        if b.role == ROLE:
            b.members.remove(MEMBER)
    c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": pol})
    (ours,) = keys - before
    c.iam.delete_service_account_key(name=f"projects/-/serviceAccounts/{SA}/keys/{ours}")
    cli(sb, *ARGS, check=0)
    assert bound(project_policy(c), ROLE, MEMBER)
    new = set(user_keys(c)) - before
    assert len(new) == 1 and ours not in new
    assert state(sb)["coiled"]["workspaces"]["demo"]["credentials"]["private_key_id"] in new


def test_propagation_delay_is_waited_out_closely(make_sandbox, cli):
    delay = 3.0
    sb = make_sandbox(propagation_delay_s=delay, operation_s=0.2, infra_s=0.2)
    t0 = time.monotonic()
    cli(sb, *ARGS, check=0)
    elapsed = time.monotonic() - t0
    created = next(x for x in calls(sb) if x["method"] == "CreateServiceAccount")
    bind_ok = [x for x in calls(sb) if x["method"] == "SetIamPolicy" and x["service"] == "resourcemanager"
               and x["code"] == "OK"]
    refused = [x for x in calls(sb) if x["method"] == "SetIamPolicy" and x["code"] == "INVALID_ARGUMENT"]
    assert refused, "the sandbox should have refused the binding while the account propagated"
    # The binding lands within a second of the account becoming known.
    assert bind_ok[0]["time"] - created["time"] < delay + 1.0
    assert elapsed < 60


def test_waiting_for_google_makes_few_calls(make_sandbox, cli):
    """While the account propagates, the refused binding is written again with the etag it holds (no re-read),
    and the permissions are tested on the repository only once the project's pass (the first test aside)."""
    sb = make_sandbox(propagation_delay_s=3.0, operation_s=0.2, infra_s=0.2)
    cli(sb, *ARGS, check=0)
    record = calls(sb)
    project = [x for x in record if x["service"] == "resourcemanager" and x["resource"] == f"projects/{P}"]
    sets = [x for x in project if x["method"] == "SetIamPolicy"]
    refused = [x for x in sets if x["code"] == "INVALID_ARGUMENT"]
    ok = next(x for x in sets if x["code"] == "OK")
    assert refused, "the sandbox should have refused the binding while the account propagated"
    rereads = [x for x in project if x["method"] == "GetIamPolicy" and refused[0]["time"] <= x["time"] <= ok["time"]]
    assert rereads == []
    tests = [x for x in record if x["method"] == "TestIamPermissions" and x["caller"] == SA]
    on_project = [x for x in tests if x["resource"] == f"projects/{P}"]
    on_repositories = [x for x in tests if "/repositories/" in x["resource"]]
    assert len(on_project) > 2, "the permissions should have been waited for"
    early = [x for x in on_repositories if x["time"] < on_project[-1]["time"]]
    assert len(early) <= len({x["resource"] for x in on_repositories})  # the first test only
    # From the account's creation to the permissions in effect (about 6 s here): 39 calls of these methods before
    # the binding was retried with its etag and the repository tested after the project, about 25 since.
    created = next(x for x in record if x["method"] == "CreateServiceAccount")
    waiting = [x for x in record if created["time"] <= x["time"] <= tests[-1]["time"] and x["method"] in
               ("TestIamPermissions", "GetIamPolicy", "SetIamPolicy", "ListServiceAccountKeys")]
    assert len(waiting) <= 32, [x["method"] for x in waiting]


def test_a_foreign_conditional_binding_on_the_same_role_survives(make_sandbox, cli):
    cond = {"title": "weekdays", "expression": "request.time.getDayOfWeek() < 5"}
    sb = make_sandbox(scenario(
        roles=[{"id": "coiled", "title": "coiled", "description": "coiled-externally-hosted",
                "permissions": list(role_templates.load().permissions)}],
        bindings=[{"role": ROLE, "members": ["user:eve@example.com"], "condition": cond},
                  {"role": "roles/viewer", "members": ["user:ann@example.com"]}],
    ))
    cli(sb, *ARGS, check=0)
    pol = project_policy(clients(sb))
    conditional = [b for b in pol.bindings if b.role == ROLE and b.HasField("condition")]
    assert len(conditional) == 1 and list(conditional[0].members) == ["user:eve@example.com"]
    assert conditional[0].condition.expression == cond["expression"]
    assert bound(pol, ROLE, MEMBER) and bound(pol, "roles/viewer", "user:ann@example.com")


def test_an_account_bound_only_under_a_condition_gets_an_unconditional_binding(make_sandbox, cli):
    """A conditional binding of our account is not the binding Coiled needs (a conditional grant may lapse):
    the wizard adds an unconditional one and leaves the conditional one exactly as it was."""
    cond = {"title": "until-2031", "description": "temporary",
            "expression": 'request.time < timestamp("2031-01-01T00:00:00Z")'}
    sb = make_sandbox(scenario(
        service_accounts=[{"id": "coiled"}],
        roles=[{"id": "coiled", "title": "coiled", "description": "coiled-externally-hosted",
                "permissions": list(role_templates.load().permissions)}],
        bindings=[{"role": ROLE, "members": [MEMBER, "user:eve@example.com"], "condition": cond},
                  {"role": "roles/viewer", "members": ["user:ann@example.com"]}],
    ))
    planned = cli(sb, *ARGS, "--dry-run", check=0)
    assert f"bind {MEMBER} → {ROLE}" in planned.stdout
    # With the conditional binding taken for the binding, the run would wait for permissions that never come.
    cli(sb, *ARGS, "--yes", "--wait-timeout", "20", check=0)
    pol = project_policy(clients(sb))
    assert pol.version == 3
    assert bound(pol, ROLE, MEMBER) and bound(pol, "roles/viewer", "user:ann@example.com")
    conditional = [b for b in pol.bindings if b.role == ROLE and b.HasField("condition")]
    assert len(conditional) == 1
    assert list(conditional[0].members) == [MEMBER, "user:eve@example.com"]
    c = conditional[0].condition
    assert (c.title, c.description, c.expression) == (cond["title"], cond["description"], cond["expression"])


def key_created(sb):
    return lambda: any(x["method"] == "CreateServiceAccountKey" and x["code"] == "OK" for x in calls(sb))


def test_crash_right_after_the_key_is_created_leaves_no_orphan(make_sandbox, cli, tmp_path):
    sb = make_sandbox(hold_method="CreateServiceAccountKey", hold_s=30)
    # Killed once the key exists on Google: its private half never reaches a file.
    assert killed_when(sb, tmp_path, ARGS, key_created(sb)), "the wizard never created a key"
    c = clients(sb)
    assert len(user_keys(c)) == 1
    assert journal(sb)["key_pending"] is not None
    assert not Path(journal(sb).get("key_file") or sb.state_dir / "none").exists()
    cli(sb, *ARGS, check=0)
    keys = user_keys(c)
    assert len(keys) == 1
    assert keys == [json.loads(Path(journal(sb)["key_file"]).read_text())["private_key_id"]]
    assert state(sb)["coiled"]["workspaces"]["demo"]["credentials"]["private_key_id"] == keys[0]


def test_a_rerun_right_after_a_crash_at_the_keys_creation_deletes_the_key_google_does_not_list_yet(
        make_sandbox, cli, tmp_path):
    """Google lists a new key a few seconds after making it: a re-run started at once after a crash that lost the
    creation's answer does not see the key in the list, yet it is the one the crashed run made, and nobody holds
    its private half; the re-run looks for it (as after a lost answer within a run) and deletes it."""
    sb = make_sandbox(hold_method="CreateServiceAccountKey", hold_s=30, key_list_lag_s=2)
    assert killed_when(sb, tmp_path, ARGS, key_created(sb)), "the wizard never created a key"

    def keys() -> list[str]:  # what Google holds, not its lagging list
        return [k for k, v in state(sb)["keys"].items() if v["email"] == SA]

    assert len(keys()) == 1 and journal(sb)["key_pending"] is not None
    cli(sb, *ARGS, check=0)
    held = json.loads(Path(journal(sb)["key_file"]).read_text())["private_key_id"]
    assert keys() == [held]


@pytest.mark.parametrize("args, needle", [
    (["--project", "Bad_Project"], "--project"),
    (["--region", "europe-west1"], "--region"),
    (["--region", "us-east1", "--zone", "us-central1-a"], "--zone"),
    (["--service-account", "ab"], "--service-account"),
    (["--role-id", "no-dashes"], "--role-id"),
    (["--firewall-cidr", "10.0.0.300/8"], "--firewall-cidr"),
    (["--firewall-ports", "22,99999"], "--firewall-ports"),
    (["--workspace", "elsewhere"], "workspace"),
    (["--instance-service-account", "not-an-email"], "--instance-service-account"),
    (["--project", "unknown-project"], "does not exist"),
])
def test_bad_input_exits_2_with_one_sentence_and_no_write(make_sandbox, cli, args, needle):
    sb = make_sandbox()
    out = cli(sb, *ARGS, *args, check=2)
    assert needle in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert writes(sb) == []


def test_no_billing_is_reported_before_any_other_write(make_sandbox, cli):
    sb = make_sandbox(scenario(billing=False))
    out = cli(sb, *ARGS, check=1)
    assert "no billing account" in out.stderr and "gcloud billing projects link" in out.stderr
    assert [x["method"] for x in writes(sb)] == ["BatchEnableServices"]


def test_key_creation_blocked_by_org_policy_says_so(make_sandbox, cli):
    sb = make_sandbox(scenario(disable_key_creation=True))
    out = cli(sb, *ARGS, check=5)  # predicted before the first write
    assert "iam.disableServiceAccountKeyCreation" in out.stderr
    assert "organization policy" in out.stderr and not writes(sb)


def test_ten_key_limit_is_told_apart_from_the_org_policy(make_sandbox, cli):
    sb = make_sandbox(scenario(service_accounts=[{"id": "coiled", "keys": 10}]))
    out = cli(sb, *ARGS, check=1)
    assert "10 user-managed keys" in out.stderr and "organization policy" not in out.stderr
    assert not any(x["method"] == "CreateServiceAccountKey" for x in calls(sb))


def test_no_upload_leaves_coiled_alone_and_says_what_is_left(make_sandbox, cli):
    sb = make_sandbox()
    out = cli(sb, *ARGS, "--no-upload", check=0)
    assert not any(x["service"] == "coiled" for x in calls(sb))
    assert "Left to do by hand" in out.stdout and "us-east1" in out.stdout


def test_instance_account_is_created_with_least_privilege(make_sandbox, cli):
    sb = make_sandbox()
    cli(sb, *ARGS, "--create-instance-service-account", check=0)
    c = clients(sb)
    email = f"coiled-instance@{P}.iam.gserviceaccount.com"
    c.iam.get_service_account(name=f"projects/-/serviceAccounts/{email}")
    role = c.iam.get_role(request={"name": f"projects/{P}/roles/coiled_instance"})
    assert list(role.included_permissions) == ["logging.logEntries.create"]
    assert bound(project_policy(c), role.name, f"serviceAccount:{email}")
    assert state(sb)["coiled"]["workspaces"]["demo"]["instance_service_account"] == email


def test_transient_faults_are_retried_to_the_same_end(make_sandbox, cli):
    sb = make_sandbox(fault_rate=0.2, seed=7)
    cli(sb, *ARGS, check=0)
    faults = [x for x in calls(sb) if x["fault"]]
    assert faults, "the seed should have injected faults"
    # The checks below read without faults (which of their calls a fault would hit depends on how many calls the
    # run made, and so on the timing of its polls).
    http("POST", f"{sb.coiled_url}/_sandbox/config", {"fault_rate": 0.0})
    c = clients(sb)
    assert len(user_keys(c)) == 1
    assert bound(project_policy(c), ROLE, MEMBER)


def test_existing_key_file_is_reused(make_sandbox, cli):
    sb = make_sandbox()
    cli(sb, *ARGS, check=0)
    path = Path(journal(sb)["key_file"])
    mark = len(calls(sb))
    cli(sb, *ARGS, "--key-file", str(path), check=0)
    assert writes(sb, mark) == []


def test_key_file_of_another_project_is_bad_input(make_sandbox, cli, tmp_path):
    sb = make_sandbox()
    cli(sb, *ARGS, check=0)
    data = json.loads(Path(journal(sb)["key_file"]).read_text())
    data["project_id"] = "other-project"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    other.chmod(0o600)
    out = cli(sb, *ARGS, "--key-file", str(other), check=2)
    assert "other-project" in out.stderr and "PRIVATE KEY" not in out.stderr


def test_a_key_file_whose_key_was_deleted_is_reported_and_replaced(make_sandbox, cli):
    """The key of the key file deleted on Google (the sandbox's side of it, a refused token, is in
    tests/test_sandbox_iam.py): verify names the dead key, and the wizard writes a new, working key to the
    same file and gives it to Coiled."""
    sb = make_sandbox()
    cli(sb, *ARGS, check=0)
    path = Path(journal(sb)["key_file"])
    old = json.loads(path.read_text())["private_key_id"]
    c = clients(sb)
    c.iam.delete_service_account_key(name=f"projects/-/serviceAccounts/{SA}/keys/{old}")

    found = cli(sb, "verify", "--output", "json", check=1)
    checks = {x["name"]: x for x in json.loads(found.stdout)["checks"]}
    assert checks["key_file"]["status"] == "failed" and "no longer exists" in checks["key_file"]["detail"]

    cli(sb, *ARGS, "--wait-timeout", "30", check=0)
    data = json.loads(path.read_text())
    assert data["private_key_id"] != old and user_keys(c) == [data["private_key_id"]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    held = clients(sb, data).projects.test_iam_permissions(resource=f"projects/{P}",
                                                           permissions=["compute.instances.create"]).permissions
    assert list(held) == ["compute.instances.create"]
    assert state(sb)["coiled"]["workspaces"]["demo"]["credentials"]["private_key_id"] == data["private_key_id"]
    cli(sb, "verify", check=0)


def test_sandbox_rehearsal_resumes_its_world(cli, tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    first = cli(None, *ARGS, "--sandbox", env=env, check=0)
    assert "rehearsal" in first.stdout and "bound" in first.stdout
    again = cli(None, *ARGS, "--sandbox", env=env, check=0)
    assert "Nothing to change" in again.stdout
    assert (tmp_path / "state" / "coiled-setup" / "sandbox" / "world.json").exists()
    checked = cli(None, "verify", "--sandbox", "--output", "json", env=env, check=0)
    statuses = {c["name"]: c["status"] for c in json.loads(checked.stdout)["checks"]}
    assert statuses["effective_permissions"] == "ok" and statuses["coiled_credentials"] == "ok"


@pytest.mark.parametrize("args", [(), ("--non-interactive",)])
def test_without_a_terminal_and_without_yes_nothing_is_applied(make_sandbox, cli, args):
    sb = make_sandbox()
    out = cli(sb, "gcp", *args, check=2)  # stdin is /dev/null
    assert writes(sb) == []
    assert "Plan" in out.stdout and "create" in out.stdout
    assert "--yes" in out.stderr and "--dry-run" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


NARROW = "203.0.113.0/24"
INSTANCE = f"coiled-instance@{P}.iam.gserviceaccount.com"


def test_a_rerun_keeps_what_is_in_place_and_a_flag_changes_it_showing_old_and_new(make_sandbox, cli):
    sb = make_sandbox()
    cli(sb, *ARGS, "--firewall-cidr", NARROW, "--firewall-ports", "8786,8787", "--create-instance-service-account",
        "--region", "us-central1", "--no-preemptible", "--write-dask-config", check=0)

    # Flags not given keep every setting in place: nothing to change, not one write.
    mark = len(calls(sb))
    again = cli(sb, *ARGS, check=0)
    assert "Nothing to change" in again.stdout
    assert writes(sb, mark) == []
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["settings"]["scheduler_firewall"] == {"ingress": [{"ports": [8786, 8787], "cidr": NARROW}]}
    assert ws["instance_service_account"] == INSTANCE

    # Flags given change the settings, and the plan says old → new for each.
    out = cli(sb, *ARGS, "--firewall-cidr", "0.0.0.0/0", "--no-instance-service-account", check=0)
    assert f"firewall {NARROW} → 0.0.0.0/0" in out.stdout
    assert f"instance account {INSTANCE} → none" in out.stdout
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["settings"]["scheduler_firewall"] == {"ingress": [{"ports": [8786, 8787], "cidr": "0.0.0.0/0"}]}
    assert ws["instance_service_account"] is None
    assert [r["region"] for r in ws["regions"] if r["default"]] == ["us-central1"]
    dask = yaml.safe_load((sb.state_dir / "dask" / "coiled.yaml").read_text())["coiled"]["backend-options"]
    assert dask["zone_name"] == "us-central1-c" and dask["spot"] is False


def test_the_instance_account_in_place_is_not_silently_made_the_coiled_account(make_sandbox, cli):
    sb = make_sandbox()
    cli(sb, *ARGS, "--create-instance-service-account", check=0)
    mark = len(calls(sb))
    out = cli(sb, *ARGS, "--service-account", "coiled-instance", check=2)
    assert "--no-instance-service-account" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert writes(sb, mark) == []


@pytest.mark.parametrize("args", [
    ("--service-account", "coiled-instance", "--create-instance-service-account"),
    ("--service-account", INSTANCE, "--create-instance-service-account"),
    ("--instance-service-account", SA),
    ("--service-account", "coiled-instance", "--instance-service-account", INSTANCE),
])
def test_the_separate_instance_account_cannot_be_the_coiled_account(make_sandbox, cli, args):
    sb = make_sandbox()
    out = cli(sb, *ARGS, *args, check=2)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert writes(sb) == []


def test_the_instance_account_is_compared_with_the_coiled_account_in_place_not_the_default(make_sandbox, cli):
    sb = make_sandbox(scenario(service_accounts=[{"id": "coiled", "display_name": "Coiled"}]))
    ops = f"ops-coiled@{P}.iam.gserviceaccount.com"
    cli(sb, *ARGS, "--service-account", "ops-coiled", check=0)
    # The account in place (ops-coiled) stays Coiled's; the default-named coiled@ may be the instance account.
    cli(sb, *ARGS, "--instance-service-account", SA, check=0)
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["credentials"]["client_email"] == ops and ws["instance_service_account"] == SA
    # Kept from Coiled and then deleted on Google: said as what Coiled holds, not as a flag never typed.
    clients(sb).iam.delete_service_account(name=f"projects/-/serviceAccounts/{SA}")
    mark = len(calls(sb))
    out = cli(sb, *ARGS, check=2)
    assert "Coiled's instance account" in out.stderr and "--no-instance-service-account" in out.stderr
    assert writes(sb, mark) == []


def test_a_setup_without_artifact_registry_stays_without_it_until_asked(make_sandbox, cli):
    sb = make_sandbox()
    cli(sb, *ARGS, "--no-gar", check=0)
    mark = len(calls(sb))
    out = cli(sb, *ARGS, check=0)
    assert "Nothing to change" in out.stdout and writes(sb, mark) == []
    assert not state(sb)["coiled"]["workspaces"]["demo"]["registry"]



def test_the_printed_operator_roles_are_enough_and_the_printout_changes_nothing(make_sandbox, cli):
    """`--print-operator-roles` names roles that let an operator holding only them run the wizard to the end."""
    import copy
    import re

    from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO

    printed = cli(None, "gcp", "--print-operator-roles", "--project", "coiled-demo", check=0).stdout
    roles = sorted(set(re.findall(r"--role=(roles/[\w.]+)", printed)))
    assert roles and "roles/owner" not in roles, printed
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["operator"]["roles"] = roles
    sb = make_sandbox(s, operation_s=0.05, infra_s=0.05)
    before = len(calls(sb))
    cli(sb, "gcp", "--print-operator-roles", check=0)
    assert calls(sb)[before:] == []  # printing asks nobody
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    # One role fewer is not enough: the run stops before changing anything, naming what is missing.
    s["operator"]["roles"] = [r for r in roles if r != "roles/iam.roleAdmin"]
    short = make_sandbox(s, operation_s=0.05, infra_s=0.05)
    proc = cli(short, "gcp", "--non-interactive", "--yes", check=3)
    assert "roles/iam.roleAdmin" in proc.stderr


def test_a_run_killed_after_the_key_reached_its_file_leaves_no_pending_record_behind(make_sandbox, cli):
    """Killed between writing the new key's file and clearing its pending record (a step beside it held the run
    at a call): the next run finds the key in its file, so the record is settled, and a later run does not take
    keys made since for what that creation left. A record whose key never reached the file is kept."""
    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    cli(sb, *ARGS, check=0)
    path = sb.state_dir / "home" / "state" / f"journal-{P}.json"
    kid = journal(sb)["key_id"]
    record = {"email": SA, "known": [], "started": time.time() - 3600}
    path.write_text(json.dumps({**journal(sb), "key_pending": record}))
    mark = len(calls(sb))
    cli(sb, *ARGS, check=0)
    assert journal(sb)["key_pending"] is None
    assert writes(sb, mark) == []
    # The file's key was there before the creation: what it made may not be listed yet, so the record stays.
    path.write_text(json.dumps({**journal(sb), "key_pending": {**record, "known": [kid]}}))
    cli(sb, *ARGS, check=0)
    assert journal(sb)["key_pending"] == {**record, "known": [kid]}
