"""Domain restricted sharing and the log sink Coiled makes for cluster logs: told, and lifted only when asked, for
that moment only, with the project's own policy restored exactly (and by the next run after a crash)."""

from __future__ import annotations

import copy
import json

import pytest
from google.api_core import exceptions as gexc

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients, state

ARGS = ("gcp", "--non-interactive", "--yes")
CUSTOMER = "C01abc234"
DOMAINS = "iam.allowedPolicyMemberDomains"
FLAG = "--allow-log-sink-exception"


def restricted(roles=("roles/owner", "roles/orgpolicy.policyAdmin")) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["organization"] = {"id": "123456789", "customer_id": CUSTOMER, "domain": "example.com",
                         "policies": {DOMAINS: {"allowed_values": [CUSTOMER]}}}
    s["operator"]["roles"] = list(roles)  # lifting a policy takes an organization policy admin, not an owner
    return s


def sink(sb) -> dict:
    return state(sb)["coiled"]["workspaces"]["demo"]["global_infra"]["log_sink"]


def own_policy(sb):
    """The project's own policy of the constraint, through the real Org Policy client (None: it has none)."""
    try:
        return clients(sb).orgpolicy.get_policy(name=f"projects/{sb.project}/policies/{DOMAINS}")
    except gexc.NotFound:
        return None


def journal(sb) -> dict:
    return json.loads((sb.state_dir / "home" / "state" / f"journal-{sb.project}.json").read_text())


def policy_writes(sb) -> list[str]:
    return [c["method"] for c in calls(sb) if c["method"] in ("CreatePolicy", "UpdatePolicy", "DeletePolicy")]


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(restricted(), operation_s=0.05, infra_s=0.05)


def test_without_the_flag_the_run_says_so_and_goes_on_without_the_grant(sb, cli):
    out = cli(sb, *ARGS, check=0)
    told = " ".join((out.stdout + out.stderr).split())
    assert f"constraints/{DOMAINS} refuses roles to accounts outside the organization" in told
    assert f"the run goes on without that grant ({FLAG}" in told
    assert policy_writes(sb) == [] and own_policy(sb) is None  # never relaxed silently
    assert sink(sb)["granted"] is False and sink(sb)["refused_by"] == f"constraints/{DOMAINS}"


def test_with_the_flag_it_is_lifted_for_the_sink_and_the_project_keeps_no_policy(sb, cli):
    out = cli(sb, *ARGS, FLAG, check=0)
    assert sink(sb)["granted"] is True
    assert policy_writes(sb) == ["CreatePolicy", "DeletePolicy"]
    assert own_policy(sb) is None and not journal(sb).get("log_sink_exception")
    assert "(removed: the project had none)" in " ".join(out.stdout.split())


def test_a_project_policy_of_its_own_is_restored_exactly(sb, cli):
    from google.cloud import orgpolicy_v2

    c = clients(sb)
    theirs = orgpolicy_v2.Policy(name=f"projects/{sb.project}/policies/{DOMAINS}", spec=orgpolicy_v2.PolicySpec(
        inherit_from_parent=True, rules=[{"values": {"allowed_values": ["C0partner9"]}}]))
    before = c.orgpolicy.create_policy(parent=f"projects/{sb.project}", policy=theirs)
    cli(sb, *ARGS, FLAG, check=0)
    assert sink(sb)["granted"] is True
    assert policy_writes(sb)[1:] == ["UpdatePolicy", "UpdatePolicy"]
    after = own_policy(sb)
    assert after.spec.inherit_from_parent and [list(r.values.allowed_values) for r in after.spec.rules] == \
        [["C0partner9"]]
    assert after.etag != before.etag  # written back with the etag of the exception it replaced


def test_a_run_that_died_while_it_was_lifted_is_restored_by_the_next_run(sb, cli):
    from google.cloud import orgpolicy_v2

    cli(sb, *ARGS, check=0)
    # As if a run had recorded the lift, made it, and died before restoring.
    path = sb.state_dir / "home" / "state" / f"journal-{sb.project}.json"
    data = journal(sb)
    data["log_sink_exception"] = {"original": None}
    path.write_text(json.dumps(data))
    clients(sb).orgpolicy.create_policy(parent=f"projects/{sb.project}", policy=orgpolicy_v2.Policy(
        name=f"projects/{sb.project}/policies/{DOMAINS}", spec={"rules": [{"allow_all": True}]}))
    cli(sb, *ARGS, "--dry-run", check=0)
    assert own_policy(sb) is not None  # a dry run changes nothing
    cli(sb, *ARGS, check=0)
    assert own_policy(sb) is None and not journal(sb).get("log_sink_exception")


def test_an_owner_who_may_not_set_policies_is_told_and_the_run_goes_on_without_the_grant(make_sandbox, cli):
    sb = make_sandbox(restricted(roles=("roles/owner",)), operation_s=0.05, infra_s=0.05)
    out = cli(sb, *ARGS, FLAG, check=0)
    told = " ".join((out.stdout + out.stderr).split())
    assert "Traceback" not in told
    assert [c for c in calls(sb) if c["method"] in ("CreatePolicy", "UpdatePolicy") and c["code"] == "OK"] == []
    assert own_policy(sb) is None and not journal(sb).get("log_sink_exception")
    assert sink(sb)["granted"] is False and sink(sb)["refused_by"] == f"constraints/{DOMAINS}"
    assert f"Could not lift constraints/{DOMAINS} for project {sb.project}" in told
    assert "orgpolicy.policies.create" in told and "gets no grant" in told


class _LostAnswerGoogle:
    """Org Policy as Google keeps it, whose lift lands but answers an error (a deadline: the answer was lost)."""

    def __init__(self, original):
        self.policy = original
        self.writes = []

    def project_org_policy(self, project, constraint):
        return self.policy

    def put_project_org_policy(self, project, policy, *, exists):
        from coiled_setup.cloud import Transient

        self.writes.append(policy)
        self.policy = {**policy, "etag": f"e{len(self.writes)}"}
        if len(self.writes) == 1:
            raise Transient("DEADLINE_EXCEEDED", "Deadline expired before operation could complete.")
        return self.policy

    def delete_project_org_policy(self, project, constraint, etag):
        self.writes.append(None)
        self.policy = None


class _Journal(dict):
    def set(self, **values):
        self.update(values)


def test_a_lift_whose_answer_was_lost_is_restored_at_once(tmp_path):
    from types import SimpleNamespace

    from coiled_setup import log_sink

    for original in (None, {"name": f"projects/p/policies/{DOMAINS}", "etag": "e0",
                            "spec": {"rules": [{"values": {"allowedValues": [CUSTOMER]}}]}}):
        g, journal, told = _LostAnswerGoogle(original), _Journal(), []
        ui = SimpleNamespace(warn=told.append, info=told.append)
        run = SimpleNamespace(google=g, opts=SimpleNamespace(project="p"), journal=journal, ui=ui)
        with log_sink.lifted(run):
            pass
        assert g.policy == original or (original and g.policy["spec"] == original["spec"]), (g.policy, told)
        assert not journal.get(log_sink.PENDING)
        assert any("Could not lift" in t for t in told)
