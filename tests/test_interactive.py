"""The interactive wizard, driven in a pseudo-terminal as a person would."""

import copy
import os
import sys

import pexpect
import pytest

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients, state

P = "coiled-demo"
DOWN, ENTER = "\x1b[B", "\r"


@pytest.fixture
def terminal(tmp_path):
    def spawn(sb, *args):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
        env.update(sb.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", COLUMNS="160")
        child = pexpect.spawn(sys.executable, ["-m", "coiled_setup", "gcp", *args], env=env, encoding="utf-8",
                              timeout=60, dimensions=(50, 160))
        child.logfile_read = open(tmp_path / "screen.log", "a")
        return child

    return spawn


def answer_defaults_until_plan(child):
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
    child.expect("Stopped at 'Custom role'")
    assert finish(child) == 1
    assert not any(x["method"] == "SetIamPolicy" for x in calls(sb))


def test_ctrl_c_exits_130_with_a_resume_hint(make_sandbox, terminal):
    sb = make_sandbox(propagation_delay_s=30)
    child = terminal(sb)
    answer_defaults_until_plan(child)
    child.expect("waiting for the new account to appear")
    child.sendintr()
    child.expect("Run the same command again")
    assert finish(child) == 130
