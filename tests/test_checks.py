"""Each check of `verify` on its own: facts gathered (checks.gather, read-only) from a sandbox project set up for
it, then the check function called directly; its status, the key facts of its detail and its remedy asserted.

One sandbox serves the module, a project per world. Where a world is awkward to make (Google still
propagating a grant, a key Google refuses), the gathered facts are changed by hand.
"""

from __future__ import annotations

import copy
import json

import pytest

from coiled_setup import checks, needs
from coiled_setup.checks import (
    FAILED,
    OK,
    SKIPPED,
    WARNING,
    Target,
    check_account,
    check_apis,
    check_binding,
    check_coiled_backend,
    check_coiled_credentials,
    check_effective,
    check_firewall,
    check_instance,
    check_key_file,
    check_registry_api,
    check_repo_grant,
    check_repository,
    check_role,
    evaluate,
    gather,
)
from coiled_setup.cloud import CloudError, Google
from coiled_setup.coiled_api import Coiled, CoiledUnauthorized, CoiledUnreachable
from coiled_setup.options import INSTANCE_ROLE_ID
from coiled_setup.sandbox import Config, Sandbox
from tests.helpers import calls, clients

HOME = "unit-checks"
OPERATOR_EMAIL = f"operator@{HOME}.iam.gserviceaccount.com"
OPERATOR = f"serviceAccount:{OPERATOR_EMAIL}"
TEMPLATE = list(needs.control_role().permissions)
TOKEN = "sandbox-unit-checks-token"
REGION = "us-east1"
ALL_SERVICES = ["iam.googleapis.com", "cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com",
                "compute.googleapis.com", "logging.googleapis.com", "monitoring.googleapis.com",
                "bigquery.googleapis.com", needs.ARTIFACT_REGISTRY]
COND = {"title": "until-2030", "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")'}


def sa(project: str, account_id: str = "coiled") -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def member(project: str, account_id: str = "coiled") -> str:
    return "serviceAccount:" + sa(project, account_id)


def complete(p: str, **overrides) -> dict:
    """Everything Coiled needs in project p (overrides replace a part)."""
    spec = {
        "service_accounts": [{"id": "coiled"}, {"id": "coiled-instance"}],
        "roles": [{"id": "coiled", "permissions": TEMPLATE},
                  {"id": INSTANCE_ROLE_ID, "permissions": [needs.LOG_PERMISSION]}],
        "bindings": [{"role": f"projects/{p}/roles/coiled", "members": [member(p)]},
                     {"role": "roles/logging.logWriter", "members": [member(p, "coiled-instance")]}],
        "repositories": [{"location": REGION, "id": "coiled",
                          "bindings": [{"role": needs.REPO_ROLE, "members": [member(p)]}]}],
    }
    spec.update(overrides)
    return spec


# Each world: a project, named after it.
WORLDS: dict[str, dict] = {
    "good": complete("c-good"),
    "bare": {"services": ALL_SERVICES[:-1]},
    "acct-disabled": {"service_accounts": [{"id": "coiled", "disabled": True}]},
    "privileged": complete("c-privileged", service_accounts=[{"id": "coiled"}, {"id": "ci-runner"}], bindings=[
        {"role": "projects/c-privileged/roles/coiled", "members": [member("c-privileged")]},
        {"role": "roles/editor", "members": [member("c-privileged")]},
        {"role": "roles/owner", "members": [member("c-privileged", "ci-runner")]}]),
    "keys": {"service_accounts": [{"id": "coiled"}, {"id": "gone"}]},
    "role-extra": {"roles": [{"id": "coiled", "permissions": TEMPLATE + ["storage.buckets.delete"]}]},
    "role-deleted": {"roles": [{"id": "coiled", "permissions": TEMPLATE, "deleted": True}]},
    "role-drift": {"service_accounts": [{"id": "coiled"}],
                   "roles": [{"id": "coiled", "permissions": TEMPLATE[3:] + ["storage.buckets.delete"]}]},
    "conditional": complete("c-conditional", bindings=[
        {"role": "projects/c-conditional/roles/coiled", "members": [member("c-conditional")], "condition": COND}],
        repositories=[{"location": REGION, "id": "coiled", "bindings": [
            {"role": needs.REPO_ROLE, "members": [member("c-conditional")], "condition": COND}]}]),
    "repo-maven": {"repositories": [{"location": REGION, "id": "coiled", "format": "MAVEN"}]},
    "repo-ungranted": complete("c-repo-ungranted", repositories=[{"location": REGION, "id": "coiled"}]),
    "inst-nolog": complete("c-inst-nolog", bindings=[
        {"role": "projects/c-inst-nolog/roles/coiled", "members": [member("c-inst-nolog")]},
        {"role": "roles/viewer", "members": [member("c-inst-nolog", "coiled-instance")]}]),
    "inst-custom": complete("c-inst-custom", bindings=[
        {"role": "projects/c-inst-custom/roles/coiled", "members": [member("c-inst-custom")]},
        {"role": f"projects/c-inst-custom/roles/{INSTANCE_ROLE_ID}", "members": [member("c-inst-custom",
                                                                                         "coiled-instance")]}]),
    "inst-disabled": {"service_accounts": [{"id": "coiled"}, {"id": "coiled-instance", "disabled": True}]},
    # The operator can read the policy and nothing else.
    "denied": {"roles": [{"id": "op", "permissions": ["resourcemanager.projects.getIamPolicy"]}],
               "operator_role": "op"},
}


def scenario() -> dict:
    projects = [{"id": HOME, "number": "300000000001"}]
    for i, (name, spec) in enumerate(WORLDS.items()):
        spec = copy.deepcopy(spec)
        op_role = spec.pop("operator_role", None)
        spec.setdefault("services", ALL_SERVICES)
        spec["bindings"] = spec.get("bindings", []) + [
            {"role": f"projects/c-{name}/roles/{op_role}" if op_role else "roles/owner", "members": [OPERATOR]}]
        projects.append({"id": f"c-{name}", "number": str(400000000000 + i), **spec})
    return {"projects": projects, "operator": {"id": "operator", "roles": ["roles/owner"]},
            "coiled": {"users": [{"token": TOKEN, "username": "unit", "workspaces": ["good"]}]}}


def make_key(real, email: str) -> dict:
    return json.loads(real.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{email}").private_key_data)


class World:
    def __init__(self, sb):
        self.sb = sb
        self.real = clients(sb)
        self.operator_key = json.loads(sb.operator_key_path.read_text())
        self.google = Google.from_key(self.operator_key, endpoint=sb.google_endpoint)
        real = self.real
        self.key = {p: make_key(real, sa(f"c-{p}")) for p in ("good", "privileged", "conditional", "repo-ungranted",
                                                             "inst-nolog", "inst-custom", "role-drift")
                    if "service_accounts" in WORLDS[p]}
        # A key whose account was deleted since, one deleted, one disabled, one live.
        self.key["gone"] = make_key(real, sa("c-keys", "gone"))
        real.iam.delete_service_account(name=f"projects/-/serviceAccounts/{sa('c-keys', 'gone')}")
        self.key["deleted"] = make_key(real, sa("c-keys"))
        real.iam.delete_service_account_key(
            name=f"projects/-/serviceAccounts/{sa('c-keys')}/keys/{self.key['deleted']['private_key_id']}")
        self.key["disabled"] = make_key(real, sa("c-keys"))
        real.iam.disable_service_account_key(
            name=f"projects/-/serviceAccounts/{sa('c-keys')}/keys/{self.key['disabled']['private_key_id']}")
        self.key["live"] = make_key(real, sa("c-keys"))
        self.key["ci-runner"] = make_key(real, sa("c-privileged", "ci-runner"))
        # The good world's Coiled workspace, set up as the wizard leaves it.
        self.coiled = Coiled(sb.coiled_url, TOKEN, workspace="good")
        self.coiled.store_credentials(self.key["good"], sa("c-good", "coiled-instance"))
        self.coiled.settings({"scheduler_firewall": {"ingress": [{"ports": [8786], "cidr": "10.0.0.0/8"}]}})
        self.coiled.set_registry({"type": "gar"})
        self.coiled.start_region(REGION)

    def coiled_view(self) -> dict:
        return {"workspace": "good", "backend_options": self.coiled.backend_options()}

    def close(self):
        self.google.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sb = Sandbox(scenario(), Config(operation_s=0.0, infra_s=0.0),
                 state_dir=tmp_path_factory.mktemp("checks-sandbox")).start()
    w = World(sb)
    yield w
    w.close()
    sb.stop()


def target(name: str, key: dict | None = None, **fields) -> Target:
    """What verify would check in world `name`, with the key file `key` (its account is the one checked)."""
    project = f"c-{name}"
    fields.setdefault("coiled", False)
    t = Target(project=project, region=REGION, **fields)
    if key is not None:
        t.key, t.key_path = key, fields.get("key_path", f"/keys/{project}.json")
    if not t.account:
        t.account = key["client_email"] if key else sa(project)
    return t


def gathered(w: World, t: Target, coiled=None) -> checks.Facts:
    as_key = Google.from_key(t.key, endpoint=w.sb.google_endpoint) if t.key else None
    try:
        return gather(t, w.google, as_key, coiled)
    finally:
        if as_key is not None:
            as_key.close()


def earlier(t: Target, f) -> dict:
    """The results a check that depends on earlier ones sees (every check's, by name)."""
    return {r.name: r for r in evaluate(t, f)}


def run(fn, t: Target, f, config: dict | None = None):
    """Calls one check as verify does, with the earlier results; `config` stands for the user's dask config."""
    f.values["dask_config"] = config or {}
    return fn(t, f, earlier(t, f))


def check(w: World, fn, t: Target, coiled=None, config=None):
    return run(fn, t, gathered(w, t, coiled), config)


# -- a project where everything is in place ------------------------------------------------------------

def test_every_check_passes_where_everything_is_in_place(world):
    t = target("good", world.key["good"], coiled=True, workspace="good")
    f = gathered(world, t, world.coiled_view)
    results = {fn.__name__: run(fn, t, f) for fn in (
        check_key_file, check_account, check_role, check_binding, check_effective, check_apis, check_registry_api,
        check_repository, check_repo_grant, check_instance, check_coiled_credentials, check_coiled_backend,
        check_firewall)}
    assert {n: r.status for n, r in results.items() if r.status != OK} == {}
    assert all(r.remedy == "" for r in results.values())
    kid = world.key["good"]["private_key_id"]
    email = sa("c-good")
    assert results["check_key_file"].detail == f"/keys/c-good.json: key {kid[:12]}… of {email}, enabled on Google."
    assert results["check_role"].detail == "projects/c-good/roles/coiled has exactly the template's 81 permissions."
    assert results["check_effective"].detail == f"Tested as {email} with the key: all 81 permissions held."
    assert results["check_repo_grant"].detail.endswith("push and pull tested as the account.")
    assert results["check_instance"].detail == (f"{sa('c-good', 'coiled-instance')} exists, holds "
                                                f"{needs.LOG_PERMISSION} (via roles/logging.logWriter), and is "
                                                "separate from the control-plane account.")
    assert results["check_coiled_credentials"].detail == f"Workspace good holds the key file's key {kid[:12]}… of " \
                                                         f"{email}."
    assert results["check_coiled_backend"].detail == ("Workspace good: project c-good, default region us-east1, "
                                                      "registry "
                                                      "Google Artifact Registry.")
    assert results["check_firewall"].detail == ("Ingress limited to ports 8786 from 10.0.0.0/8, per the workspace's "
                                                "settings.")


def test_nothing_is_written_while_gathering(world):
    since = max((c["seq"] for c in calls(world.sb)), default=0)
    gathered(world, target("good", world.key["good"]), world.coiled_view)
    made = calls(world.sb, since)
    assert {c["method"] for c in made} >= {"GetRole", "GetIamPolicy", "TestIamPermissions"}
    assert [c["method"] for c in made if c.get("write") or c.get("mutating")] == []


# -- the key file -------------------------------------------------------------------------------------------

def test_key_file_skipped_without_one(world):
    r = check(world, check_key_file, target("good", key_path=None, local_key=False))
    assert (r.status, r.data) == (SKIPPED, {"needs_key": True})
    assert "kept the key in memory only (--no-local-key)" in r.detail
    r = check(world, check_key_file, target("good", key_path=None))
    assert "the setup recorded none for this project" in r.detail


def test_unusable_key_file_says_why_and_how(world):
    t = target("good", key_path="/keys/k.json", key_problem="The key file /keys/k.json is not JSON.")
    r = check(world, check_key_file, t)
    assert (r.status, r.detail) == (FAILED, "The key file /keys/k.json is not JSON.")
    assert r.remedy == f"{t.gcp()} (writes a fresh key file)"
    t.key_given = True
    r = check(world, check_key_file, t)
    assert r.remedy.startswith("Pass a valid key file with --key-file, or run coiled-setup gcp --project c-good")


def test_key_of_another_project(world):
    t = target("good", world.key["live"])
    r = check(world, check_key_file, t)
    assert (r.status, r.detail) == (FAILED, "/keys/c-good.json is a key of project c-keys, not c-good.")
    assert "--key-file with a key of an account in c-good" in r.remedy


@pytest.mark.parametrize("which, detail, remedy", [
    ("gone", "its account {email} no longer exists, so key {kid} cannot work.", "(creates the account and a new key)"),
    ("deleted", "key {kid} of {email} no longer exists on Google (it was deleted).", "(creates a new key, writes"),
    ("disabled", "key {kid} of {email} is disabled on Google.", "gcloud iam service-accounts keys enable {full}"),
])
def test_dead_key_is_named(world, which, detail, remedy):
    key = world.key[which]
    kid, email = key["private_key_id"], key["client_email"]
    r = check(world, check_key_file, target("keys", key))
    assert r.status == FAILED
    assert r.detail == "/keys/c-keys.json: " + detail.format(email=email, kid=f"{kid[:12]}…")
    assert remedy.format(full=kid) in r.remedy


def test_key_of_a_privileged_account_is_refused(world):
    t = target("privileged", world.key["privileged"])
    r = check(world, check_key_file, t)
    assert r.status == FAILED
    assert "which holds roles/editor in the project: Coiled would hold far more than its role." in r.detail
    assert r.remedy.startswith(f"Remove those roles from {sa('c-privileged')}, or run ")
    assert "--service-account ANOTHER_ID" in r.remedy
    # Another account than the default one: the remedy makes the dedicated default account.
    r = check(world, check_key_file, target("privileged", world.key["ci-runner"]))
    assert r.status == FAILED and "which holds roles/owner in the project" in r.detail
    assert r.remedy.startswith("coiled-setup gcp --project c-privileged ")
    assert ("--service-account coiled (creates coiled@c-privileged.iam.gserviceaccount.com with only the Coiled "
            "role") in r.remedy


def test_key_of_the_account_running_verify_is_refused(world):
    t = Target(project=HOME, region=REGION, coiled=False, gar=False, account=OPERATOR_EMAIL,
               key=world.operator_key, key_path="/keys/operator.json")
    r = check(world, check_key_file, t)
    assert r.status == FAILED and "the account running verify" in r.detail


# -- the service account ------------------------------------------------------------------------------------

def test_account_states(world):
    assert check(world, check_account, target("good", world.key["good"])).status == OK
    r = check(world, check_account, target("bare"))
    assert (r.status, r.detail) == (FAILED, f"{sa('c-bare')} does not exist.")
    assert r.remedy.endswith("(creates it and a key)")
    r = check(world, check_account, target("acct-disabled"))
    assert r.status == FAILED and "is disabled: Google refuses every call" in r.detail
    assert r.remedy == f"gcloud iam service-accounts enable {sa('c-acct-disabled')} --project c-acct-disabled"
    t = target("bare")
    t.account = ""
    assert check(world, check_account, t).status == SKIPPED


def test_a_read_the_operator_may_not_make_names_the_permission_and_the_role(world):
    r = check(world, check_account, target("denied"))
    assert r.status == FAILED
    assert r.detail == (f"Could not check: {OPERATOR_EMAIL} lacks the permission iam.serviceAccounts.get in project "
                        "c-denied.")
    assert r.remedy.startswith(f"Ask a project owner to grant {OPERATOR_EMAIL} roles/viewer (it includes "
                               "iam.serviceAccounts.get)")
    assert r.data == {"missing_permission": "iam.serviceAccounts.get"}


# -- the custom role and the binding ----------------------------------------------------------------------

def test_role_states(world):
    r = check(world, check_role, target("bare"))
    assert (r.status, r.detail) == (FAILED, "projects/c-bare/roles/coiled does not exist.")
    assert r.remedy.endswith("(creates it with the 81 permissions Coiled needs)")
    r = check(world, check_role, target("role-deleted"))
    assert r.status == FAILED and "is deleted, so its bindings grant nothing" in r.detail
    assert "gcloud iam roles undelete coiled --project c-role-deleted" in r.remedy
    r = check(world, check_role, target("role-drift"))
    assert r.status == FAILED
    assert r.detail == ("projects/c-role-drift/roles/coiled differs from the bundled template; missing 3: "
                        f"{', '.join(TEMPLATE[:3])}; extra 1: storage.buckets.delete.")
    assert r.data == {"missing": TEMPLATE[:3], "extra": ["storage.buckets.delete"]}
    r = check(world, check_role, target("role-extra"))
    assert (r.status, r.data) == (FAILED, {"missing": [], "extra": ["storage.buckets.delete"]})
    assert r.remedy.endswith("(sets the role to exactly the template's 81 permissions)")
    assert check(world, check_role, target("good")).status == OK


def test_binding_states(world):
    assert check(world, check_binding, target("good")).status == OK
    r = check(world, check_binding, target("conditional"))
    assert r.status == FAILED and "only under the condition 'until-2030'" in r.detail
    assert r.data["condition"]["title"] == "until-2030"
    assert "the conditional one is kept" in r.remedy
    r = check(world, check_binding, target("bare"))
    assert r.detail == f"{member('c-bare')} is not bound to projects/c-bare/roles/coiled in project c-bare."
    assert r.remedy.endswith(f"gcloud projects add-iam-policy-binding c-bare --member {member('c-bare')} --role "
                             "projects/c-bare/roles/coiled")


# -- the permissions in effect ------------------------------------------------------------------------------

def test_effective_permissions_need_a_usable_key(world):
    r = check(world, check_effective, target("good"))
    assert (r.status, r.data) == (SKIPPED, {"needs_key": True})
    r = check(world, check_effective, target("keys", world.key["deleted"]))
    assert r.status == SKIPPED and "Needs a usable key" in r.detail


def test_effective_permissions_missing_point_at_the_role(world):
    t = target("role-drift", world.key["role-drift"])
    r = check(world, check_effective, t)
    assert r.status == FAILED
    assert r.detail.startswith(f"Tested as {sa('c-role-drift')} with the key: 81 of 81 permissions not held")
    assert r.remedy == f"Fix the custom role and binding above: {t.gcp()}"


def test_effective_permissions_missing_while_role_and_binding_are_right(world):
    t = target("good", world.key["good"])
    f = gathered(world, t)
    f.values["held"] = set(TEMPLATE[1:])  # Google still propagating a grant
    r = run(check_effective, t, f)
    assert (r.status, r.data) == (FAILED, {"not_held": TEMPLATE[:1]})
    assert "Google may still be propagating a recent change" in r.remedy
    refused = Google.from_key(world.key["deleted"], endpoint=world.sb.google_endpoint)
    with pytest.raises(CloudError) as e:  # what the adapter raises for a key Google refuses
        refused.authenticate()
    refused.close()
    f.errors["held"] = e.value
    r = run(check_effective, t, f)
    assert r.status == FAILED
    assert r.detail == f"Google did not accept the key of {sa('c-good')}: {e.value.message}"
    assert r.remedy == f"{t.gcp()} (creates a new key)"


# -- Artifact Registry --------------------------------------------------------------------------------------

def test_google_apis_are_those_the_wizard_enables(world):
    r = check(world, check_apis, target("bare"))
    assert r.status == OK and r.detail.startswith("compute.googleapis.com, logging.googleapis.com")
    assert "bigquery.googleapis.com" in r.detail
    assert "bigquery" not in check(world, check_apis, target("bare", bigquery=False)).detail


def test_registry_api(world):
    r = check(world, check_registry_api, target("bare"))
    assert (r.status, r.detail) == (FAILED, f"{needs.ARTIFACT_REGISTRY} is disabled in project c-bare.")
    assert r.remedy.startswith(f"gcloud services enable {needs.ARTIFACT_REGISTRY} --project c-bare")
    assert check(world, check_registry_api, target("good", gar=False)).status == SKIPPED
    assert check(world, check_registry_api, target("good")).status == OK


def test_repository_states(world):
    r = check(world, check_repository, target("bare"))
    assert r.status == SKIPPED and "Needs the Artifact Registry API" in r.detail
    r = check(world, check_repository, target("acct-disabled"))
    assert r.status == FAILED
    assert r.detail == ("There is no repository coiled in us-east1: "
                        "projects/c-acct-disabled/locations/us-east1/repositories/coiled is missing.")
    r = check(world, check_repository, target("repo-maven"))
    assert r.status == FAILED and r.detail.endswith("has format MAVEN; Coiled needs DOCKER.")
    assert r.remedy.startswith("Delete or rename it (gcloud artifacts repositories delete coiled --location us-east1 "
                               "--project c-repo-maven)")
    assert check(world, check_repository, target("good")).status == OK


def test_repository_grant_states(world):
    r = check(world, check_repo_grant, target("repo-ungranted"))
    assert r.status == FAILED
    assert r.detail.startswith(f"{sa('c-repo-ungranted')} does not hold {needs.REPO_ROLE} on ")
    assert f"--member {member('c-repo-ungranted')} --role {needs.REPO_ROLE}" in r.remedy
    r = check(world, check_repo_grant, target("conditional"))
    assert r.status == FAILED and "only under a condition" in r.detail
    r = check(world, check_repo_grant, target("good"))
    assert r.status == OK
    assert r.detail.endswith("(push and pull not tested as the account: needs the key file; pass --key-file).")
    t = target("good", world.key["good"])
    f = gathered(world, t)
    f.values["repo_held"] = {needs.REPO_PERMISSIONS[1]}
    r = run(check_repo_grant, t, f)
    assert (r.status, r.data) == (FAILED, {"not_held": [needs.REPO_PERMISSIONS[0]]})


# -- the instance account ---------------------------------------------------------------------------------

def test_instance_states(world):
    assert check(world, check_instance, target("good")).status == SKIPPED
    r = check(world, check_instance, target("good", instance_flag=sa("c-good")))
    assert r.status == FAILED and r.detail.startswith(f"Instances would run as Coiled's own account {sa('c-good')}")
    r = check(world, check_instance, target("bare", instance_flag=sa("c-bare", "coiled-instance")))
    assert r.status == FAILED and r.detail.endswith("does not exist: Coiled cannot start instances with it.")
    r = check(world, check_instance, target("inst-disabled", instance_flag=sa("c-inst-disabled", "coiled-instance")))
    assert r.status == FAILED and "is disabled" in r.detail
    assert r.remedy.startswith("gcloud iam service-accounts enable ")
    r = check(world, check_instance, target("inst-nolog", instance_flag=sa("c-inst-nolog", "coiled-instance")))
    assert r.status == FAILED
    assert r.detail.endswith(f"does not hold {needs.LOG_PERMISSION} (its roles: roles/viewer): instance logs would "
                             "be lost.")
    assert r.remedy.endswith("--role roles/logging.logWriter")
    r = check(world, check_instance, target("inst-custom", instance_flag=sa("c-inst-custom", "coiled-instance")))
    assert r.status == OK and f"(via projects/c-inst-custom/roles/{INSTANCE_ROLE_ID})" in r.detail


# -- Coiled ------------------------------------------------------------------------------------------------

def view(creds: dict | None = None, **options) -> callable:
    """A Coiled workspace's view as verify reads it, made by hand."""
    opts = {"gcp_service_creds_dict": creds or {}, **options}
    return lambda: {"workspace": "ws", "backend_options": {"options": opts}}


def test_coiled_credentials_states(world):
    live, disabled = world.key["live"], world.key["disabled"]
    email = live["client_email"]

    def creds(key):
        return {"client_email": key["client_email"], "private_key_id": key["private_key_id"]}

    def status(t, coiled):
        r = check(world, check_coiled_credentials, t, coiled)
        return r.status, r.detail

    t = target("keys", live, coiled=True)
    assert status(target("keys", coiled=False), view())[0] == SKIPPED
    assert status(t, view()) == (FAILED, "Coiled workspace ws has no Google Cloud credentials.")
    assert status(t, view({"client_email": sa("c-good"), "private_key_id": "x"})) == (
        FAILED, f"Coiled workspace ws uses {sa('c-good')}, not {email}.")
    kid = disabled["private_key_id"]
    assert status(t, view(creds(disabled))) == (
        FAILED, f"Workspace ws holds key {kid[:12]}… of {email}, which is disabled on Google.")
    assert status(t, view({**creds(live), "private_key_id": "0" * 40})) == (
        FAILED, f"Workspace ws holds key {'0' * 12}… of {email}, which no longer exists on Google.")
    assert status(t, view(creds(live)))[0] == OK
    other = make_key(world.real, email)
    r = check(world, check_coiled_credentials, t, view(creds(other)))
    assert r.status == WARNING and "not the key file's" in r.detail
    assert r.remedy.startswith("Nothing, if that key is meant for Coiled; otherwise ")
    t_nokey = target("keys", coiled=True, account=email)
    assert status(t_nokey, view(creds(live)))[1].endswith(f"of {email}, enabled on Google.")


def test_coiled_unreadable_names_the_login(world):
    def refused():
        raise CoiledUnauthorized("Coiled refused the token.", 401)

    def silent():
        raise CoiledUnreachable("Coiled did not answer.")

    r = check(world, check_coiled_credentials, target("good", coiled=True), refused)
    assert (r.status, r.detail) == (FAILED, "Could not read Coiled: Coiled refused the token.")
    assert r.remedy.startswith("Check your Coiled login (coiled login)")
    r = check(world, check_coiled_credentials, target("good", coiled=True), silent)
    assert r.remedy.startswith("Check your network connection, proxy settings and --coiled-server")


def test_coiled_backend_problems(world):
    key = world.key["good"]
    creds = {"client_email": key["client_email"], "private_key_id": key["private_key_id"]}
    t = target("good", key, coiled=True)
    r = check(world, check_coiled_backend, t, view(creds, gcp_project_name="c-other", gcp_region_name=None,
                                                    registry={"type": "ecr"}))
    assert r.status == FAILED
    assert r.data["problems"] == ["project is c-other, not c-good", "default region is not set, not us-east1",
                                  "registry is ecr, not Google Artifact Registry"]
    assert "--workspace ws (sets them)" in r.remedy
    r = check(world, check_coiled_backend, t, view())
    assert r.status == SKIPPED and "Needs the credentials in Coiled" in r.detail


# -- the scheduler firewall -------------------------------------------------------------------------------

def test_firewall_states(world):
    t = target("good", coiled=True)
    r = check(world, check_firewall, t, view(firewall_spec={"ingress": [{"ports": [8786, 8787], "cidr": "0.0.0.0/0"}]}))
    assert r.status == WARNING
    assert r.detail == ("Dask schedulers accept connections on ports 8786,8787 from anywhere (0.0.0.0/0), per the "
                        "workspace's settings.")
    assert "--firewall-cidr YOUR_NETWORK" in r.remedy
    # The dask config decides nothing (no current client applies it): without Coiled there is nothing to check.
    t = target("good")
    r = check(world, check_firewall, t, config={"firewall": {"ports": [22], "cidr": "192.0.2.0/24"}})
    assert r.status == SKIPPED and "--no-coiled" in r.detail
    r = check(world, check_firewall, target("good", coiled=True), view())
    assert r.status == FAILED and "no scheduler firewall set" in r.detail
