"""`coiled-setup rotate-key`, end to end against the sandbox.

Regressions these tests guard: an old key deleted before Coiled holds the new one (or before Google accepts it);
a key someone else created deleted; a second rotation after a crash instead of finishing the first (one key too
many, or the old key left behind); a key whose private half was lost left on Google; --max-age rotating a young key;
verify silent about a key older than Google's 90 days.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.helpers import calls, clients, credentials, killed_when, state

P = "coiled-demo"
SA = f"coiled@{P}.iam.gserviceaccount.com"
FAST = dict(propagation_delay_s=0, operation_s=0.05, infra_s=0.05)
ROTATE = ("rotate-key", "--non-interactive", "--yes")


def user_keys(c) -> list[str]:
    resp = c.iam.list_service_account_keys(request={"name": f"projects/-/serviceAccounts/{SA}", "key_types": [1]})
    return [k.name.rsplit("/", 1)[1] for k in resp.keys]


def held(sb) -> str:
    return state(sb)["coiled"]["workspaces"]["demo"]["credentials"]["private_key_id"]


def journal(sb) -> dict:
    return json.loads((sb.state_dir / "home" / "state" / f"journal-{P}.json").read_text())


def key_file(sb) -> Path:
    return Path(journal(sb)["key_file"])


@pytest.fixture
def setup(make_sandbox, cli):
    """A project set up by the wizard, plus a key of the account that someone else created."""
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    c = clients(sb)
    foreign = c.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{SA}").name.rsplit("/", 1)[1]
    return sb, c, foreign


def test_rotation_hands_over_a_new_key_then_deletes_only_the_old_one(setup, cli):
    sb, c, foreign = setup
    old = held(sb)
    mark = len(calls(sb))
    out = cli(sb, *ROTATE, check=0)
    new = held(sb)
    assert new != old
    assert sorted(user_keys(c)) == sorted([new, foreign])  # the old key gone, someone else's kept
    assert "someone else created" in out.stdout
    # The local key file holds the new key, 0600, and Google accepts it.
    data = json.loads(key_file(sb).read_text())
    assert data["private_key_id"] == new
    assert stat.S_IMODE(key_file(sb).stat().st_mode) == 0o600
    as_key = clients(sb, data)
    held_perms = as_key.projects.test_iam_permissions(
        request={"resource": f"projects/{P}", "permissions": ["compute.instances.create"]}).permissions
    assert list(held_perms) == ["compute.instances.create"]
    # Nothing was deleted before Coiled was given the new key and Google had accepted it.
    log = calls(sb)
    handed = max(i for i, x in enumerate(log) if x["method"].startswith("POST /api/v2/cloud-credentials"))
    deleted = [i for i, x in enumerate(log) if x["method"] == "DeleteServiceAccountKey"]
    accepted = [i for i, x in enumerate(log) if x["caller"] == SA and x["code"] == "OK"]
    assert deleted and accepted and min(deleted) > handed > min(accepted)
    # Only the new key is tested: none of the rotation's calls as the account comes before it exists.
    made = next(i for i, x in enumerate(log) if i >= mark and x["method"] == "CreateServiceAccountKey")
    assert min(i for i in accepted if i >= mark) > made
    assert not any("private_key" in json.dumps(x) and "BEGIN" in json.dumps(x) for x in [journal(sb)])


def test_max_age_rotates_only_an_old_key_and_a_rerun_changes_nothing(setup, cli):
    sb, c, foreign = setup
    old = held(sb)
    mark = len(calls(sb))
    out = cli(sb, *ROTATE, "--max-age", "30", check=0)
    assert held(sb) == old and "nothing to rotate" in out.stdout
    assert not [x for x in calls(sb, mark) if x["write"]]
    sb.world.keys[old].created -= 31 * 86400  # the key Coiled holds is now 31 days old
    cli(sb, *ROTATE, "--max-age", "30", check=0)
    assert held(sb) != old and old not in user_keys(c)


def test_verify_warns_about_a_key_older_than_90_days_and_names_the_rotation(setup, cli):
    sb, c, foreign = setup
    sb.world.keys[held(sb)].created -= 91 * 86400
    out = cli(sb, "verify", "--output", "json", check=0)
    (creds,) = [x for x in json.loads(out.stdout)["checks"] if x["name"] == "coiled_credentials"]
    assert creds["status"] == "warning" and "91 days" in creds["detail"]
    assert "rotate-key --project coiled-demo" in creds["remedy"]


def test_a_rotation_killed_after_coiled_took_the_new_key_is_finished_not_repeated(setup, cli, tmp_path):
    sb, c, foreign = setup
    old = held(sb)
    # Coiled stores the new key, then its answer is held: the rotation is killed before deleting the old key.
    sb.world.config.hold_method, sb.world.config.hold_s = "POST /api/v2/cloud-credentials/{ws}/gcp", 30
    killed_when(sb, tmp_path, ROTATE, lambda: held(sb) != old)
    new = held(sb)
    assert new != old and sorted(user_keys(c)) == sorted([old, new, foreign])
    mark = len(calls(sb))
    cli(sb, *ROTATE, check=0)
    created = [x for x in calls(sb, mark) if x["method"] == "CreateServiceAccountKey"]
    assert created == []  # finished, not rotated again
    assert held(sb) == new and sorted(user_keys(c)) == sorted([new, foreign])
    assert "rotation" not in journal(sb) or journal(sb)["rotation"] is None


def test_a_rotation_killed_before_the_key_reached_the_file_leaves_no_key_nobody_holds(setup, cli, tmp_path):
    sb, c, foreign = setup
    old = held(sb)
    sb.world.config.hold_method, sb.world.config.hold_s = "CreateServiceAccountKey", 30
    # Killed once the key exists: its private half never reached the file.
    killed_when(sb, tmp_path, ROTATE, lambda: len(user_keys(c)) >= 3)
    assert len(user_keys(c)) == 3 and held(sb) == old
    cli(sb, *ROTATE, check=0)
    new = held(sb)
    assert new != old and sorted(user_keys(c)) == sorted([new, foreign])
    assert json.loads(key_file(sb).read_text())["private_key_id"] == new


def test_rotation_without_the_permission_to_delete_keys_changes_nothing(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    c = clients(sb)
    policy = c.projects.get_iam_policy(request={"resource": f"projects/{P}",
                                                "options": {"requested_policy_version": 3}})
    for b in policy.bindings:  # the operator becomes a viewer: it may read keys, not delete them
        if b.role == "roles/owner":
            b.role = "roles/viewer"
    c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": policy})
    mark = len(calls(sb))
    out = cli(sb, *ROTATE, check=3)
    assert "iam.serviceAccountKeys.create" in out.stderr and "iam.serviceAccountKeys.delete" in out.stderr
    assert not [x for x in calls(sb, mark) if x["write"]]


def test_rotate_key_json_document_lists_its_steps(setup, cli):
    sb, c, foreign = setup
    doc = json.loads(cli(sb, *ROTATE, "--output", "json", check=0).stdout)
    assert doc["command"] == "rotate-key" and doc["exit_code"] == 0
    assert [s["step"] for s in doc["steps"]] == ["new_key", "accepted", "handover", "retire"]
    assert "BEGIN PRIVATE KEY" not in json.dumps(doc)
    assert credentials  # the helper the other tests load keys with
