"""Injected faults and latency, and the sandbox's call record."""

from __future__ import annotations

import collections
import copy
import time

import pytest
from google.api_core import exceptions as gx

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, channel, clients, http, state

FAULT_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
EXCEPTION_CODES = {gx.ServiceUnavailable: "UNAVAILABLE", gx.DeadlineExceeded: "DEADLINE_EXCEEDED",
                   gx.ResourceExhausted: "RESOURCE_EXHAUSTED"}


def configure(sb, **settings):
    return http("POST", f"{sb.coiled_url}/_sandbox/config", settings)


def read_many(sb, n: int) -> list[str]:
    """n GetProject calls without client retries; the outcome of each as a status code name."""
    c = clients(sb)
    out = []
    for _ in range(n):
        try:
            c.projects.get_project(name=f"projects/{c.project}", retry=None)
            out.append("OK")
        except gx.GoogleAPICallError as e:
            out.append(EXCEPTION_CODES[type(e)])
            if isinstance(e, gx.ResourceExhausted):  # quota errors carry Google's ErrorInfo
                assert e.reason == "RATE_LIMIT_EXCEEDED"
                assert e.metadata["service"] == "cloudresourcemanager.googleapis.com"
    return out


# -- gRPC faults ----------------------------------------------------------------------------------------


def test_fault_rate_and_codes(make_sandbox):
    sb = make_sandbox(fault_rate=0.2, seed=7)
    seen = read_many(sb, 200)
    record = [x for x in calls(sb) if x["method"] == "GetProject"]
    assert len(record) == 200
    faults = [x["fault"] for x in record]
    share = sum(f is not None for f in faults) / 200
    assert 0.12 <= share <= 0.28, share
    assert {f for f in faults if f} == FAULT_CODES
    # What the client saw is what the record says.
    assert seen == [x["fault"] or "OK" for x in record]
    assert [x["code"] for x in record] == seen


def test_same_seed_same_faults(make_sandbox):
    first = read_many(make_sandbox(fault_rate=0.2, seed=11), 120)
    second = read_many(make_sandbox(fault_rate=0.2, seed=11), 120)
    other = read_many(make_sandbox(fault_rate=0.2, seed=12), 120)
    assert first == second
    assert first != other
    assert any(x != "OK" for x in first)


def test_faults_limited_to_some_methods(make_sandbox):
    """With fault_methods, only those methods fail (and only they draw, so their faults follow the seed)."""
    sb = make_sandbox(fault_rate=0.5, seed=7, fault_methods=("GetIamPolicy",))
    c = clients(sb)
    outcomes = []
    for _ in range(40):
        c.projects.get_project(name=f"projects/{c.project}", retry=None)
        try:
            c.projects.get_iam_policy(resource=f"projects/{c.project}", retry=None)
            outcomes.append("OK")
        except gx.GoogleAPICallError as e:
            outcomes.append(EXCEPTION_CODES[type(e)])
    record = calls(sb)
    assert all(x["fault"] is None for x in record if x["method"] != "GetIamPolicy")
    assert [x["fault"] or "OK" for x in record if x["method"] == "GetIamPolicy"] == outcomes
    assert 8 <= sum(o != "OK" for o in outcomes) <= 32
    # Coiled's routes are not in the list either.
    assert {http("GET", f"{sb.coiled_url}/api/v2/user/me", token=sb.coiled_token)[0] for _ in range(10)} == {200}


def test_no_faults_by_default(sandbox):
    assert set(read_many(sandbox, 50)) == {"OK"}
    assert all(x["fault"] is None for x in calls(sandbox))


def test_client_default_retry_hides_unavailable(make_sandbox):
    """GetServiceAccount retries UNAVAILABLE on its own: with faults, most reads still succeed."""
    sb = make_sandbox(fault_rate=0.2, seed=3)
    c = clients(sb)
    name = f"projects/{c.project}/serviceAccounts/{sb.operator_email}"
    ok = 0
    for _ in range(30):
        try:
            c.iam.get_service_account(name=name)
            ok += 1
        except (gx.TooManyRequests, gx.DeadlineExceeded, gx.ServiceUnavailable):
            pass
    record = [x for x in calls(sb) if x["method"] == "GetServiceAccount"]
    assert len(record) > 30  # the retries show in the record
    assert ok >= 25


def test_lost_answer_after_a_write(make_sandbox):
    """DEADLINE_EXCEEDED: the change is made, the answer lost. UNAVAILABLE: nothing happens."""
    sb = make_sandbox(fault_rate=1.0, seed=5)
    c = clients(sb)
    outcomes = {}
    for i in range(30):
        aid = f"faulty-account-{i}"
        try:
            c.iam.create_service_account(name=f"projects/{c.project}", account_id=aid)
        except gx.GoogleAPICallError as e:
            outcomes[aid] = EXCEPTION_CODES[type(e)]
    assert len(outcomes) == 30 and set(outcomes.values()) == FAULT_CODES
    configure(sb, fault_rate=0.0)
    existing = set(state(sb)["service_accounts"])
    for aid, code in outcomes.items():
        made = f"{aid}@{c.project}.iam.gserviceaccount.com" in existing
        assert made == (code == "DEADLINE_EXCEEDED"), (aid, code)
    record = {x["resource"]: x for x in calls(sb) if x["method"] == "CreateServiceAccount"}
    assert all(x["mutating"] == (x["fault"] == "DEADLINE_EXCEEDED") for x in record.values())
    # Retrying a lost create finds the account already there.
    lost = next(a for a, code in outcomes.items() if code == "DEADLINE_EXCEEDED")
    with pytest.raises(gx.AlreadyExists):
        c.iam.create_service_account(name=f"projects/{c.project}", account_id=lost)


def test_latency(make_sandbox):
    sb = make_sandbox(latency_ms=100)
    c = clients(sb)
    c.projects.get_project(name=f"projects/{c.project}")  # the token fetch is not timed
    t0 = time.monotonic()
    c.projects.get_project(name=f"projects/{c.project}")
    assert time.monotonic() - t0 >= 0.1
    t0 = time.monotonic()
    assert http("GET", f"{sb.coiled_url}/api/v2/user/me", token=sb.coiled_token)[0] == 200
    assert time.monotonic() - t0 >= 0.1


def test_no_latency_by_default(sandbox):
    c = clients(sandbox)
    c.projects.get_project(name=f"projects/{c.project}")
    t0 = time.monotonic()
    for _ in range(5):
        c.projects.get_project(name=f"projects/{c.project}")
    assert time.monotonic() - t0 < 0.25


def test_config_changes_at_runtime(sandbox):
    status, cfg = configure(sandbox, latency_ms=60)
    assert status == 200 and cfg["latency_ms"] == 60
    c = clients(sandbox)
    c.projects.get_project(name=f"projects/{c.project}")
    t0 = time.monotonic()
    c.projects.get_project(name=f"projects/{c.project}")
    assert time.monotonic() - t0 >= 0.06
    assert configure(sandbox, no_such_setting=1)[0] == 400
    assert state(sandbox)["config"]["latency_ms"] == 60


# -- Coiled faults -------------------------------------------------------------------------------------------


def test_coiled_faults(make_sandbox):
    sb = make_sandbox(fault_rate=1.0, seed=9)
    statuses = [http("GET", f"{sb.coiled_url}/api/v2/user/me", token=sb.coiled_token)[0] for _ in range(30)]
    assert set(statuses) == {429, 502, 503}
    record = [x for x in calls(sb) if x["service"] == "coiled"]
    assert [x["fault"] for x in record] == statuses
    assert [x["code"] for x in record] == statuses


def test_coiled_fault_share(make_sandbox):
    sb = make_sandbox(fault_rate=0.2, seed=4)
    statuses = [http("GET", f"{sb.coiled_url}/api/v2/user/me", token=sb.coiled_token)[0] for _ in range(200)]
    share = sum(s != 200 for s in statuses) / 200
    assert 0.12 <= share <= 0.28
    assert set(statuses) <= {200, 429, 502, 503}


def test_coiled_bad_gateway_after_a_write(make_sandbox):
    """502 on a write: Coiled made the change; 429 and 503: it did not."""
    sb = make_sandbox(fault_rate=1.0, seed=2)
    path = f"{sb.coiled_url}/api/v2/user/account/demo/registry"
    results = []
    for i in range(12):
        body = {"type": "gar", "attempt": i}
        status, _ = http("POST", path, body, token=sb.coiled_token)
        registry = state(sb)["coiled"]["workspaces"]["demo"]["registry"]
        results.append((status, registry == body))
    assert {s for s, _ in results} == {429, 502, 503}
    assert all(applied == (status == 502) for status, applied in results)
    record = [x for x in calls(sb) if x["service"] == "coiled"]
    assert all(x["mutating"] == (x["fault"] == 502) for x in record)


# -- call record ------------------------------------------------------------------------------------------------


def test_call_record(sandbox):
    c = clients(sandbox)
    parent = f"projects/{c.project}"
    sa = c.iam.create_service_account(name=parent, account_id="recorded-account")
    with pytest.raises(gx.AlreadyExists):
        c.iam.create_service_account(name=parent, account_id="recorded-account")
    c.iam.get_service_account(name=sa.name)
    with pytest.raises(gx.PermissionDenied):
        c.registry.list_repositories(parent=f"{parent}/locations/us-east1")
    http("GET", f"{sandbox.coiled_url}/api/v2/user/me", token=sandbox.coiled_token)
    http("GET", f"{sandbox.coiled_url}/api/v2/user/me", token="sandbox-wrong-token")

    record = calls(sandbox)
    assert [x["seq"] for x in record] == list(range(1, len(record) + 1))
    op = sandbox.operator_email
    assert [(x["service"], x["method"], x["caller"], x["code"], x["write"], x["mutating"]) for x in record] == [
        ("iam", "CreateServiceAccount", op, "OK", True, True),
        ("iam", "CreateServiceAccount", op, "ALREADY_EXISTS", True, False),
        ("iam", "GetServiceAccount", op, "OK", False, False),
        ("artifactregistry", "ListRepositories", op, "PERMISSION_DENIED", False, False),
        ("coiled", "GET /api/v2/user/me", "demo", 200, False, False),
        ("coiled", "GET /api/v2/user/me", None, 401, False, False),
    ]
    assert record[0]["resource"] == parent and record[2]["resource"] == sa.name
    assert all(x["fault"] is None and x["time"] > 0 for x in record)
    assert calls(sandbox, since=4) == record[4:]


def test_call_record_failed_writes_do_not_mutate(make_sandbox):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["operator"]["roles"] = ["roles/viewer"]
    for sb, code in ((make_sandbox(s), "PERMISSION_DENIED"), (make_sandbox(), "INVALID_ARGUMENT")):
        c = clients(sb)
        with pytest.raises(gx.GoogleAPICallError):
            c.iam.create_service_account(name=f"projects/{c.project}", account_id="x")
        with pytest.raises(gx.GoogleAPICallError):
            c.iam.create_role(request={"parent": f"projects/{c.project}", "role_id": "r!",
                                       "role": {"included_permissions": ["iam.roles.get"]}})
        with pytest.raises(gx.GoogleAPICallError):
            c.projects.set_iam_policy(request={"resource": f"projects/{c.project}", "policy": {
                "bindings": [{"role": "roles/viewer", "members": ["bogus:member"]}]}})
        record = [(x["method"], x["code"], x["write"], x["mutating"]) for x in calls(sb)]
        assert record == [(m, code, True, False) for m in ("CreateServiceAccount", "CreateRole", "SetIamPolicy")]
        assert state(sb)["roles"] == {}


def test_call_record_unauthenticated(sandbox):
    from google.cloud import iam_admin_v1

    cls = iam_admin_v1.IAMClient
    anonymous = cls(transport=cls.get_transport_class("grpc")(channel=channel(sandbox.google_endpoint)))
    with pytest.raises(gx.Unauthenticated):
        anonymous.create_service_account(name=f"projects/{sandbox.project}", account_id="anonymous-made")
    (entry,) = calls(sandbox)
    assert (entry["caller"], entry["code"], entry["write"], entry["mutating"]) == (
        None, "UNAUTHENTICATED", True, False)


def test_call_record_counts_operation_polls(make_sandbox):
    sb = make_sandbox(operation_s=0.15)
    c = clients(sb)
    from google.api_core.future import polling

    fast = polling.DEFAULT_POLLING.with_delay(initial=0.03, maximum=0.05, multiplier=1.0).with_timeout(5)
    c.usage.enable_service(request={"name": f"projects/{c.project}/services/artifactregistry.googleapis.com"}
                           ).result(polling=fast)
    kinds = collections.Counter((x["service"], x["method"]) for x in calls(sb))
    assert kinds[("serviceusage", "EnableService")] == 1
    assert kinds[("operations", "GetOperation")] >= 2
