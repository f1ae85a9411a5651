"""Each step of the wizard on its own: observe → plan → apply against a sandbox world set up for it, in process.

One sandbox serves the whole module; every test has a project (and a Coiled workspace) of its own, so tests
share no state and run in any order. Every plan is checked against the step protocol as it is made: it
publishes only declared fields, leaves the run record, the journal and the files as they were, and writes
nothing to Google or Coiled.
"""

from __future__ import annotations

import copy
import json
import stat
import threading
from dataclasses import fields

import pytest
from google.cloud import iam_admin_v1
from google.iam.v1 import iam_policy_pb2

from coiled_setup import needs, paths
from coiled_setup.cloud import Google
from coiled_setup.coiled_api import Coiled
from coiled_setup.engine import Consent, Engine
from coiled_setup.errors import BadInput, UserError
from coiled_setup.journal import Journal
from coiled_setup.options import INSTANCE_ROLE_ID, Options, default_instance_email, role_name
from coiled_setup.sandbox import Config, Sandbox
from coiled_setup.steps import (
    LISTING_PERMISSION,
    ORDER,
    PREFLIGHT_PERMISSIONS,
    ROTATION,
    TEARDOWN,
    account,
    apis,
    binding,
    build,
    confirm,
    instance,
    operator_permissions,
    registry,
    role,
    upload,
)
from coiled_setup.steps.base import CHECK, CREATE, NOTHING, UPDATE, Run
from coiled_setup.ui import Ui
from tests.helpers import calls, clients

HOME = "unit-steps"  # the operator's own project
OPERATOR = f"serviceAccount:operator@{HOME}.iam.gserviceaccount.com"
CORE = [*needs.CORE_SERVICES, "serviceusage.googleapis.com", "logging.googleapis.com"]
ALL_SERVICES = [*CORE, *needs.services(True)]
TEMPLATE = list(needs.control_role().permissions)
TOKEN = "sandbox-unit-steps-token"
REGION = "us-east1"
# The fields the command sets up before any step (a step may read them without an earlier step publishing them).
# Set by the command itself when it makes the run record (lift_log_sink_policy: from its org-policy preflight).
COMMAND_FIELDS = {"opts", "google", "journal", "ui", "coiled", "services", "coiled_credentials", "lift_log_sink_policy"}


def sa(project: str, account_id: str = "coiled") -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def repo(project: str) -> str:
    return f"projects/{project}/locations/{REGION}/repositories/coiled"


def least_privilege(perms, **spec) -> dict:
    """A project where the operator holds only the permissions a step declares (and the preflight's)."""
    op = {"id": "op", "title": "op", "permissions": sorted(set(perms) | set(PREFLIGHT_PERMISSIONS))}
    return {**spec, "roles": spec.get("roles", []) + [op], "operator_role": "op"}


def coiled_ready(p: str) -> dict:
    """Project p with the control-plane account, its role and grants: what Coiled needs before the upload."""
    return {
        "service_accounts": [{"id": "coiled"}], "roles": [{"id": "coiled", "permissions": TEMPLATE}],
        "bindings": [{"role": f"projects/{p}/roles/coiled", "members": ["serviceAccount:" + sa(p)]}],
        "repositories": [{"location": REGION, "id": "coiled", "bindings": [
            {"role": needs.REPO_ROLE, "members": ["serviceAccount:" + sa(p)]}]}],
    }


UNTIL_2030 = {"title": "until-2030", "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")'}

# Each test's project (named u-KEY): what is in it before the step runs.
PROJECTS: dict[str, dict] = {
    "apis-off": {"services": CORE},
    "apis-off-nogar": {"services": CORE},
    "acct-new": {},
    "acct-disabled": {"service_accounts": [{"id": "coiled", "disabled": True}]},
    "acct-other-file": {},
    "acct-orphans": {"service_accounts": [{"id": "coiled", "keys": 2}]},
    "acct-coiled-key": {"service_accounts": [{"id": "coiled", "keys": 1}]},
    "acct-damaged": {"service_accounts": [{"id": "coiled"}]},
    "acct-full": {"service_accounts": [{"id": "coiled", "keys": 10}]},
    "acct-org-policy": {"disable_key_creation": True},
    "role-new": {},
    "role-deleted": {"roles": [{"id": "coiled", "permissions": TEMPLATE[:-3], "deleted": True}]},
    "role-drift": {"roles": [{"id": "coiled", "permissions": TEMPLATE[2:] + ["storage.buckets.delete"]}]},
    "role-reserved": {"roles": [{"id": "coiled", "purged": True}]},
    "role-title": {"roles": [{"id": "coiled", "title": "old title", "permissions": TEMPLATE}]},
    "bind-new": {"service_accounts": [{"id": "coiled"}], "roles": [{"id": "coiled", "permissions": TEMPLATE}]},
    "bind-cond": {"service_accounts": [{"id": "coiled"}], "roles": [{"id": "coiled", "permissions": TEMPLATE}],
                  "bindings": [{"role": "projects/u-bind-cond/roles/coiled",
                                "members": ["serviceAccount:" + sa("u-bind-cond")], "condition": UNTIL_2030}]},
    "reg-new": {"service_accounts": [{"id": "coiled"}]},
    "reg-grant": {"service_accounts": [{"id": "coiled"}], "repositories": [{"location": REGION, "id": "coiled"}]},
    "reg-maven": {"service_accounts": [{"id": "coiled"}],
                  "repositories": [{"location": REGION, "id": "coiled", "format": "MAVEN"}]},
    "reg-off": {"services": CORE + [needs.COMPUTE], "service_accounts": [{"id": "coiled"}]},
    "inst-create": {"service_accounts": [{"id": "coiled"}]},
    "inst-given": {"service_accounts": [{"id": "coiled"}, {"id": "workers"}]},
    "inst-missing": {},
    "confirm-ok": {"service_accounts": [{"id": "coiled"}], "roles": [{"id": "coiled", "permissions": TEMPLATE}],
                   "bindings": [{"role": "projects/u-confirm-ok/roles/coiled",
                                 "members": ["serviceAccount:" + sa("u-confirm-ok")]}],
                   "repositories": [{"location": REGION, "id": "coiled", "bindings": [
                       {"role": needs.REPO_ROLE, "members": ["serviceAccount:" + sa("u-confirm-ok")]}]}]},
    "confirm-unbound": {"service_accounts": [{"id": "coiled"}], "roles": [{"id": "coiled", "permissions": TEMPLATE}]},
    "up-new": coiled_ready("u-up-new"),
    "up-nokey": coiled_ready("u-up-nokey"),
    "up-retire": coiled_ready("u-up-retire"),
    "up-other-key": coiled_ready("u-up-other-key"),
    "up-unbound": {"service_accounts": [{"id": "coiled"}]},
    "chain": {"services": CORE},
    # The operator holding exactly what each step declares: an undeclared permission fails its test.
    "lp-apis": least_privilege(apis.ApisStep.permissions, services=CORE),
    "lp-account": least_privilege(account.AccountStep.permissions),
    "lp-role": least_privilege(role.RoleStep.permissions),
    "lp-binding": least_privilege(binding.BindingStep.permissions, service_accounts=[{"id": "coiled"}],
                                  roles=[{"id": "coiled", "permissions": TEMPLATE}]),
    "lp-registry": least_privilege(registry.RegistryStep.permissions, service_accounts=[{"id": "coiled"}]),
    "lp-instance": least_privilege(instance.InstanceAccountStep.permissions),
}
def scenario() -> dict:
    projects = [{"id": HOME, "number": "100000000001"}]
    for i, (name, spec) in enumerate(PROJECTS.items()):
        spec = copy.deepcopy(spec)
        op_role = spec.pop("operator_role", None)
        op = f"projects/u-{name}/roles/{op_role}" if op_role else "roles/owner"
        spec.setdefault("services", ALL_SERVICES)
        spec["bindings"] = spec.get("bindings", []) + [{"role": op, "members": [OPERATOR]}]
        projects.append({"id": f"u-{name}", "number": str(200000000000 + i), **spec})
    return {"projects": projects, "operator": {"id": "operator", "roles": ["roles/owner"]},
            "coiled": {"users": [{"token": TOKEN, "username": "unit",
                                  "workspaces": [n for n in PROJECTS if n.startswith("up-")] + ["chain"]}]}}


class CallLog:
    """The sandbox's record of calls (Google's and Coiled's), read from where the last look ended."""

    def __init__(self, sb):
        self.sb, self.seen = sb, 0

    def new(self) -> list[dict]:
        made = calls(self.sb, self.seen)
        self.seen += len(made)
        return made


LOG: list[CallLog] = []  # the module's sandbox, for plan() to see that a plan writes nothing


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    s = Sandbox(scenario(), Config(operation_s=0.0, infra_s=0.0),
                state_dir=tmp_path_factory.mktemp("steps-sandbox")).start()
    LOG.append(CallLog(s))
    yield s
    LOG.clear()
    s.stop()


@pytest.fixture(scope="module")
def google(sb):
    g = Google.from_key(json.loads(sb.operator_key_path.read_text()), endpoint=sb.google_endpoint)
    yield g
    g.close()


@pytest.fixture(scope="module")
def real(sb):
    """The real Google client libraries, as the operator, to look at what a step did."""
    return clients(sb)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch, sb):
    """The sandbox's environment (so the account's own calls in confirm go to it), with key files, the journal
    and the dask config in this test's directory."""
    for name, value in sb.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COILED_SETUP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DASK_CONFIG", str(tmp_path / "dask"))
    return tmp_path


def new_run(google, name: str, coiled=None, **opts) -> Run:
    project = f"u-{name}"
    explicit = opts.pop("explicit", set())
    opts.setdefault("wait_timeout", 5.0)
    opts.setdefault("zone", f"{REGION}-c")  # the command settles the zone before any step
    o = Options(project=project, interactive=False, yes=True, explicit=set(explicit), **opts)
    return Run(opts=o, google=google, journal=Journal(project), ui=Ui(interactive=False), coiled=coiled)


def record(run: Run) -> dict:
    """What a plan must leave as it was: the run record, the options, the journal and the files on disk."""
    snap = {f.name: copy.deepcopy(getattr(run, f.name)) for f in fields(run)
            if f.name not in ("opts", "google", "journal", "ui", "coiled")}
    snap["opts"] = copy.deepcopy(vars(run.opts))
    snap["journal"] = copy.deepcopy(run.journal.data)
    snap["files"] = sorted(str(p) for p in paths.config_dir().rglob("*")) if paths.config_dir().exists() else []
    return snap


def plan(step, run: Run):
    """The step's plan, checked against the protocol, its publications handed on as the engine does."""
    before = record(run)
    LOG[0].new()
    change = step.plan(run)
    assert record(run) == before, f"{step.key}: plan() changed the run"
    writes = [c["method"] for c in LOG[0].new() if c.get("write") or c.get("mutating")]
    assert writes == [], f"{step.key}: plan() wrote {writes}"
    assert set(change.publish) <= set(step.publishes), f"{step.key} publishes undeclared {set(change.publish)}"
    for name, value in change.publish.items():
        setattr(run, name, value)
    return change


def observe_plan(step, run: Run):
    step.observe(run)
    return plan(step, run)


def one(opts_run: Run, key: str):
    """The step `key` of the steps this run's options build."""
    return next(s for s in build(opts_run.opts) if s.key == key)


def rerun(run: Run, key: str):
    """A fresh run of the same options observing and planning the step again (what a re-run would see):
    (its plan, the step, the fresh run)."""
    fresh = Run(opts=run.opts, google=run.google, journal=Journal(run.opts.project), ui=run.ui, coiled=run.coiled,
                coiled_credentials=dict(run.coiled_credentials), key_id=run.key_id, keyfile=run.keyfile,
                instance_email=run.instance_email)
    step = one(fresh, key)
    return observe_plan(step, fresh), step, fresh


def again(run: Run, key: str):
    return rerun(run, key)[0]


def project_policy(real, project: str):
    req = iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/{project}")
    req.options.requested_policy_version = 3
    return real.projects.get_iam_policy(request=req)


def user_keys(real, email: str) -> list[str]:
    keys = real.iam.list_service_account_keys(request={
        "name": f"projects/-/serviceAccounts/{email}",
        "key_types": [iam_admin_v1.ListServiceAccountKeysRequest.KeyType.USER_MANAGED]}).keys
    return [k.name.rsplit("/", 1)[1] for k in keys]


def make_key(real, email: str) -> dict:
    return json.loads(real.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{email}").private_key_data)


# -- the protocol ---------------------------------------------------------------------------------------

ALL_OPTIONS = dict(create_instance_service_account=True)


@pytest.mark.parametrize("order", [ORDER, ROTATION, TEARDOWN], ids=["gcp", "rotate-key", "teardown"])
def test_every_step_declares_fields_of_the_run_record_and_reads_only_what_an_earlier_step_publishes(order):
    run_fields = {f.name for f in fields(Run)}
    published: set[str] = set()
    for step in build(Options(project="u-protocol", delete_repository=True, **ALL_OPTIONS), order):
        assert set(step.publishes) <= run_fields, step.key
        assert set(step.reads) <= published | COMMAND_FIELDS, f"{step.key} reads what no earlier step publishes"
        published |= set(step.publishes)
    # Every entry of the registry adds its steps through a steps_for function.
    assert all(callable(steps_for) for steps_for in order)


@pytest.mark.parametrize("opts, listed", [
    (dict(), True),
    (dict(gar=False), True),
    (dict(create_instance_service_account=True), True),
    (dict(explicit={"service_account"}), False),
    (dict(interactive=False), False),
    (dict(gar=False, interactive=False, upload=False), False),
])
def test_operator_permissions_are_the_union_of_the_steps_of_the_run(opts, listed):
    o = Options(project="u-protocol", **opts)
    perms = operator_permissions(o)
    want = set(PREFLIGHT_PERMISSIONS).union(*(s.permissions for s in build(o)))
    assert len(perms) == len(set(perms))
    assert set(perms) - {LISTING_PERMISSION} == want - {LISTING_PERMISSION}
    assert (LISTING_PERMISSION in perms) == listed
    assert ("artifactregistry.repositories.create" in perms) == o.gar
    assert "iam.roles.update" in perms and "resourcemanager.projects.setIamPolicy" in perms


class TrackedRun(Run):
    """A run record that notes which step reads or writes which of the fields steps hand each other."""

    def _note(self, kind: str, name: str) -> None:
        key = getattr(CURRENT, "key", None)
        if name in SHARED and key is not None:
            object.__getattribute__(self, "__dict__").setdefault(kind, set()).add((key, name))

    def __getattribute__(self, name):
        object.__getattribute__(self, "_note")("_reads", name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        self._note("_writes", name)
        object.__setattr__(self, name, value)


# Not handed between steps: the handles, and what the engine sets (whether earlier plans write, its two hooks).
SHARED = {f.name for f in fields(Run)} - {"opts", "google", "journal", "ui", "coiled", "earlier_writes", "reach",
                                          "wait_for"}
CURRENT = threading.local()  # the step whose method is running (observations run in threads of their own)


def tracked(key: str, method):
    def call(*args, **kwargs):
        CURRENT.key = key
        try:
            return method(*args, **kwargs)
        finally:
            CURRENT.key = None
    return call


def test_the_whole_registry_through_the_engine_touches_only_declared_fields_then_has_nothing_to_do(sb, google):
    """Every step of a full run, driven by the engine: what each touches of the shared record is what it declares
    it reads or publishes; a second run of every step has nothing to do."""
    name = "chain"
    o = Options(project=f"u-{name}", interactive=False, yes=True, wait_timeout=5.0, zone=f"{REGION}-c",
                create_instance_service_account=True)
    run = TrackedRun(opts=o, google=google, journal=Journal(o.project), ui=Ui(interactive=False),
                     coiled=coiled_for(sb, name))
    steps = build(o)
    for s in steps:
        for method in ("observe", "plan", "apply", "adopt", "on_skip", "local_files"):
            setattr(s, method, tracked(s.key, getattr(s, method)))
    eng = Engine(run, steps, Consent(interactive=False, yes=True), o.project)
    eng.plan()
    assert eng.agreed()
    eng.apply()
    assert [(r["step"], r["result"]) for r in eng.results] == [(s.key, "ok") for s in steps]
    undeclared = sorted((k, f) for k, f in run.__dict__["_reads"]
                        if f not in {*one_of(steps, k).reads, *one_of(steps, k).publishes})
    assert undeclared == [], "steps read fields they do not declare"
    undeclared = sorted((k, f) for k, f in run.__dict__.get("_writes", ()) if f not in one_of(steps, k).publishes)
    assert undeclared == [], "steps write fields they do not publish"
    again_ = Engine(Run(opts=o, google=google, journal=Journal(o.project), ui=run.ui, coiled=run.coiled,
                        coiled_credentials={"client_email": o.account_email, "private_key_id": run.key_id}),
                    build(o), Consent(interactive=False, yes=True), o.project)
    assert {k: c.action for k, c in again_.plan().items() if c.action != NOTHING} == {"confirm": CHECK,
                                                                                     "quotas": CHECK}


def one_of(steps, key: str):
    return next(s for s in steps if s.key == key)


# -- APIs -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, gar", [("apis-off", True), ("apis-off-nogar", False)])
def test_apis_enables_what_is_off_then_has_nothing_to_do(google, real, name, gar):
    run = new_run(google, name, gar=gar)
    step = one(run, "apis")
    change = observe_plan(step, run)
    wanted = [s for s in needs.services(gar) if s not in CORE]
    assert (change.action, change.detail) == (CREATE, "enable " + ", ".join(wanted))
    assert step.apply(run) == "enabled " + ", ".join(wanted)
    assert all(run.services[s] for s in wanted)
    for s in wanted:
        assert real.usage.get_service(request={"name": f"projects/u-{name}/services/{s}"}).state.name == "ENABLED"
    if not gar:
        assert real.usage.get_service(request={
            "name": f"projects/u-{name}/services/{needs.ARTIFACT_REGISTRY}"}).state.name == "DISABLED"
    assert again(run, "apis").action == NOTHING


def test_apis_trusts_the_preflight_answers(google):
    run = new_run(google, "apis-off")
    run.services = {s: True for s in ALL_SERVICES}
    assert observe_plan(one(run, "apis"), run).action == NOTHING


# -- the service account and its key ------------------------------------------------------------------------

def test_account_created_with_a_key_file_then_kept(google, real):
    run = new_run(google, "acct-new")
    step = one(run, "account")
    email = sa("u-acct-new")
    change = observe_plan(step, run)
    assert (change.action, change.detail) == (CREATE, f"create {email} and a key")
    assert change.publish == {"key_id": None}
    path = paths.default_key_path("u-acct-new", "coiled")
    assert [f.path for f in step.local_files(run)] == [path]
    outcome = step.apply(run)
    assert outcome.startswith("created account, created key ")
    assert run.fresh_account and run.key_id and run.keyfile["client_email"] == email
    assert user_keys(real, email) == [run.key_id]
    assert json.loads(path.read_text())["private_key_id"] == run.key_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    j = Journal("u-acct-new")
    assert (j.get("account"), j.get("key_id"), j.get("key_file"), j.get("key_pending")) == \
        (email, run.key_id, str(path), None)
    assert run.key_id in j.our_keys()
    assert "private_key" not in json.dumps(j.data)
    second, step, fresh = rerun(run, "account")
    assert (second.action, second.publish) == (NOTHING, {"key_id": run.key_id})
    assert second.detail == f"key {run.key_id[:12]}… in {path}"
    assert step.local_files(fresh) == []
    fresh.keyfile = fresh.key_path = None
    step.adopt(fresh)  # what the engine does with a step that has nothing to do
    assert (fresh.keyfile, fresh.key_path) == (run.keyfile, str(path))


def test_disabled_account_is_refused_in_one_sentence(google):
    run = new_run(google, "acct-disabled")
    step = one(run, "account")
    step.observe(run)
    with pytest.raises(UserError) as e:
        plan(step, run)
    assert e.value.message.startswith(f"Service account {sa('u-acct-disabled')} is disabled: enable it")
    assert "--service-account" in e.value.message


def test_key_file_of_another_account_is_replaced_and_the_plan_says_so(google, real):
    run = new_run(google, "acct-other-file")
    path = paths.default_key_path("u-acct-other-file", "coiled")
    path.parent.mkdir(parents=True)
    other = make_key(real, f"operator@{HOME}.iam.gserviceaccount.com")
    paths.write_private(path, json.dumps(other))
    step = one(run, "account")
    change = observe_plan(step, run)
    assert change.action == CREATE
    assert change.detail == (f"create {sa('u-acct-other-file')} and a key, replacing {path} (it holds a key of "
                             f"operator@{HOME}.iam.gserviceaccount.com)")
    step.apply(run)
    assert json.loads(path.read_text())["client_email"] == sa("u-acct-other-file")
    assert again(run, "account").action == NOTHING


def test_damaged_default_key_file_is_replaced(google):
    run = new_run(google, "acct-damaged")
    path = paths.default_key_path("u-acct-damaged", "coiled")
    path.parent.mkdir(parents=True)
    paths.write_private(path, "{not json")
    step = one(run, "account")
    change = observe_plan(step, run)
    assert change.detail == (f"create a key for {sa('u-acct-damaged')}, replacing {path} (it is not a usable key "
                             "file)")
    step.apply(run)
    assert json.loads(path.read_text())["private_key_id"] == run.key_id


def test_account_at_googles_key_limit_is_refused_without_deleting_a_key(google, real):
    email = sa("u-acct-full")
    run = new_run(google, "acct-full")
    step = one(run, "account")
    assert observe_plan(step, run).action == CREATE
    with pytest.raises(UserError) as e:
        step.apply(run)
    assert e.value.message.startswith(f"Service account {email} already has 10 user-managed keys, the most Google "
                                      "allows: delete one you no longer use")
    assert len(user_keys(real, email)) == 10


def test_key_creation_forbidden_by_the_organization_is_one_sentence(google, real):
    run = new_run(google, "acct-org-policy")
    step = one(run, "account")
    observe_plan(step, run)
    with pytest.raises(UserError) as e:
        step.apply(run)
    assert e.value.message.startswith("The organization policy iam.disableServiceAccountKeyCreation forbids creating "
                                      "keys in project u-acct-org-policy")
    assert user_keys(real, sa("u-acct-org-policy")) == []


def test_keys_an_interrupted_run_left_behind_are_deleted(google, real):
    email = sa("u-acct-orphans")
    known, orphan = user_keys(real, email)  # the scenario's two keys: one older, one the interrupted run made
    run = new_run(google, "acct-orphans")
    ours = make_key(real, email)
    path = paths.default_key_path("u-acct-orphans", "coiled")
    path.parent.mkdir(parents=True)
    paths.write_private(path, json.dumps(ours))
    run.journal.set(account=email, key_pending={"email": email, "known": [known], "started": 0})
    step = one(run, "account")
    change = observe_plan(step, run)
    kid = ours["private_key_id"]
    assert (change.action, change.publish) == (UPDATE, {"key_id": kid})
    assert change.detail == f"key {kid[:12]}… in {path}; delete 1 key an interrupted run left behind"
    assert step.apply(run) == "deleted 1 orphaned key"
    assert sorted(user_keys(real, email)) == sorted([known, kid])
    assert Journal("u-acct-orphans").get("key_pending") is None
    assert again(run, "account").action == NOTHING


def test_no_local_key_uses_the_live_key_coiled_holds_else_makes_one(google, real):
    email = sa("u-acct-coiled-key")
    [kid] = user_keys(real, email)
    run = new_run(google, "acct-coiled-key", no_local_key=True)
    run.coiled_credentials = {"client_email": email, "private_key_id": kid}
    step = one(run, "account")
    change = observe_plan(step, run)
    assert (change.action, change.detail, change.publish) == (NOTHING, f"key {kid[:12]}… held by Coiled",
                                                              {"key_id": kid})
    assert step.local_files(run) == []
    run = new_run(google, "acct-coiled-key", no_local_key=True)
    run.coiled_credentials = {"client_email": email, "private_key_id": "0" * 40}  # deleted since
    change = observe_plan(one(run, "account"), run)
    assert (change.action, change.publish) == (CREATE, {"key_id": None})


# -- the custom role --------------------------------------------------------------------------------------

def get_role(real, name: str):
    return real.iam.get_role(request={"name": name})


def test_role_created_with_the_template_then_nothing(google, real):
    run = new_run(google, "role-new")
    step = one(run, "role")
    name = role_name("u-role-new", "coiled")
    change = observe_plan(step, run)
    assert (change.action, change.detail) == (CREATE, f"create {name} with 81 permissions")
    assert step.apply(run) == "created"
    assert sorted(get_role(real, name).included_permissions) == sorted(TEMPLATE)
    change = again(run, "role")
    assert (change.action, change.detail) == (NOTHING, f"{name} has the 81 permissions")


def test_soft_deleted_role_is_undeleted_and_completed(google, real):
    run = new_run(google, "role-deleted")
    step = one(run, "role")
    name = role_name("u-role-deleted", "coiled")
    change = observe_plan(step, run)
    assert change.action == UPDATE
    assert change.detail == f"undelete {name} and add 3: {', '.join(TEMPLATE[-3:])}"
    assert step.apply(run) == "undeleted and updated (+3 −0)"
    r = get_role(real, name)
    assert not r.deleted and sorted(r.included_permissions) == sorted(TEMPLATE)
    assert again(run, "role").action == NOTHING


def test_drifted_role_is_set_back_to_exactly_the_template(google, real):
    run = new_run(google, "role-drift")
    step = one(run, "role")
    name = role_name("u-role-drift", "coiled")
    change = observe_plan(step, run)
    assert change.action == UPDATE
    assert change.detail == (f"update {name}: add 2: {TEMPLATE[0]}, {TEMPLATE[1]}; remove 1: storage.buckets.delete")
    assert step.apply(run) == "updated (+2 −1)"
    assert sorted(get_role(real, name).included_permissions) == sorted(TEMPLATE)
    assert again(run, "role").action == NOTHING


def test_reserved_role_id_names_the_flag_that_gets_past_it(google):
    run = new_run(google, "role-reserved")
    step = one(run, "role")
    assert observe_plan(step, run).action == CREATE  # Google shows no role by that id
    with pytest.raises(UserError) as e:
        step.apply(run)
    assert e.value.message.startswith("The role id coiled in project u-role-reserved belongs to a role deleted more "
                                      "than 7 days ago")
    assert "pass --role-id with another id (for example coiled_2)" in e.value.message


def test_role_with_another_title_is_updated(google, real):
    run = new_run(google, "role-title")
    step = one(run, "role")
    change = observe_plan(step, run)
    assert (change.action, change.detail) == (UPDATE, f"update {role_name('u-role-title', 'coiled')}: "
                                                      "title/description/stage")
    step.apply(run)
    assert get_role(real, role_name("u-role-title", "coiled")).title == needs.control_role().title
    assert again(run, "role").action == NOTHING


# -- the project binding --------------------------------------------------------------------------------

def test_binding_added_keeping_everyone_else(google, real):
    run = new_run(google, "bind-new")
    step = one(run, "binding")
    member, rname = "serviceAccount:" + sa("u-bind-new"), role_name("u-bind-new", "coiled")
    before = project_policy(real, "u-bind-new")
    change = observe_plan(step, run)
    assert (change.action, change.detail) == (CREATE, f"bind {member} → {rname}")
    assert step.apply(run) == "bound"
    after = project_policy(real, "u-bind-new")
    assert [(b.role, list(b.members)) for b in after.bindings if b.role == rname] == [(rname, [member])]
    kept = [b for b in after.bindings if b.role != rname]
    assert [(b.role, list(b.members)) for b in kept] == [(b.role, list(b.members)) for b in before.bindings]
    change = again(run, "binding")
    assert (change.action, change.detail) == (NOTHING, f"{member} → {rname}")


def test_conditional_binding_does_not_count_and_is_kept(google, real):
    run = new_run(google, "bind-cond")
    step = one(run, "binding")
    rname = role_name("u-bind-cond", "coiled")
    assert observe_plan(step, run).action == CREATE
    step.apply(run)
    ours = [b for b in project_policy(real, "u-bind-cond").bindings if b.role == rname]
    assert sorted(b.condition.title for b in ours) == ["", "until-2030"]
    assert again(run, "binding").action == NOTHING


# -- Artifact Registry ---------------------------------------------------------------------------------

def repo_members(real, name: str) -> list[str]:
    policy = real.registry.get_iam_policy(request={"resource": name})
    return [m for b in policy.bindings if b.role == needs.REPO_ROLE for m in b.members]


def test_registry_created_and_granted_then_nothing(google, real):
    run = new_run(google, "reg-new")
    step = one(run, "registry")
    name = repo("u-reg-new")
    change = observe_plan(step, run)
    assert (change.action, change.detail) == (CREATE, f"create DOCKER repository {name}; grant {needs.REPO_ROLE}")
    assert step.apply(run) == f"created repository, granted {needs.REPO_ROLE}"
    assert real.registry.get_repository(name=name).format_.name == "DOCKER"
    assert repo_members(real, name) == ["serviceAccount:" + sa("u-reg-new")]
    assert Journal("u-reg-new").get("created", {}).get("repository") == name
    change = again(run, "registry")
    assert (change.action, change.detail) == (NOTHING, f"{name} with {needs.REPO_ROLE}")


def test_existing_repository_only_granted(google, real):
    run = new_run(google, "reg-grant")
    step = one(run, "registry")
    name = repo("u-reg-grant")
    change = observe_plan(step, run)
    assert (change.action, change.detail) == (UPDATE, f"grant {needs.REPO_ROLE} on {name}")
    assert step.apply(run) == f"granted {needs.REPO_ROLE}"
    assert repo_members(real, name) == ["serviceAccount:" + sa("u-reg-grant")]
    assert again(run, "registry").action == NOTHING


def test_repository_of_another_format_is_refused_in_one_sentence(google):
    run = new_run(google, "reg-maven")
    step = one(run, "registry")
    step.observe(run)
    with pytest.raises(UserError) as e:
        plan(step, run)
    assert e.value.message == (f"Repository {repo('u-reg-maven')} exists with format MAVEN, but Coiled needs a DOCKER "
                               "repository named coiled: delete or rename it, or pass --no-gar.")


def test_registry_with_its_api_off_plans_a_creation_without_reading_it(google):
    run = new_run(google, "reg-off")
    run.services = {needs.ARTIFACT_REGISTRY: False}
    step = one(run, "registry")
    change = observe_plan(step, run)
    assert change.action == CREATE and change.detail.startswith(f"create DOCKER repository {repo('u-reg-off')}")


def test_no_gar_builds_no_registry_step():
    keys = [s.key for s in build(Options(project="u-protocol", gar=False))]
    assert "registry" not in keys and "apis" in keys


# -- the instance account, its role and binding ----------------------------------------------------------

def test_instance_account_role_and_binding_created_then_nothing(google, real):
    run = new_run(google, "inst-create", create_instance_service_account=True)
    steps = [s for s in build(run.opts) if s.key.startswith("instance")]
    assert [s.key for s in steps] == ["instance", "instance_role", "instance_binding"]
    email = default_instance_email("u-inst-create")
    rname = role_name("u-inst-create", INSTANCE_ROLE_ID)
    changes = [observe_plan(s, run) for s in steps]
    assert [(c.action, c.detail) for c in changes] == [
        (CREATE, f"create {email}"),
        (CREATE, f"create {rname} with 1 permission"),
        (CREATE, f"bind serviceAccount:{email} → {rname}"),
    ]
    assert changes[0].publish == {"instance_email": email} and run.instance_email == email
    assert [s.apply(run) for s in steps] == ["created", "created", "bound"]
    assert real.iam.get_service_account(name=f"projects/-/serviceAccounts/{email}").email == email
    assert list(get_role(real, rname).included_permissions) == [needs.LOG_PERMISSION]
    assert any(b.role == rname and f"serviceAccount:{email}" in b.members
               for b in project_policy(real, "u-inst-create").bindings)
    assert [again(run, k).action for k in ("instance", "instance_role", "instance_binding")] == [NOTHING] * 3
    steps[0].on_skip(run)
    assert run.instance_email is None


def test_given_instance_account_is_used(google):
    email = sa("u-inst-given", "workers")
    run = new_run(google, "inst-given", instance_service_account=email, explicit={"instance"})
    assert [s.key for s in build(run.opts) if s.key.startswith("instance")] == ["instance"]
    change = observe_plan(one(run, "instance"), run)
    assert (change.action, change.detail, change.publish) == (NOTHING, f"use {email}", {"instance_email": email})


@pytest.mark.parametrize("explicit, start", [
    ({"instance"}, "--instance-service-account {email} does not exist"),
    (set(), "Coiled's instance account {email} does not exist"),  # kept from what Coiled holds
])
def test_missing_instance_account_is_bad_input(google, explicit, start):
    email = sa("u-inst-missing", "workers")
    run = new_run(google, "inst-missing", instance_service_account=email, explicit=explicit)
    step = one(run, "instance")
    step.observe(run)
    with pytest.raises(BadInput) as e:
        plan(step, run)
    assert e.value.message.startswith(start.format(email=email))
    assert run.instance_email is None


# -- the permissions in effect -----------------------------------------------------------------------------

def test_confirm_plans_a_check_of_what_verify_counts():
    for gar, tail in ((True, " and 2 on the registry repository"), (False, "")):
        run = new_run(None, "confirm-ok", gar=gar)
        change = plan(confirm.ConfirmStep(), run)
        assert (change.action, change.detail) == (
            CHECK, f"check, as the account itself, the role's 81 permissions in the project{tail}")


def test_confirm_as_the_account_sees_every_permission(google, real):
    run = new_run(google, "confirm-ok")
    run.keyfile = make_key(real, sa("u-confirm-ok"))
    step = one(run, "confirm")
    observe_plan(step, run)
    assert step.apply(run) == "all permissions in effect"


def test_confirm_says_what_google_does_not_grant(google, real):
    run = new_run(google, "confirm-unbound", wait_timeout=0.2)
    run.keyfile = make_key(real, sa("u-confirm-unbound"))
    step = one(run, "confirm")
    with pytest.raises(UserError) as e:
        step.apply(run)
    assert e.value.message.startswith(f"After 0 s Google still does not grant {sa('u-confirm-unbound')}: "
                                      f"{', '.join(TEMPLATE[:5])} …")


def test_confirm_without_the_private_key_is_skipped(google):
    run = new_run(google, "confirm-ok", no_local_key=True)
    assert one(run, "confirm").apply(run).startswith("skipped: the key is held by Coiled only")


# -- the Coiled backend ------------------------------------------------------------------------------------

def coiled_for(sb, name: str) -> Coiled:
    return Coiled(sb.coiled_url, TOKEN, workspace=name)


def upload_run(sb, google, real, name: str, **opts) -> Run:
    run = new_run(google, name, coiled=coiled_for(sb, name), **opts)
    run.keyfile = make_key(real, sa(f"u-{name}"))
    run.key_id = run.keyfile["private_key_id"]
    run.journal.add_key(run.key_id)
    return run


def test_upload_to_a_new_workspace_then_nothing_to_change(sb, google, real, home):
    name = "up-new"
    run = upload_run(sb, google, real, name)
    step = one(run, "upload")
    change = observe_plan(step, run)
    assert change.action == CREATE
    assert change.detail.startswith(f"workspace {name}: account none → {sa('u-up-new')}; ")
    for part in ("firewall none → 0.0.0.0/0 on ports 22,8786,8787", "registry none → Artifact Registry",
                 "global infrastructure", "region us-east1"):
        assert part in change.detail
    assert "dask config" not in change.detail  # written only with --write-dask-config
    assert step.local_files(run) == []
    assert step.apply(run).startswith("sent credentials, firewall, registry, global infrastructure, region us-east1")
    opts = coiled_for(sb, name).backend_options()["options"]
    assert opts["gcp_service_creds_dict"]["private_key_id"] == run.key_id
    assert "private_key" not in opts["gcp_service_creds_dict"]
    assert (opts["registry"]["type"], opts["firewall_spec"]) == ("gar", upload.firewall_spec(run.opts))
    assert not (home / "dask" / "coiled.yaml").exists()
    step2 = one(run, "upload")
    change = observe_plan(step2, run)
    assert (change.action, change.detail) == (NOTHING, f"workspace {name} uses {sa('u-up-new')}")
    assert step2.local_files(run) == []
    assert step2.apply(run) == "nothing to do"


def test_upload_says_why_coiled_could_not_set_up(sb, google, real):
    run = upload_run(sb, google, real, "up-unbound")  # the account holds no role: Coiled cannot work with it
    step = one(run, "upload")
    observe_plan(step, run)
    with pytest.raises(UserError) as e:
        step.apply(run)
    assert e.value.message.startswith("Coiled could not set up Coiled's global infrastructure: Permission ")
    assert e.value.message.endswith("fix that and run again (coiled-setup verify shows what is missing).")


def test_upload_needs_the_private_key_to_send_credentials(sb, google, real):
    run = upload_run(sb, google, real, "up-nokey", no_local_key=True)
    run.keyfile = None
    step = one(run, "upload")
    assert observe_plan(step, run).action == CREATE
    with pytest.raises(UserError) as e:
        step.apply(run)
    assert e.value.message.startswith("Coiled needs the key's private half, which this run does not have")


def test_upload_retires_the_older_keys_this_tool_made(sb, google, real):
    name = "up-retire"
    email = sa(f"u-{name}")
    old = make_key(real, email)["private_key_id"]
    run = upload_run(sb, google, real, name)
    run.journal.set(keys=[old, run.key_id])
    step = one(run, "upload")
    observe_plan(step, run)
    assert step.apply(run).endswith("; deleted 1 old key coiled-setup had made")
    assert user_keys(real, email) == [run.key_id]
    assert Journal(f"u-{name}").our_keys() == [run.key_id]


def test_upload_of_another_key_says_which(sb, google, real):
    name = "up-other-key"
    run = upload_run(sb, google, real, name)
    step = one(run, "upload")
    observe_plan(step, run)
    step.apply(run)
    first = run.key_id
    run.keyfile = make_key(real, sa(f"u-{name}"))
    run.key_id = run.keyfile["private_key_id"]
    change = observe_plan(one(run, "upload"), run)
    assert change.action == UPDATE
    assert change.detail.startswith(f"workspace {name}: key {first[:12]}… → {run.key_id[:12]}…; global "
                                     "infrastructure; region us-east1")


# -- each step as an operator holding only what it declares -------------------------------------------------

@pytest.mark.parametrize("name, keys, opts", [
    ("lp-apis", ["apis"], {}),
    ("lp-account", ["account"], {}),
    ("lp-role", ["role"], {}),
    ("lp-binding", ["binding"], {}),
    ("lp-registry", ["registry"], {}),
    ("lp-instance", ["instance"], {"create_instance_service_account": True}),
])
def test_a_step_needs_no_permission_it_does_not_declare(google, name, keys, opts):
    run = new_run(google, name, **opts)
    run.services = {s: True for s in ALL_SERVICES} if name != "lp-apis" else {}
    for key in keys:
        step = one(run, key)
        assert observe_plan(step, run).writes
        step.apply(run)
        assert again(run, key).action == NOTHING
