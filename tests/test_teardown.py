"""`coiled-setup teardown`, end to end against the sandbox.

Regressions these tests guard: someone else's binding, condition or key lost; an account, role or repository
coiled-setup did not create deleted; an account deleted while it holds a key someone else made; the repository
(and its images) deleted without --delete-repository; a second teardown writing again; a setup after a teardown
not converging (the role id stays reserved: the wizard undeletes it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients, state

P = "coiled-demo"
SA = f"coiled@{P}.iam.gserviceaccount.com"
INSTANCE = f"coiled-instance@{P}.iam.gserviceaccount.com"
ROLE = f"projects/{P}/roles/coiled"
INSTANCE_ROLE = f"projects/{P}/roles/coiled_instance"
REPO = f"projects/{P}/locations/us-east1/repositories/coiled"
FAST = dict(propagation_delay_s=0, operation_s=0.05, infra_s=0.05)
TEARDOWN = ("teardown", "--non-interactive", "--yes")


def policy(c):
    return c.projects.get_iam_policy(request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})


def bindings(pol, without: tuple[str, ...] = ()) -> set:
    """Every (role, member, condition title) of a policy, leaving out the members named."""
    return {(b.role, m, b.condition.title if b.HasField("condition") else "") for b in pol.bindings
            for m in b.members if not any(w in m for w in without)}


def account_exists(c, email) -> bool:
    return any(a.email == email for a in c.iam.list_service_accounts(request={"name": f"projects/{P}"}))


def user_keys(c, email=SA) -> list[str]:
    resp = c.iam.list_service_account_keys(request={"name": f"projects/-/serviceAccounts/{email}", "key_types": [1]})
    return [k.name.rsplit("/", 1)[1] for k in resp.keys]


def writes(sb, since: int) -> list[dict]:
    return [x for x in calls(sb, since) if x["write"]]


def journal(sb) -> dict:
    return json.loads((sb.state_dir / "home" / "state" / f"journal-{P}.json").read_text())


def test_teardown_removes_what_coiled_setup_made_and_keeps_everyone_elses(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", "--create-instance-service-account", check=0)
    c = clients(sb)
    key_file = Path(journal(sb)["key_file"])
    # Someone else binds a user to the Coiled role: the binding must survive the role's deletion.
    pol = policy(c)
    next(b for b in pol.bindings if b.role == ROLE).members.append("user:ann@example.com")
    c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": pol})
    before = bindings(policy(c), without=(SA, INSTANCE))

    mark = len(calls(sb))
    plan = cli(sb, *TEARDOWN, "--dry-run", check=0)
    assert writes(sb, mark) == [] and "delete projects/coiled-demo/roles/coiled" in plan.stdout

    doc = json.loads(cli(sb, *TEARDOWN, "--output", "json", check=0).stdout)
    assert doc["command"] == "teardown" and all(s["result"] == "ok" for s in doc["steps"])
    assert state(sb)["coiled"]["workspaces"]["demo"]["credentials"] is None
    assert not account_exists(c, SA) and not account_exists(c, INSTANCE)
    for name in (ROLE, INSTANCE_ROLE):
        assert c.iam.get_role(request={"name": name}).deleted
    after = policy(c)
    assert bindings(after, without=(SA, INSTANCE)) == before  # every other binding and condition kept
    assert not [m for b in after.bindings for m in b.members if SA in m or INSTANCE in m]
    # The repository and its images stay; only the account's grant on it went.
    repo = c.registry.get_repository(name=REPO)
    assert repo.name == REPO
    assert not [m for b in c.registry.get_iam_policy(request={"resource": REPO}).bindings for m in b.members
                if SA in m]
    assert not key_file.exists()

    mark = len(calls(sb))
    again = cli(sb, *TEARDOWN, check=0)
    assert writes(sb, mark) == [] and "Nothing to remove" in again.stdout


def test_a_setup_after_a_teardown_converges_and_delete_repository_removes_it(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    cli(sb, *TEARDOWN, "--delete-repository", check=0)
    c = clients(sb)
    assert REPO not in [r.name for r in c.registry.list_repositories(parent=f"projects/{P}/locations/us-east1")]
    out = cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    assert "undeleted" in out.stdout  # the role id is reserved: the wizard brings the role back
    cli(sb, "verify", check=0)


def test_an_account_with_a_key_someone_else_made_is_kept_with_that_key(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    c = clients(sb)
    foreign = c.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{SA}").name.rsplit("/", 1)[1]
    out = cli(sb, *TEARDOWN, check=0)
    assert account_exists(c, SA) and user_keys(c) == [foreign]
    assert "did not create" in out.stdout


def test_an_account_coiled_setup_did_not_create_is_kept(make_sandbox, cli):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0]["service_accounts"] = [{"id": "coiled", "display_name": "made by hand"}]
    sb = make_sandbox(s, **FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    c = clients(sb)
    assert len(user_keys(c)) == 1
    cli(sb, *TEARDOWN, check=0)
    assert account_exists(c, SA) and user_keys(c) == []  # its keys were coiled-setup's; the account is not
    assert not [m for b in policy(c).bindings for m in b.members if SA in m]


def test_a_role_whose_creation_lost_its_answer_is_known_as_made_here_and_torn_down(make_sandbox, cli, tmp_path):
    """The run is killed while Google holds CreateRole's answer (the role made); the next run adopts the role, and
    teardown must still know coiled-setup made it."""
    import os
    import subprocess
    import sys
    import time

    sb = make_sandbox(**FAST)
    sb.world.config.hold_method, sb.world.config.hold_s = "CreateRole", 30
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(tmp_path / "user-home"), GRPC_VERBOSITY="ERROR")
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", "gcp", "--non-interactive", "--yes"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [x for x in calls(sb) if x["method"] == "CreateRole"]:
            time.sleep(0.02)
        proc.kill()
    finally:
        proc.wait(timeout=30)
    sb.world.config.hold_method, sb.world.config.hold_s = "", 0
    assert [x for x in calls(sb) if x["method"] == "CreateRole" and x["code"] == "OK"]
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    assert journal(sb)["created"].get("role") == ROLE
    cli(sb, *TEARDOWN, check=0)
    assert clients(sb).iam.get_role(request={"name": ROLE}).deleted
