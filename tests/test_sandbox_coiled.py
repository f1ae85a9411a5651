"""The sandbox's Coiled control-plane routes and its OAuth token endpoint, over plain HTTP."""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core.future import polling
from google.auth import crypt
from google.auth import jwt as google_jwt
from google.cloud import artifactregistry_v1
from google.iam.v1 import iam_policy_pb2, policy_pb2

from coiled_setup import role_templates
from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO, DEFAULT_TOKEN
from tests.helpers import calls, clients, http, state

KEY_FIELDS = (
    "type", "project_id", "private_key_id", "private_key", "client_email", "client_id",
    "auth_uri", "token_uri", "auth_provider_x509_cert_url", "client_x509_cert_url",
)
WS = "demo"
FAST = polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.1, multiplier=1.2).with_timeout(10)
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def api(sb, method: str, path: str, body=None, token: str | None = DEFAULT_TOKEN, scheme: str | None = None):
    return http(method, sb.coiled_url + path, body, token=token, scheme=scheme)


def make_key(sb, permissions=None, account_id: str = "coiled-control") -> dict:
    """A fresh account holding a custom role with `permissions` (default: Coiled's role); its key."""
    c = clients(sb)
    perms = list(role_templates.load().permissions) if permissions is None else permissions
    role = c.iam.create_role(request={
        "parent": f"projects/{c.project}", "role_id": account_id.replace("-", "_"),
        "role": {"title": "coiled", "included_permissions": perms},
    })
    sa = c.iam.create_service_account(name=f"projects/{c.project}", account_id=account_id)
    req = iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/{c.project}")
    req.options.requested_policy_version = 3
    policy = c.projects.get_iam_policy(request=req)
    policy.bindings.append(policy_pb2.Binding(role=role.name, members=[f"serviceAccount:{sa.email}"]))
    c.projects.set_iam_policy(request={"resource": f"projects/{c.project}", "policy": policy})
    return json.loads(c.iam.create_service_account_key(name=sa.name).private_key_data)


def store(sb, key, instance_sa=None):
    return api(sb, "POST", f"/api/v2/cloud-credentials/{WS}/gcp",
               {"credentials": key, "instance_service_account": instance_sa})


def poll(sb, path: str, pick, timeout: float = 5.0):
    """Polls GET `path` until pick(answer)['state'] is no longer 'in progress'; the states seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api(sb, "GET", path)
        assert status == 200
        comp = pick(body)
        seen.append(comp["state"])
        if comp["state"] != "in progress":
            return seen, comp
        time.sleep(0.05)
    raise AssertionError(f"still in progress after {timeout} s: {seen[-3:]}")


def post_form(url: str, form: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def signed_jwt(sb, pem: str, kid: str, email: str, **claims) -> str:
    now = int(time.time())
    payload = {"iss": email, "scope": "https://www.googleapis.com/auth/cloud-platform",
               "aud": f"{sb.coiled_url}/token", "iat": now, "exp": now + 600, **claims}
    return google_jwt.encode(crypt.RSASigner.from_string(pem, kid), payload).decode()


def foreign_pem() -> str:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()


# -- users and tokens ----------------------------------------------------------------------------------


def test_me_needs_a_valid_token(sandbox):
    assert api(sandbox, "GET", "/api/v2/user/me", token=None)[0] == 401
    assert api(sandbox, "GET", "/api/v2/user/me", token="sandbox-not-a-real-token")[0] == 401
    assert api(sandbox, "GET", "/api/v2/user/me", token="", scheme="ApiToken")[0] == 401
    status, body = api(sandbox, "GET", "/api/v2/user/me")
    assert (status, body) == (200, {"username": "demo"})


def test_token_scheme_follows_token_shape(make_sandbox):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["coiled"]["users"].append({"token": "0123456789abcdef", "username": "legacy", "workspaces": ["legacy"]})
    sb = make_sandbox(s)
    # Dashed API tokens go with "ApiToken", legacy tokens with "Token".
    assert api(sb, "GET", "/api/v2/user/me", scheme="ApiToken") == (200, {"username": "demo"})
    assert api(sb, "GET", "/api/v2/user/me", scheme="Token")[0] == 401
    assert api(sb, "GET", "/api/v2/user/me", token="0123456789abcdef", scheme="Token") == (
        200, {"username": "legacy"})
    assert api(sb, "GET", "/api/v2/user/me", token="0123456789abcdef", scheme="ApiToken")[0] == 401
    assert api(sb, "GET", "/api/v2/user/me", scheme="Bearer")[0] == 401


def test_memberships(make_sandbox):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["coiled"]["users"] = [{"token": "team-token-1", "username": "ann", "workspaces": ["ann", "team"],
                             "default": "team"},
                            {"token": "guest-token-2", "username": "guest", "workspaces": ["team"],
                             "admin": False}]
    sb = make_sandbox(s)
    status, body = api(sb, "GET", "/api/v2/user/me/memberships", token="team-token-1")
    assert status == 200
    assert body == [{"account": {"slug": "ann", "name": "ann"}, "is_admin": True, "is_default_account": False},
                    {"account": {"slug": "team", "name": "team"}, "is_admin": True, "is_default_account": True}]
    status, body = api(sb, "GET", "/api/v2/user/me/memberships", token="guest-token-2")
    assert body == [{"account": {"slug": "team", "name": "team"}, "is_admin": False, "is_default_account": False}]
    assert api(sb, "GET", "/api/v2/user/me/memberships", token="nobody-token")[0] == 401
    # A workspace the user is not in is refused as Coiled refuses it.
    status, body = api(sb, "GET", "/api/v1/ann/backend_options/", token="guest-token-2")
    assert status == 403 and "aren't a member" in body["detail"]


@pytest.mark.parametrize("path", [f"/api/v2/cloud-credentials/{WS}/gcp", f"/api/v2/setup/account/{WS}/gcp/regions",
                                  f"/api/v2/user/account/{WS}/registry"])
def test_non_object_body_is_a_bad_request(sandbox, path):
    status, body = api(sandbox, "POST", path, ["not", "an", "object"])
    assert status == 400 and "object" in body["detail"]
    (entry,) = calls(sandbox)
    assert (entry["code"], entry["mutating"]) == (400, False)


def test_invalid_json_body(sandbox):
    req = urllib.request.Request(f"{sandbox.coiled_url}/api/v2/user/account/{WS}/registry",
                                 data=b"{not json", method="POST")
    req.add_header("Authorization", f"ApiToken {DEFAULT_TOKEN}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400


def test_unknown_route_and_workspace(sandbox):
    assert api(sandbox, "GET", "/api/v2/no/such/route")[0] == 404
    status, body = api(sandbox, "GET", "/api/v1/elsewhere/backend_options/")
    assert status == 404 and body == {"detail": "Not found."}


def test_settings_read_back_and_checked(sandbox):
    path = f"/api/v2/setup/account/{WS}/gcp/settings"
    status, body = api(sandbox, "GET", path)
    assert status == 200 and body["scheduler_firewall"] is None and body["give_scheduler_public_ip"] is True
    fw = {"ingress": [{"ports": [8786], "cidr": "10.0.0.0/8"}]}
    assert api(sandbox, "PATCH", path, {"scheduler_firewall": fw})[0] == 200
    assert api(sandbox, "GET", path)[1]["scheduler_firewall"] == fw
    assert api(sandbox, "PATCH", path, {"firewall": fw})[0] == 400
    assert api(sandbox, "PATCH", path, {"scheduler_firewall": {"ingress": [{"ports": "8786"}]}})[0] == 400


def test_confirm_and_retry_on_demand(make_sandbox):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["coiled"]["confirm"] = {"PATCH /api/v2/setup/account/{ws}/gcp/settings": "Clusters are running; go on?"}
    s["coiled"]["retry"] = {"POST /api/v2/user/account/{ws}/registry": 1}
    sb = make_sandbox(s)
    path = f"/api/v2/setup/account/{WS}/gcp/settings"
    assert api(sb, "PATCH", path, {"auto_setup": True}) == (
        409, {"action_required": "confirm", "detail": "Clusters are running; go on?"})
    assert state(sb)["coiled"]["workspaces"][WS]["settings"]["auto_setup"] is None
    assert api(sb, "PATCH", path + "?confirm=1", {"auto_setup": True})[0] == 200
    registry = f"/api/v2/user/account/{WS}/registry"
    assert api(sb, "POST", registry, {"type": "gar"})[1]["action_required"] == "retry"
    assert api(sb, "POST", registry, {"type": "gar"})[0] == 200


# -- credentials -------------------------------------------------------------------------------------------


def test_credentials_missing_a_field(sandbox):
    key = make_key(sandbox, permissions=["logging.logEntries.create"])
    for field in KEY_FIELDS:
        partial = {k: v for k, v in key.items() if k != field}
        status, body = store(sandbox, partial)
        assert status == 400, field
        assert field in body["detail"], body
    assert state(sandbox)["coiled"]["workspaces"][WS]["credentials"] is None


@pytest.mark.parametrize("credentials", ["not json at all", ["a", "list"], None])
def test_credentials_not_a_key(sandbox, credentials):
    status, body = store(sandbox, credentials)
    assert status == 400 and body["detail"]


def test_credentials_stored_public_fields_only(sandbox):
    key = make_key(sandbox, permissions=["logging.logEntries.create"])
    status, body = store(sandbox, key, instance_sa="worker@coiled-demo.iam.gserviceaccount.com")
    assert status == 201
    dump = state(sandbox)
    stored = dump["coiled"]["workspaces"][WS]
    assert stored["credentials"] == {f: key[f] for f in ("project_id", "private_key_id", "client_email", "client_id")}
    assert stored["instance_service_account"] == "worker@coiled-demo.iam.gserviceaccount.com"
    assert "PRIVATE KEY" not in json.dumps(dump)
    # A key file passed as a JSON string is accepted too.
    assert store(sandbox, json.dumps(key))[0] == 201
    record = [x for x in calls(sandbox) if x["service"] == "coiled"]
    assert record[-1]["method"] == "POST /api/v2/cloud-credentials/{ws}/gcp"
    assert (record[-1]["caller"], record[-1]["code"], record[-1]["mutating"]) == ("demo", 201, True)


def test_credentials_with_a_dead_key_refused(sandbox):
    key = make_key(sandbox, permissions=["logging.logEntries.create"])
    c = clients(sandbox)
    c.iam.delete_service_account_key(
        name=f"projects/{c.project}/serviceAccounts/{key['client_email']}/keys/{key['private_key_id']}")
    status, body = store(sandbox, key)
    assert status == 400 and "invalid_grant" in body["detail"]
    assert state(sandbox)["coiled"]["workspaces"][WS]["credentials"] is None


def test_drop_credentials(sandbox):
    key = make_key(sandbox, permissions=["logging.logEntries.create"])
    assert store(sandbox, key)[0] == 201
    assert api(sandbox, "DELETE", f"/api/v2/cloud-credentials/{WS}/gcp")[0] == 204
    assert state(sandbox)["coiled"]["workspaces"][WS]["credentials"] is None
    assert api(sandbox, "GET", f"/api/v1/{WS}/backend_options/")[1]["backend"] == "vm"


# -- infrastructure ------------------------------------------------------------------------------------------

GLOBAL = f"/api/v2/setup/account/{WS}/gcp/global"
REGIONS = f"/api/v2/setup/account/{WS}/gcp/regions"
GLOBAL_BODY = {"managed": True, "network": None, "scheduler_network_tags": None, "cluster_network_tags": None}


def test_infra_needs_credentials(sandbox):
    assert api(sandbox, "POST", GLOBAL, GLOBAL_BODY)[0] == 400
    assert api(sandbox, "POST", REGIONS, {"region": "us-east1", "default": True})[0] == 400


def test_infra_created_with_the_full_role(make_sandbox):
    sb = make_sandbox(infra_s=0.2)
    assert store(sb, make_key(sb))[0] == 201

    status, body = api(sb, "POST", GLOBAL, GLOBAL_BODY)
    assert (status, body["component"]["state"]) == (201, "in progress")
    seen, comp = poll(sb, GLOBAL, lambda b: b["component"])
    assert seen[0] == "in progress" and comp == {"state": "created", "reason": None}

    status, body = api(sb, "POST", REGIONS, {"region": "us-east1", "default": True, "managed": True, "subnets": []})
    assert status == 201 and body["component"]["state"] == "in progress"
    seen, comp = poll(sb, REGIONS, lambda b: b[0]["component"])
    assert seen[0] == "in progress" and comp["state"] == "created"
    status, regions = api(sb, "GET", REGIONS)
    assert [(r["region"], r["default"], r["managed"]) for r in regions] == [("us-east1", True, True)]

    ws = state(sb)["coiled"]["workspaces"][WS]
    # With it, Coiled's backend made its log sink and granted the sink's (Google-managed) writer identity.
    assert ws["global_infra"] == {"state": "created", "reason": None, "log_sink": {
        "writer_identity": "serviceAccount:service-123456789012@gcp-sa-logging.iam.gserviceaccount.com",
        "granted": True, "refused_by": None}}
    assert ws["regions"][0]["component"] == {"state": "created", "reason": None}


def test_infra_error_names_missing_permission(make_sandbox):
    sb = make_sandbox(infra_s=0.1)
    perms = list(role_templates.load().permissions)
    dropped = "compute.instances.create"
    assert dropped in perms
    assert store(sb, make_key(sb, [p for p in perms if p != dropped]))[0] == 201
    api(sb, "POST", GLOBAL, GLOBAL_BODY)
    _, comp = poll(sb, GLOBAL, lambda b: b["component"])
    assert comp["state"] == "error"
    assert dropped in comp["reason"]
    api(sb, "POST", REGIONS, {"region": "us-central1", "default": True})
    _, comp = poll(sb, REGIONS, lambda b: b[0]["component"])
    assert comp["state"] == "error" and dropped in comp["reason"]


def test_infra_error_when_key_deleted(make_sandbox):
    sb = make_sandbox(infra_s=0.1)
    key = make_key(sb)
    assert store(sb, key)[0] == 201
    c = clients(sb)
    c.iam.delete_service_account_key(
        name=f"projects/{c.project}/serviceAccounts/{key['client_email']}/keys/{key['private_key_id']}")
    api(sb, "POST", GLOBAL, GLOBAL_BODY)
    _, comp = poll(sb, GLOBAL, lambda b: b["component"])
    assert comp["state"] == "error" and "key" in comp["reason"]


def test_region_with_registry_needs_repository(make_sandbox):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0]["services"] = ["iam.googleapis.com", "cloudresourcemanager.googleapis.com",
                                    "serviceusage.googleapis.com", "artifactregistry.googleapis.com"]
    sb = make_sandbox(s, infra_s=0.1)
    key = make_key(sb)
    assert store(sb, key)[0] == 201
    assert api(sb, "POST", f"/api/v2/user/account/{WS}/registry", {"type": "gar"})[0] == 200

    api(sb, "POST", REGIONS, {"region": "us-east1", "default": True})
    _, comp = poll(sb, REGIONS, lambda b: b[0]["component"])
    assert comp["state"] == "error" and "not found" in comp["reason"]

    c = clients(sb)
    parent = f"projects/{c.project}/locations/us-east1"
    repo = c.registry.create_repository(
        parent=parent, repository_id="coiled",
        repository=artifactregistry_v1.Repository(format_=artifactregistry_v1.Repository.Format.DOCKER),
    ).result(polling=FAST)
    api(sb, "POST", REGIONS, {"region": "us-east1", "default": True})
    _, comp = poll(sb, REGIONS, lambda b: b[0]["component"])
    assert comp["state"] == "error" and "uploadArtifacts" in comp["reason"]

    policy = c.registry.get_iam_policy(request={"resource": repo.name})
    policy.bindings.append(policy_pb2.Binding(role="roles/artifactregistry.writer",
                                              members=[f"serviceAccount:{key['client_email']}"]))
    c.registry.set_iam_policy(request={"resource": repo.name, "policy": policy})
    api(sb, "POST", REGIONS, {"region": "us-east1", "default": True})
    _, comp = poll(sb, REGIONS, lambda b: b[0]["component"])
    assert comp == {"state": "created", "reason": None}


def test_settings_and_drop_infra(make_sandbox):
    sb = make_sandbox(infra_s=0.0)
    assert store(sb, make_key(sb))[0] == 201
    firewall = {"ingress": [{"ports": [22, 8786, 8787], "cidr": "0.0.0.0/0"}]}
    status, body = api(sb, "PATCH", f"/api/v2/setup/account/{WS}/gcp/settings",
                       {"auto_setup": False, "scheduler_firewall": firewall})
    assert status == 200 and body["scheduler_firewall"] == firewall
    assert api(sb, "PATCH", f"/api/v2/setup/account/{WS}/gcp/settings", ["not", "an", "object"])[0] == 400
    api(sb, "POST", GLOBAL, GLOBAL_BODY)
    api(sb, "POST", REGIONS, {"region": "us-east1", "default": True})
    assert api(sb, "DELETE", f"/api/v2/setup/account/{WS}/gcp")[0] == 204
    assert api(sb, "GET", GLOBAL)[1] == {"component": None}
    assert api(sb, "GET", REGIONS)[1] == []


# -- registry and backend options -------------------------------------------------------------------------------


def test_registry_types(sandbox):
    path = f"/api/v2/user/account/{WS}/registry"
    assert api(sandbox, "POST", path, {"type": "gar"}) == (200, {"type": "gar"})
    status, body = api(sandbox, "POST", path, {"type": "quay"})
    assert status == 400 and "quay" in body["detail"]
    assert state(sandbox)["coiled"]["workspaces"][WS]["registry"] == {"type": "gar"}


def test_backend_options(make_sandbox):
    sb = make_sandbox(infra_s=0.0)
    assert api(sb, "GET", f"/api/v1/{WS}/backend_options/") == (200, {"backend": "vm", "options": {}})
    key = make_key(sb)
    store(sb, key, instance_sa="instance@coiled-demo.iam.gserviceaccount.com")
    api(sb, "POST", REGIONS, {"region": "us-central1", "default": False})
    api(sb, "POST", REGIONS, {"region": "us-east1", "default": True})
    api(sb, "POST", f"/api/v2/user/account/{WS}/registry", {"type": "gar"})
    status, body = api(sb, "GET", f"/api/v1/{WS}/backend_options/")
    assert status == 200 and body["backend"] == "vm_gcp"
    opts = body["options"]
    assert opts["provider_name"] == "gcp"
    assert opts["gcp_project_name"] == key["project_id"]
    assert opts["gcp_region_name"] == "us-east1"
    assert opts["instance_service_account"] == "instance@coiled-demo.iam.gserviceaccount.com"
    assert opts["gcp_service_creds_dict"]["client_email"] == key["client_email"]
    assert "private_key" not in opts["gcp_service_creds_dict"]
    assert opts["registry"] == {"type": "gar", "location": "us-east1", "project_id": key["project_id"]}


# -- token endpoint ----------------------------------------------------------------------------------------------


def test_token_endpoint_grants_for_a_live_key(sandbox):
    key = json.loads(sandbox.operator_key_path.read_text())
    assertion = signed_jwt(sandbox, key["private_key"], key["private_key_id"], key["client_email"])
    status, body = post_form(key["token_uri"], {"grant_type": JWT_GRANT, "assertion": assertion})
    assert status == 200
    assert body["token_type"] == "Bearer" and body["access_token"] and body["expires_in"] > 0
    assert body["access_token"] not in json.dumps(state(sandbox))


def test_token_endpoint_rejects_unknown_signer(sandbox):
    key = json.loads(sandbox.operator_key_path.read_text())
    url = key["token_uri"]
    # Signed by a key Google never issued, whether it names no known key id or the real one.
    for kid in ("0" * 40, key["private_key_id"]):
        assertion = signed_jwt(sandbox, foreign_pem(), kid, key["client_email"])
        status, body = post_form(url, {"grant_type": JWT_GRANT, "assertion": assertion})
        assert status == 400 and body["error"] == "invalid_grant", kid
    status, body = post_form(url, {"grant_type": JWT_GRANT, "assertion": "not.a.jwt"})
    assert status == 400 and body["error"] == "invalid_grant"
    good = signed_jwt(sandbox, key["private_key"], key["private_key_id"], key["client_email"])
    status, body = post_form(url, {"grant_type": "client_credentials", "assertion": good})
    assert status == 400 and body["error"] == "unsupported_grant_type"
    # A JWT that names another account than its key's is refused too.
    other = signed_jwt(sandbox, key["private_key"], key["private_key_id"],
                       "someone@coiled-demo.iam.gserviceaccount.com")
    assert post_form(url, {"grant_type": JWT_GRANT, "assertion": other})[0] == 400


def test_token_endpoint_rejects_expired_assertion(sandbox):
    key = json.loads(sandbox.operator_key_path.read_text())
    old = int(time.time()) - 7200
    assertion = signed_jwt(sandbox, key["private_key"], key["private_key_id"], key["client_email"],
                           iat=old, exp=old + 600)
    status, body = post_form(key["token_uri"], {"grant_type": JWT_GRANT, "assertion": assertion})
    assert status == 400 and body["error"] == "invalid_grant"
