"""Project IAM policies in the sandbox: versions, conditions, etags, propagation, TestIamPermissions."""

from __future__ import annotations

import copy
import json
import time

import pytest
from google.api_core import exceptions as gx
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.rpc import error_details_pb2

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients, state, wait_until

CONDITIONAL_ROLE = "roles/storage.objectViewer"
CONDITION = 'request.time < timestamp("2030-01-01T00:00:00Z")'


def scenario(**project) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update(project)
    return s


def read_policy(c, version: int = 3, project: str | None = None) -> policy_pb2.Policy:
    req = iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/{project or c.project}")
    req.options.requested_policy_version = version
    return c.projects.get_iam_policy(request=req)


def write_policy(c, policy: policy_pb2.Policy) -> policy_pb2.Policy:
    return c.projects.set_iam_policy(request={"resource": f"projects/{c.project}", "policy": policy})


def add_binding(c, role: str, member: str) -> policy_pb2.Policy:
    policy = read_policy(c)
    policy.bindings.append(policy_pb2.Binding(role=role, members=[member]))
    return write_policy(c, policy)


def granted(c, permissions) -> list[str]:
    held = c.projects.test_iam_permissions(resource=f"projects/{c.project}", permissions=permissions)
    return sorted(held.permissions)


def key_of(c, email: str) -> dict:
    name = f"projects/{c.project}/serviceAccounts/{email}"
    return json.loads(c.iam.create_service_account_key(name=name).private_key_data)


# -- versions and conditions --------------------------------------------------------------------------


def test_version_3_read_keeps_conditional_binding(sandbox):
    policy = read_policy(clients(sandbox), 3)
    assert policy.version == 3
    conditional = [b for b in policy.bindings if b.HasField("condition")]
    assert [(b.role, b.condition.expression, b.condition.title) for b in conditional] == [
        (CONDITIONAL_ROLE, CONDITION, "until-2030")]
    assert list(conditional[0].members) == ["group:analysts@example.com"]
    roles = {b.role for b in policy.bindings}
    assert "roles/owner" in roles and "roles/viewer" in roles


def test_version_1_read_renames_conditional_role(sandbox):
    c = clients(sandbox)
    policy = read_policy(c, 1)
    assert policy.version == 1
    assert not any(b.HasField("condition") for b in policy.bindings)
    renamed = [b.role for b in policy.bindings if "_withcond_" in b.role]
    assert len(renamed) == 1 and renamed[0].startswith(CONDITIONAL_ROLE + "_withcond_")
    assert read_policy(c, 1).bindings == policy.bindings  # the same name on every read
    assert {b.role for b in policy.bindings} - set(renamed) == {"roles/owner", "roles/viewer"}


def test_unset_version_reads_as_version_1(sandbox):
    c = clients(sandbox)
    policy = c.projects.get_iam_policy(resource=f"projects/{c.project}")
    assert policy.version == 1
    assert any("_withcond_" in b.role for b in policy.bindings)


def test_writing_back_a_version_1_read_fails(sandbox):
    c = clients(sandbox)
    before = state(sandbox)["projects"][c.project]["policy"]
    policy = read_policy(c, 1)
    policy.bindings.append(policy_pb2.Binding(role="roles/browser", members=["user:bob@example.com"]))
    with pytest.raises(gx.InvalidArgument) as e:
        write_policy(c, policy)
    assert "_withcond_" in e.value.message
    assert state(sandbox)["projects"][c.project]["policy"] == before


def test_version_3_round_trip_keeps_condition(sandbox):
    c = clients(sandbox)
    policy = read_policy(c, 3)
    policy.bindings.append(policy_pb2.Binding(role="roles/browser", members=["user:bob@example.com"]))
    written = write_policy(c, policy)
    assert written.etag != policy.etag
    again = read_policy(c, 3)
    assert again.etag == written.etag
    assert [b.condition.expression for b in again.bindings if b.HasField("condition")] == [CONDITION]
    assert ("roles/browser", ["user:bob@example.com"]) in [(b.role, list(b.members)) for b in again.bindings]


def test_conditional_binding_needs_version_3(sandbox):
    c = clients(sandbox)
    policy = read_policy(c, 3)
    policy.version = 1
    with pytest.raises(gx.InvalidArgument) as e:
        write_policy(c, policy)
    assert "version 3" in e.value.message


def test_unconditional_policy_reads_as_version_1(make_sandbox):
    sb = make_sandbox(scenario(bindings=[{"role": "roles/viewer", "members": ["user:ann@example.com"]}]))
    c = clients(sb)
    assert read_policy(c, 3).version == 1
    written = add_binding(c, "roles/browser", "user:bob@example.com")
    assert "_withcond_" not in str(written)


# -- etags ---------------------------------------------------------------------------------------------


def test_stale_etag_aborted(sandbox):
    c = clients(sandbox)
    stale = read_policy(c)
    first = copy.deepcopy(stale)
    first.bindings.append(policy_pb2.Binding(role="roles/browser", members=["user:first@example.com"]))
    write_policy(c, first)

    second = copy.deepcopy(stale)
    second.bindings.append(policy_pb2.Binding(role="roles/browser", members=["user:second@example.com"]))
    with pytest.raises(gx.Aborted):
        write_policy(c, second)
    members = [m for b in read_policy(c).bindings for m in b.members]
    assert "user:first@example.com" in members and "user:second@example.com" not in members
    record = [x for x in calls(sandbox) if x["method"] == "SetIamPolicy"]
    assert [(x["code"], x["mutating"]) for x in record] == [("OK", True), ("ABORTED", False)]


def test_no_etag_overwrites(sandbox):
    c = clients(sandbox)
    policy = read_policy(c)
    policy.etag = b""
    policy.bindings.append(policy_pb2.Binding(role="roles/browser", members=["user:bob@example.com"]))
    write_policy(c, policy)
    assert "user:bob@example.com" in [m for b in read_policy(c).bindings for m in b.members]


# -- members and roles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "role, member",
    [
        ("roles/viewer", "serviceAccount:nobody@coiled-demo.iam.gserviceaccount.com"),
        ("roles/viewer", "robot:someone@example.com"),
        ("projects/coiled-demo/roles/never_created", "user:ann@example.com"),
    ],
)
def test_invalid_bindings_refused(sandbox, role, member):
    c = clients(sandbox)
    before = read_policy(c)
    with pytest.raises(gx.InvalidArgument) as e:
        add_binding(c, role, member)
    assert any(isinstance(d, error_details_pb2.BadRequest) for d in e.value.details)
    assert read_policy(c).etag == before.etag


def test_nonexistent_account_message(sandbox):
    c = clients(sandbox)
    with pytest.raises(gx.InvalidArgument) as e:
        add_binding(c, "roles/viewer", "serviceAccount:nobody@coiled-demo.iam.gserviceaccount.com")
    assert "does not exist" in e.value.message


def test_unknown_project_denied(sandbox):
    c = clients(sandbox)
    with pytest.raises(gx.PermissionDenied) as e:
        read_policy(c, project="no-such-project")
    assert e.value.reason == "IAM_PERMISSION_DENIED"
    with pytest.raises(gx.PermissionDenied):
        c.projects.set_iam_policy(request={"resource": "projects/no-such-project", "policy": read_policy(c)})
    with pytest.raises(gx.PermissionDenied):
        c.projects.get_project(name="projects/no-such-project")
    with pytest.raises(gx.PermissionDenied):
        c.projects.test_iam_permissions(resource="projects/no-such-project", permissions=["iam.roles.get"])


def test_project_by_number(sandbox):
    c = clients(sandbox)
    project = c.projects.get_project(name=f"projects/{c.project}")
    assert project.project_id == c.project and project.name == "projects/123456789012"
    assert c.projects.get_project(name=project.name).project_id == c.project
    assert read_policy(c, project="123456789012").etag == read_policy(c).etag


# -- TestIamPermissions -----------------------------------------------------------------------------------


def test_test_permissions_at_most_100(sandbox):
    c = clients(sandbox)
    perms = [f"compute.instances.probe{i}" for i in range(101)]
    assert granted(c, perms[:100]) == sorted(perms[:100])  # the operator is owner
    with pytest.raises(gx.InvalidArgument) as e:
        granted(c, perms)
    assert "101" in e.value.message


def test_test_permissions_reports_only_held(make_sandbox):
    s = scenario()
    s["operator"]["roles"] = ["roles/viewer"]
    c = clients(make_sandbox(s))
    assert granted(c, ["iam.roles.list", "iam.roles.create", "resourcemanager.projects.getIamPolicy",
                       "resourcemanager.projects.setIamPolicy"]) == [
        "iam.roles.list", "resourcemanager.projects.getIamPolicy"]


# -- propagation --------------------------------------------------------------------------------------------


def test_new_account_propagates_before_binding(make_sandbox):
    delay = 0.8
    sb = make_sandbox(propagation_delay_s=delay)
    c = clients(sb)
    t0 = time.monotonic()
    sa = c.iam.create_service_account(name=f"projects/{c.project}", account_id="fresh-account")
    member = f"serviceAccount:{sa.email}"

    with pytest.raises(gx.NotFound):
        c.iam.get_service_account(name=sa.name)
    with pytest.raises(gx.InvalidArgument) as e:
        add_binding(c, "roles/viewer", member)
    assert "does not exist" in e.value.message
    assert time.monotonic() - t0 < delay / 2  # both answers came while it was propagating

    got = wait_until(lambda: c.iam.get_service_account(name=sa.name))
    assert got.email == sa.email
    written = wait_until(lambda: add_binding(c, "roles/viewer", member))
    assert time.monotonic() - t0 >= delay
    assert member in [m for b in written.bindings if b.role == "roles/viewer" for m in b.members]


def test_new_binding_grants_after_delay(make_sandbox):
    delay = 0.6
    s = scenario(service_accounts=[{"id": "settled-account"}])
    sb = make_sandbox(s, propagation_delay_s=delay)
    c = clients(sb)
    email = f"settled-account@{c.project}.iam.gserviceaccount.com"
    as_sa = clients(sb, key_of(c, email))
    probe = ["iam.roles.get", "iam.roles.list", "iam.roles.create"]
    assert granted(as_sa, probe) == []

    add_binding(c, "roles/iam.roleViewer", f"serviceAccount:{email}")
    t0 = time.monotonic()
    assert granted(as_sa, probe) == []  # bound, not yet effective
    assert wait_until(lambda: granted(as_sa, probe)) == ["iam.roles.get", "iam.roles.list"]
    assert time.monotonic() - t0 >= delay - 0.05

    # Rewriting the policy does not restart the clock of bindings already in place.
    add_binding(c, "roles/browser", "user:bob@example.com")
    assert granted(as_sa, probe) == ["iam.roles.get", "iam.roles.list"]


def test_removed_binding_stops_granting(make_sandbox):
    s = scenario(service_accounts=[{"id": "settled-account"}])
    s["projects"][0]["bindings"].append(
        {"role": "roles/iam.roleViewer",
         "members": [f"serviceAccount:settled-account@{s['projects'][0]['id']}.iam.gserviceaccount.com"]})
    sb = make_sandbox(s)
    c = clients(sb)
    as_sa = clients(sb, key_of(c, f"settled-account@{c.project}.iam.gserviceaccount.com"))
    assert granted(as_sa, ["iam.roles.list"]) == ["iam.roles.list"]
    policy = read_policy(c)
    kept = [b for b in policy.bindings if b.role != "roles/iam.roleViewer"]
    del policy.bindings[:]
    policy.bindings.extend(kept)
    write_policy(c, policy)
    assert granted(as_sa, ["iam.roles.list"]) == []


def test_conditional_binding_grants_nothing_unconditionally(make_sandbox):
    s = scenario(service_accounts=[{"id": "settled-account"}])
    pid = s["projects"][0]["id"]
    s["projects"][0]["bindings"].append({
        "role": "roles/iam.roleViewer",
        "members": [f"serviceAccount:settled-account@{pid}.iam.gserviceaccount.com"],
        "condition": {"title": "never", "expression": "false"},
    })
    sb = make_sandbox(s)
    c = clients(sb)
    as_sa = clients(sb, key_of(c, f"settled-account@{pid}.iam.gserviceaccount.com"))
    assert granted(as_sa, ["iam.roles.list"]) == []
