"""The sandbox's IAM admin API (service accounts, keys, custom roles), driven by the real client."""

from __future__ import annotations

import copy
import json

import pytest
from google.api_core import exceptions as gx
from google.auth import exceptions as auth_exceptions
from google.auth.transport.requests import Request
from google.cloud import iam_admin_v1
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, clients, credentials, state

KEY_FIELDS = (
    "type", "project_id", "private_key_id", "private_key", "client_email", "client_id",
    "auth_uri", "token_uri", "auth_provider_x509_cert_url", "client_x509_cert_url",
)
KeyType = iam_admin_v1.ListServiceAccountKeysRequest.KeyType


def scenario(operator_roles=None, **project) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update(project)
    if operator_roles is not None:
        s["operator"]["roles"] = operator_roles
    return s


def new_account(c, account_id: str = "coiled-worker", **fields):
    return c.iam.create_service_account(
        name=f"projects/{c.project}", account_id=account_id, service_account=fields or None
    )


def grant(c, role: str, member: str) -> None:
    """Adds `member` to `role` in the project policy (read-modify-write with the etag)."""
    req = iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/{c.project}")
    req.options.requested_policy_version = 3
    policy = c.projects.get_iam_policy(request=req)
    policy.bindings.append(policy_pb2.Binding(role=role, members=[member]))
    c.projects.set_iam_policy(request={"resource": f"projects/{c.project}", "policy": policy})


def granted(c, permissions: list[str]) -> list[str]:
    resp = c.projects.test_iam_permissions(resource=f"projects/{c.project}", permissions=permissions)
    return sorted(resp.permissions)


# -- service accounts -----------------------------------------------------------------------------


def test_create_get_list_service_account(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "coiled-worker", display_name="Coiled worker", description="runs dask")
    assert sa.email == f"coiled-worker@{c.project}.iam.gserviceaccount.com"
    assert sa.name == f"projects/{c.project}/serviceAccounts/{sa.email}"
    assert sa.unique_id.isdigit() and len(sa.unique_id) == 21

    got = c.iam.get_service_account(name=sa.name)
    assert (got.email, got.display_name, got.description, got.disabled) == (
        sa.email, "Coiled worker", "runs dask", False)
    # Google also resolves an account by unique id under the "-" project wildcard.
    assert c.iam.get_service_account(name=f"projects/-/serviceAccounts/{sa.unique_id}").email == sa.email

    emails = [a.email for a in c.iam.list_service_accounts(name=f"projects/{c.project}")]
    assert sa.email in emails
    assert sandbox.operator_email in emails


def test_list_service_accounts_pages(sandbox):
    c = clients(sandbox)
    for i in range(4):
        new_account(c, f"paged-account-{i}")
    first = c.iam.list_service_accounts(request={"name": f"projects/{c.project}", "page_size": 2})
    seen = [a.email for a in first]  # the pager follows next_page_token
    assert len(seen) == 5 and len(set(seen)) == 5
    assert first.next_page_token == ""
    with pytest.raises(gx.InvalidArgument):
        c.iam.list_service_accounts(request={"name": f"projects/{c.project}", "page_token": "not-ours"})


def test_duplicate_service_account_already_exists(sandbox):
    c = clients(sandbox)
    new_account(c, "coiled-dup")
    with pytest.raises(gx.AlreadyExists) as e:
        new_account(c, "coiled-dup")
    assert "coiled-dup" in e.value.message


@pytest.mark.parametrize(
    "account_id",
    ["abc", "short", "Coiled-Upper", "coiled_underscore", "9-starts-with-digit", "ends-with-dash-", "a" * 31],
)
def test_invalid_account_id(sandbox, account_id):
    c = clients(sandbox)
    with pytest.raises(gx.InvalidArgument) as e:
        new_account(c, account_id)
    assert "accountId" in e.value.message
    bad = [d for d in e.value.details if isinstance(d, error_details_pb2.BadRequest)]
    assert bad and bad[0].field_violations[0].field == "account_id"
    assert not any(a.startswith(account_id.lower()) for a in state(sandbox)["service_accounts"])


def test_account_id_bounds_accepted(sandbox):
    c = clients(sandbox)
    assert new_account(c, "sixchr").email.startswith("sixchr@")
    assert new_account(c, "a" * 30).email.startswith("a" * 30 + "@")


def test_delete_service_account(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "doomed-account")
    c.iam.delete_service_account(name=sa.name)
    with pytest.raises(gx.NotFound):
        c.iam.get_service_account(name=sa.name)
    assert sa.email not in [a.email for a in c.iam.list_service_accounts(name=f"projects/{c.project}")]
    assert sa.email not in state(sandbox)["service_accounts"]
    with pytest.raises(gx.NotFound):
        c.iam.delete_service_account(name=sa.name)


def test_deleted_account_bindings_not_inherited(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "reborn-account")
    grant(c, "roles/iam.roleViewer", f"serviceAccount:{sa.email}")
    c.iam.delete_service_account(name=sa.name)
    members = [m for b in c.projects.get_iam_policy(resource=f"projects/{c.project}").bindings
               for m in b.members]
    assert f"serviceAccount:{sa.email}" not in members
    assert f"deleted:serviceAccount:{sa.email}?uid={sa.unique_id}" in members

    again = new_account(c, "reborn-account")
    assert again.email == sa.email and again.unique_id != sa.unique_id
    as_new = clients(sandbox, json.loads(c.iam.create_service_account_key(name=again.name).private_key_data))
    assert granted(as_new, ["iam.roles.list"]) == []


def test_disable_and_enable_service_account(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "toggled-account")
    grant(c, "roles/iam.roleViewer", f"serviceAccount:{sa.email}")
    key = json.loads(c.iam.create_service_account_key(name=sa.name).private_key_data)
    as_sa = clients(sandbox, key)
    assert granted(as_sa, ["iam.roles.list"]) == ["iam.roles.list"]  # holds a token now

    c.iam.disable_service_account(request={"name": sa.name})
    assert c.iam.get_service_account(name=sa.name).disabled is True
    assert state(sandbox)["service_accounts"][sa.email]["disabled"] is True
    # Neither the token it already holds nor a new one works.
    with pytest.raises(gx.Unauthenticated) as e:
        granted(as_sa, ["iam.roles.list"])
    assert e.value.reason == "ACCOUNT_STATE_INVALID"
    with pytest.raises(auth_exceptions.RefreshError) as e:
        credentials(key).refresh(Request())
    assert "invalid_grant" in str(e.value)

    c.iam.enable_service_account(request={"name": sa.name})
    assert c.iam.get_service_account(name=sa.name).disabled is False
    assert granted(clients(sandbox, key), ["iam.roles.list"]) == ["iam.roles.list"]


# -- keys --------------------------------------------------------------------------------------------


def test_key_file_is_complete_and_authenticates(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "key-holder")
    grant(c, "roles/iam.roleViewer", f"serviceAccount:{sa.email}")
    created = c.iam.create_service_account_key(name=sa.name)
    assert created.private_key_type == iam_admin_v1.ServiceAccountPrivateKeyType.TYPE_GOOGLE_CREDENTIALS_FILE

    key = json.loads(created.private_key_data)
    missing = [f for f in KEY_FIELDS if not key.get(f)]
    assert missing == []
    assert key["type"] == "service_account"
    assert key["client_email"] == sa.email
    assert key["client_id"] == sa.unique_id
    assert key["project_id"] == c.project
    assert created.name.endswith("/keys/" + key["private_key_id"])
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")

    creds = credentials(key)
    assert creds.service_account_email == sa.email
    as_sa = clients(sandbox, key)
    perms = ["iam.roles.get", "iam.roles.list", "iam.roles.create", "resourcemanager.projects.setIamPolicy"]
    assert granted(as_sa, perms) == ["iam.roles.get", "iam.roles.list"]
    # The caller recorded for that call is the key's account.
    last = [x for x in calls(sandbox) if x["method"] == "TestIamPermissions"][-1]
    assert last["caller"] == sa.email


def test_key_without_role_authenticates_but_holds_nothing(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "no-roles-account")
    key = json.loads(c.iam.create_service_account_key(name=sa.name).private_key_data)
    as_sa = clients(sandbox, key)
    assert granted(as_sa, ["iam.roles.list", "resourcemanager.projects.get"]) == []
    with pytest.raises(gx.PermissionDenied):
        as_sa.iam.list_service_accounts(name=f"projects/{c.project}")


def test_state_dump_holds_no_private_key(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "dumped-account")
    created = c.iam.create_service_account_key(name=sa.name)
    key = json.loads(created.private_key_data)
    dump = state(sandbox)
    text = json.dumps(dump)
    assert "PRIVATE KEY" not in text
    assert key["private_key"].splitlines()[1] not in text
    assert dump["keys"][key["private_key_id"]]["email"] == sa.email
    assert "BEGIN PUBLIC KEY" in dump["keys"][key["private_key_id"]]["public_key"]
    assert key["private_key_id"] in dump["service_accounts"][sa.email]["user_keys"]


def test_list_keys_includes_system_managed_and_filters(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "listed-keys")
    made = {c.iam.create_service_account_key(name=sa.name).name for _ in range(2)}

    every = c.iam.list_service_account_keys(name=sa.name).keys
    types = sorted(KeyType(k.key_type).name for k in every)
    assert types == ["SYSTEM_MANAGED", "USER_MANAGED", "USER_MANAGED"]
    assert all(not k.private_key_data for k in every)

    user = c.iam.list_service_account_keys(name=sa.name, key_types=[KeyType.USER_MANAGED]).keys
    assert {k.name for k in user} == made
    system = c.iam.list_service_account_keys(name=sa.name, key_types=[KeyType.SYSTEM_MANAGED]).keys
    assert len(system) == 1 and system[0].name not in made
    both = c.iam.list_service_account_keys(
        name=sa.name, key_types=[KeyType.USER_MANAGED, KeyType.SYSTEM_MANAGED]).keys
    assert len(both) == 3


def test_get_key_public_data_on_request(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "public-keyed")
    created = c.iam.create_service_account_key(name=sa.name)
    plain = c.iam.get_service_account_key(name=created.name)
    assert plain.name == created.name and not plain.public_key_data
    pem = c.iam.get_service_account_key(
        name=created.name, public_key_type=iam_admin_v1.ServiceAccountPublicKeyType.TYPE_X509_PEM_FILE)
    assert pem.public_key_data
    with pytest.raises(gx.NotFound):
        c.iam.get_service_account_key(name=sa.name + "/keys/" + "0" * 40)


def test_eleventh_user_key_refused(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "many-keys")
    names = [c.iam.create_service_account_key(name=sa.name).name for _ in range(10)]
    with pytest.raises(gx.FailedPrecondition) as e:
        c.iam.create_service_account_key(name=sa.name)
    assert e.value.message == "Precondition check failed."
    assert not [d for d in e.value.details if isinstance(d, error_details_pb2.PreconditionFailure)]
    assert len(state(sandbox)["service_accounts"][sa.email]["user_keys"]) == 10
    # The limit counts live keys: deleting one makes room again.
    c.iam.delete_service_account_key(name=names[0])
    c.iam.create_service_account_key(name=sa.name)


def test_key_creation_disabled_by_org_policy(make_sandbox):
    sb = make_sandbox(scenario(disable_key_creation=True))
    c = clients(sb)
    sa = new_account(c, "no-keys-allowed")
    with pytest.raises(gx.FailedPrecondition) as e:
        c.iam.create_service_account_key(name=sa.name)
    failures = [d for d in e.value.details if isinstance(d, error_details_pb2.PreconditionFailure)]
    assert len(failures) == 1
    assert [v.type for v in failures[0].violations] == ["constraints/iam.disableServiceAccountKeyCreation"]
    assert state(sb)["service_accounts"][sa.email]["user_keys"] == []


def test_deleted_key_cannot_get_token(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "short-lived-key")
    created = c.iam.create_service_account_key(name=sa.name)
    key = json.loads(created.private_key_data)
    creds = credentials(key)
    creds.refresh(Request())
    assert creds.token

    c.iam.delete_service_account_key(name=created.name)
    with pytest.raises(auth_exceptions.RefreshError) as e:
        credentials(key).refresh(Request())
    assert "invalid_grant" in str(e.value)
    listed = c.iam.list_service_account_keys(name=sa.name, key_types=[KeyType.USER_MANAGED]).keys
    assert listed == []
    with pytest.raises(gx.NotFound):
        c.iam.get_service_account_key(name=created.name)
    with pytest.raises(gx.NotFound):
        c.iam.delete_service_account_key(name=created.name)


def test_disabled_key_cannot_get_token_until_enabled(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "paused-key")
    created = c.iam.create_service_account_key(name=sa.name)
    key = json.loads(created.private_key_data)
    c.iam.disable_service_account_key(request={"name": created.name})
    assert c.iam.get_service_account_key(name=created.name).disabled is True
    with pytest.raises(auth_exceptions.RefreshError):
        credentials(key).refresh(Request())
    c.iam.enable_service_account_key(request={"name": created.name})
    credentials(key).refresh(Request())


def test_system_managed_key_cannot_be_deleted(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "system-keyed")
    (system,) = c.iam.list_service_account_keys(name=sa.name, key_types=[KeyType.SYSTEM_MANAGED]).keys
    with pytest.raises(gx.FailedPrecondition):
        c.iam.delete_service_account_key(name=system.name)


def test_keys_of_deleted_account_stop_working(sandbox):
    c = clients(sandbox)
    sa = new_account(c, "gone-account")
    key = json.loads(c.iam.create_service_account_key(name=sa.name).private_key_data)
    c.iam.delete_service_account(name=sa.name)
    with pytest.raises(auth_exceptions.RefreshError):
        credentials(key).refresh(Request())
    assert key["private_key_id"] not in state(sandbox)["keys"]


# -- custom roles ---------------------------------------------------------------------------------------

ROLE_PERMS = ["iam.roles.get", "iam.roles.list", "resourcemanager.projects.get"]


def create_role(c, role_id: str = "coiled_test", permissions=None, title: str = "Coiled test"):
    return c.iam.create_role(request={
        "parent": f"projects/{c.project}",
        "role_id": role_id,
        "role": {"title": title, "description": "made by a test",
                 "included_permissions": ROLE_PERMS if permissions is None else permissions,
                 "stage": iam_admin_v1.Role.RoleLaunchStage.GA},
    })


def test_role_create_get_list(sandbox):
    c = clients(sandbox)
    made = create_role(c)
    name = f"projects/{c.project}/roles/coiled_test"
    assert made.name == name
    assert sorted(made.included_permissions) == sorted(ROLE_PERMS)
    assert made.etag

    got = c.iam.get_role(request={"name": name})
    assert (got.title, got.description, got.deleted) == ("Coiled test", "made by a test", False)
    assert sorted(got.included_permissions) == sorted(ROLE_PERMS)
    assert got.stage == iam_admin_v1.Role.RoleLaunchStage.GA

    basic = list(c.iam.list_roles(request={"parent": f"projects/{c.project}"}))
    assert [r.name for r in basic] == [name]
    assert list(basic[0].included_permissions) == []  # BASIC view: no permissions
    full = list(c.iam.list_roles(request={"parent": f"projects/{c.project}", "view": iam_admin_v1.RoleView.FULL}))
    assert sorted(full[0].included_permissions) == sorted(ROLE_PERMS)


def test_role_create_refusals(sandbox):
    c = clients(sandbox)
    create_role(c, "coiled_dup")
    with pytest.raises(gx.AlreadyExists):
        create_role(c, "coiled_dup")
    with pytest.raises(gx.InvalidArgument):
        create_role(c, "bad-role-id!")
    with pytest.raises(gx.InvalidArgument):
        create_role(c, "coiled_badperm", permissions=["not a permission"])
    with pytest.raises(gx.NotFound):
        c.iam.get_role(request={"name": f"projects/{c.project}/roles/never_made"})
    assert sorted(state(sandbox)["roles"]) == [f"projects/{c.project}/roles/coiled_dup"]


def test_role_update_with_mask_and_etag(sandbox):
    c = clients(sandbox)
    made = create_role(c)
    updated = c.iam.update_role(request={
        "name": made.name,
        "role": {"title": "Renamed", "included_permissions": ["iam.roles.get"], "etag": made.etag},
        "update_mask": field_mask_pb2.FieldMask(paths=["title"]),
    })
    assert updated.title == "Renamed"
    assert sorted(updated.included_permissions) == sorted(ROLE_PERMS)  # not in the mask: kept
    assert updated.etag != made.etag

    with pytest.raises(gx.Aborted):  # made.etag is stale now
        c.iam.update_role(request={
            "name": made.name, "role": {"title": "Lost update", "etag": made.etag},
            "update_mask": field_mask_pb2.FieldMask(paths=["title"]),
        })
    perms = c.iam.update_role(request={
        "name": made.name, "role": {"included_permissions": ["iam.roles.get"], "etag": updated.etag},
        "update_mask": field_mask_pb2.FieldMask(paths=["included_permissions"]),
    })
    assert list(perms.included_permissions) == ["iam.roles.get"] and perms.title == "Renamed"
    assert c.iam.get_role(request={"name": made.name}).title == "Renamed"


def test_role_soft_delete_and_undelete(sandbox):
    c = clients(sandbox)
    made = create_role(c, "coiled_soft")
    deleted = c.iam.delete_role(request={"name": made.name})
    assert deleted.deleted is True
    assert c.iam.get_role(request={"name": made.name}).deleted is True
    assert list(c.iam.list_roles(request={"parent": f"projects/{c.project}"})) == []
    shown = list(c.iam.list_roles(request={"parent": f"projects/{c.project}", "show_deleted": True}))
    assert [r.name for r in shown] == [made.name]

    with pytest.raises(gx.FailedPrecondition) as e:
        create_role(c, "coiled_soft")
    assert "marked for deletion" in e.value.message
    with pytest.raises(gx.FailedPrecondition):
        c.iam.update_role(request={"name": made.name, "role": {"title": "x"}})

    restored = c.iam.undelete_role(request={"name": made.name})
    assert restored.deleted is False
    assert sorted(c.iam.get_role(request={"name": made.name}).included_permissions) == sorted(ROLE_PERMS)
    with pytest.raises(gx.FailedPrecondition):
        c.iam.undelete_role(request={"name": made.name})


def test_deleted_custom_role_no_longer_grants(sandbox):
    c = clients(sandbox)
    role = create_role(c, "coiled_granting")
    sa = new_account(c, "role-user")
    grant(c, role.name, f"serviceAccount:{sa.email}")
    as_sa = clients(sandbox, json.loads(c.iam.create_service_account_key(name=sa.name).private_key_data))
    probe = ROLE_PERMS + ["iam.roles.create"]
    assert granted(as_sa, probe) == sorted(ROLE_PERMS)
    c.iam.delete_role(request={"name": role.name})
    assert granted(as_sa, probe) == []
    c.iam.undelete_role(request={"name": role.name})
    assert granted(as_sa, probe) == sorted(ROLE_PERMS)


def test_binding_a_deleted_role_is_refused(sandbox):
    c = clients(sandbox)
    role = create_role(c, "coiled_gone")
    c.iam.delete_role(request={"name": role.name})
    with pytest.raises(gx.InvalidArgument):
        grant(c, role.name, "user:ann@example.com")


def test_predefined_role_readable(sandbox):
    c = clients(sandbox)
    viewer = c.iam.get_role(request={"name": "roles/iam.roleViewer"})
    assert sorted(viewer.included_permissions) == ["iam.roles.get", "iam.roles.list"]
    with pytest.raises(gx.NotFound):
        c.iam.get_role(request={"name": "roles/no.suchRole"})


# -- permissions of the caller ---------------------------------------------------------------------------


def test_operator_without_permission_is_denied(make_sandbox):
    sb = make_sandbox(scenario(operator_roles=["roles/viewer"]))
    c = clients(sb)
    with pytest.raises(gx.PermissionDenied) as e:
        create_role(c)
    assert "iam.roles.create" in e.value.message
    assert e.value.reason == "IAM_PERMISSION_DENIED"
    assert e.value.metadata["permission"] == "iam.roles.create"
    assert e.value.domain == "iam.googleapis.com"

    with pytest.raises(gx.PermissionDenied) as e:
        new_account(c, "not-allowed")
    assert "iam.serviceAccounts.create" in e.value.message
    with pytest.raises(gx.PermissionDenied) as e:
        c.iam.create_service_account_key(name=f"projects/{c.project}/serviceAccounts/{sb.operator_email}")
    assert e.value.metadata["permission"] == "iam.serviceAccountKeys.create"

    # What roles/viewer grants still works.
    assert sb.operator_email in [a.email for a in c.iam.list_service_accounts(name=f"projects/{c.project}")]
    assert state(sb)["roles"] == {}
    assert [x["mutating"] for x in calls(sb) if x["write"]] == [False, False, False]


def test_unauthenticated_caller(sandbox):
    from tests.helpers import channel

    ch = channel(sandbox.google_endpoint)  # no credentials at all
    iam = iam_admin_v1.IAMClient(transport=iam_admin_v1.IAMClient.get_transport_class("grpc")(channel=ch))
    with pytest.raises(gx.Unauthenticated) as e:
        iam.list_service_accounts(name=f"projects/{sandbox.project}")
    assert e.value.reason == "CREDENTIALS_MISSING"
    with pytest.raises(gx.Unauthenticated) as e:
        iam.list_service_accounts(name=f"projects/{sandbox.project}",
                                  metadata=[("authorization", "Bearer ya29.made-up-token")])
    assert e.value.reason == "ACCESS_TOKEN_TYPE_UNSUPPORTED"
    assert state(sandbox)["service_accounts"].keys() == {sandbox.operator_email}
