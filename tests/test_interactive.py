"""The interactive wizard, driven in a pseudo-terminal as a person would."""

import copy
import json
import os
import re
import sys
import time

import pexpect
import pytest

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients, state

P = "coiled-demo"
DOWN, ENTER = "\x1b[B", "\r"
CLEAR = "\x7f" * 40  # backspaces: empties a text prompt
NARROW = "203.0.113.0/24"
INSTANCE = f"coiled-instance@{P}.iam.gserviceaccount.com"


@pytest.fixture
def terminal(tmp_path):
    def spawn(sb, *args, drop=()):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
        env.update(sb.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", COLUMNS="160")
        for name in drop:
            env.pop(name, None)
        child = pexpect.spawn(sys.executable, ["-m", "coiled_setup", "gcp", *args], env=env, encoding="utf-8",
                              timeout=60, dimensions=(50, 160))
        child.logfile_read = open(tmp_path / "screen.log", "a")
        return child

    return spawn


def answer_defaults_until_plan(child, at_first_question: bool = False):
    if not at_first_question:
        child.expect("Service account for Coiled")
    child.send(ENTER)
    child.expect("least-privilege")
    child.send(ENTER)
    child.expect(r"CIDR")
    child.send(ENTER)
    child.expect("Apply this plan")
    child.send(ENTER)


def finish(child) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_select_an_existing_account(make_sandbox, terminal):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0]["service_accounts"] = [{"id": "data-pipeline", "display_name": "Pipelines"}]
    sb = make_sandbox(s)
    child = terminal(sb)
    child.expect("Service account for Coiled")
    child.send(DOWN + ENTER)
    child.expect("least-privilege")
    child.send(ENTER)
    child.expect("CIDR")
    child.send("\x15" * 3 + "\x7f" * 20 + "198.51.100.0/24" + ENTER)
    child.expect("Apply this plan")
    child.send(ENTER)
    assert finish(child) == 0
    email = f"data-pipeline@{P}.iam.gserviceaccount.com"
    pol = clients(sb).projects.get_iam_policy(
        request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})
    assert any(f"serviceAccount:{email}" in b.members and b.role == f"projects/{P}/roles/coiled"
               for b in pol.bindings)
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["credentials"]["client_email"] == email
    assert ws["settings"]["scheduler_firewall"] == {"ingress": [{"ports": [22, 8786, 8787], "cidr": "198.51.100.0/24"}]}
    assert not any(x["method"] == "CreateServiceAccount" for x in calls(sb))
    # Listed once (the project's accounts fit one page), though the listing starts before it is needed.
    assert [x["method"] for x in calls(sb) if x["method"] == "ListServiceAccounts"] == ["ListServiceAccounts"]


def test_the_account_list_is_read_alongside_the_preflight(make_sandbox, terminal):
    """The first question waits for the listing of the project's accounts (a round trip per 100 of them): it
    starts before the preflight answers, not after it."""
    latency = 0.05
    sb = make_sandbox(latency_ms=latency * 1000)
    child = terminal(sb)
    child.expect("Service account for Coiled")
    record = calls(sb)
    child.sendintr()
    assert finish(child) == 130
    # A call is recorded when its answer is ready, one latency after it was sent.
    preflight = next(x for x in record if x["method"] == "TestIamPermissions")
    listed = [x for x in record if x["method"] == "ListServiceAccounts"]
    assert len(listed) == 1
    sent = listed[0]["time"] - latency
    assert sent < preflight["time"], f"listing sent {sent - preflight['time']:.3f} s after the preflight's answer"


def test_a_failed_step_can_be_retried(make_sandbox, terminal):
    sb = make_sandbox(fail_method="CreateRole", fail_times=1)
    child = terminal(sb)
    answer_defaults_until_plan(child)
    child.expect("'Custom role' failed. What now")
    child.send(ENTER)  # Retry is the first choice
    assert finish(child) == 0
    creates = [x["code"] for x in calls(sb) if x["method"] == "CreateRole"]
    assert creates == ["FAILED_PRECONDITION", "OK"]
    assert state(sb)["roles"][f"projects/{P}/roles/coiled"]["deleted"] is False


def test_abort_after_a_failure_stops_with_exit_1(make_sandbox, terminal):
    sb = make_sandbox(fail_method="CreateRole", fail_times=5)
    child = terminal(sb)
    answer_defaults_until_plan(child)
    child.expect("'Custom role' failed. What now")
    child.send(DOWN + ENTER)  # Abort
    child.expect("Summary")  # what was done before the abort, and what was not
    child.expect("Stopped at 'Custom role'")
    assert finish(child) == 1
    assert not any(x["method"] == "SetIamPolicy" for x in calls(sb))


def test_ctrl_c_exits_130_with_a_resume_hint(make_sandbox, terminal):
    sb = make_sandbox(propagation_delay_s=30)
    child = terminal(sb)
    answer_defaults_until_plan(child)
    # In the wait for the new account (known from the sandbox's record, not from the spinner's redrawn line).
    waiting = lambda: any(x["method"] == "ListServiceAccountKeys" and x["code"] == "NOT_FOUND"  # noqa: E731
                          for x in calls(sb))
    deadline = time.monotonic() + 60
    while not waiting() and time.monotonic() < deadline:
        child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=0.1)  # keeps reading the screen meanwhile
    assert waiting() and child.isalive(), child.before
    child.sendintr()
    child.expect("Run the same command again")
    assert finish(child) == 130


def test_an_invalid_answer_is_asked_again_and_a_typed_account_is_created(make_sandbox, terminal):
    sb = make_sandbox()
    child = terminal(sb, drop=("GOOGLE_CLOUD_PROJECT",))
    child.expect("Google Cloud project id")
    child.send("My_Project" + ENTER)
    child.expect("not a valid project id")  # asked again, not the end of the run
    child.send(CLEAR + P + ENTER)
    child.expect("Service account for Coiled")
    child.send(DOWN + ENTER)  # another account: type its name
    child.expect("Account id or email")
    child.send("Bad_Name" + ENTER)
    child.expect("not a valid account id")
    child.send(CLEAR + "data-science" + ENTER)
    child.expect("least-privilege")
    child.send(ENTER)
    child.expect("CIDR")
    child.send(CLEAR + "::/0" + ENTER)
    child.expect("must be an IPv4 network")
    child.send(CLEAR + "198.51.100.0/24" + ENTER)
    child.expect("Apply this plan")
    child.send(ENTER)
    assert finish(child) == 0
    email = f"data-science@{P}.iam.gserviceaccount.com"
    assert clients(sb).iam.get_service_account(name=f"projects/-/serviceAccounts/{email}").email == email
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["credentials"]["client_email"] == email
    assert ws["settings"]["scheduler_firewall"]["ingress"][0]["cidr"] == "198.51.100.0/24"


def test_enter_everywhere_on_a_rerun_changes_nothing_and_a_change_shows_old_and_new(make_sandbox, terminal):
    sb = make_sandbox()
    first = terminal(sb, "--non-interactive", "--yes", "--firewall-cidr", NARROW, "--create-instance-service-account")
    assert finish(first) == 0
    mark = len(calls(sb))

    child = terminal(sb)
    child.expect("Service account for Coiled")
    child.send(ENTER)
    child.expect("least-privilege")
    child.send(ENTER)
    child.expect("CIDR")
    child.send(ENTER)
    child.expect("Nothing to change")
    assert finish(child) == 0
    assert not [x for x in calls(sb, mark) if x["write"]]
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["settings"]["scheduler_firewall"]["ingress"][0]["cidr"] == NARROW
    assert ws["instance_service_account"] == INSTANCE

    # Other answers: the plan names each setting's old and new value; declining changes nothing.
    child = terminal(sb)
    child.expect("Service account for Coiled")
    child.send(ENTER)
    child.expect("least-privilege")
    child.send("\x1b[A" + ENTER)  # up to "none"
    child.expect("CIDR")
    child.send(CLEAR + "0.0.0.0/0" + ENTER)
    child.expect("Apply this plan")
    plan = re.sub(r"[\s│]+", " ", child.before)  # the table's wrapped cells, joined
    assert f"instance account {INSTANCE} → none" in plan and f"firewall {NARROW} → 0.0.0.0/0" in plan
    child.send("n")
    assert finish(child) == 0
    assert not [x for x in calls(sb, mark) if x["write"]]


def test_the_coiled_account_is_never_offered_as_the_separate_instance_account(make_sandbox, terminal):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0]["service_accounts"] = [{"id": "coiled-instance", "display_name": "Instances"}]
    sb = make_sandbox(s)
    child = terminal(sb)
    child.expect("Service account for Coiled")
    child.send(DOWN + ENTER)  # the existing coiled-instance account
    child.expect("least-privilege")
    child.send(DOWN + ENTER)  # were "create or reuse coiled-instance" offered, this would pick it
    child.expect("CIDR")
    child.send(ENTER)
    child.expect("Apply this plan")
    child.send(ENTER)
    assert finish(child) == 0
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["credentials"]["client_email"] == INSTANCE and ws["instance_service_account"] is None
    assert not any(x["method"] == "CreateServiceAccount" for x in calls(sb))


def test_skipping_a_step_skips_the_steps_that_need_it(make_sandbox, terminal):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0]["service_accounts"] = [{"id": "coiled", "display_name": "Coiled"}]
    # Only the instance account is created in this run: its creation keeps failing.
    sb = make_sandbox(s, fail_method="CreateServiceAccount", fail_times=100)
    child = terminal(sb)
    child.expect("Service account for Coiled")
    child.send(ENTER)
    child.expect("least-privilege")
    child.send(DOWN + ENTER)  # create the instance account
    child.expect("CIDR")
    child.send(ENTER)
    child.expect("Apply this plan")
    child.send(ENTER)
    child.expect("'Instance service account' failed. What now")
    t0 = time.monotonic()
    child.send(DOWN + DOWN + ENTER)  # Skip
    child.expect("Instance IAM binding: skipped: depends on Instance service account")
    child.expect("Summary")
    assert finish(child) == 0
    assert time.monotonic() - t0 < 30  # no wait for an account that will never exist
    assert not any(x["method"] == "CreateRole" and "coiled_instance" in json.dumps(x) for x in calls(sb))
    pol = clients(sb).projects.get_iam_policy(
        request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})
    assert not any(f"serviceAccount:{INSTANCE}" in b.members for b in pol.bindings)
    # Coiled is not given an instance account that does not exist (nor silently none).
    assert state(sb)["coiled"]["workspaces"]["demo"]["credentials"] is None


@pytest.mark.parametrize("first", [
    ("--firewall-ports", "8786", "--region", "us-central1", "--no-preemptible", "--service-account", "ops-coiled"),
    ("--instance-service-account", f"data-pipeline@{P}.iam.gserviceaccount.com", "--zone", "us-east1-b"),
])
def test_enter_everywhere_keeps_every_setting_in_place(make_sandbox, terminal, first):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0]["service_accounts"] = [{"id": "data-pipeline", "display_name": "Pipelines"}]
    sb = make_sandbox(s)
    assert finish(terminal(sb, "--non-interactive", "--yes", *first)) == 0
    before = state(sb)["coiled"]["workspaces"]["demo"]
    mark = len(calls(sb))
    child = terminal(sb)
    for prompt in ("Service account for Coiled", "least-privilege", "CIDR"):
        child.expect(prompt)
        child.send(ENTER)
    child.expect("Nothing to change")
    assert finish(child) == 0
    assert not [x for x in calls(sb, mark) if x["write"]]
    after = state(sb)["coiled"]["workspaces"]["demo"]
    assert (after["credentials"], after["instance_service_account"], after["settings"], after["regions"]) == (
        before["credentials"], before["instance_service_account"], before["settings"], before["regions"])


def test_a_run_waiting_at_its_first_question_already_holds_the_project(make_sandbox, terminal, cli):
    """It has observed the project: a second run meanwhile is refused before it writes anything."""
    sb = make_sandbox()
    child = terminal(sb)
    child.expect("Service account for Coiled")
    mark = len(calls(sb))
    out = cli(sb, "gcp", "--non-interactive", "--yes", check=4)
    assert "Another coiled-setup run" in out.stderr
    assert [c["method"] for c in calls(sb, mark) if c["write"] or c["mutating"]] == []
    answer_defaults_until_plan(child, at_first_question=True)
    assert finish(child) == 0
