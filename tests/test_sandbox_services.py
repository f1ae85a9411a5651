"""Service Usage, Artifact Registry, long-running operations and project state in the sandbox."""

from __future__ import annotations

import copy
import json
import time

import pytest
from google.api_core import exceptions as gx
from google.api_core.future import polling
from google.cloud import artifactregistry_v1, service_usage_v1
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from coiled_setup.sandbox.world import DEFAULT_SERVICES
from tests.helpers import calls, clients, state, wait_until

AR = "artifactregistry.googleapis.com"
FAST = polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.1, multiplier=1.2).with_timeout(10)
DOCKER = artifactregistry_v1.Repository.Format.DOCKER


def scenario(**project) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update(project)
    return s


def with_registry(**project) -> dict:
    return scenario(services=DEFAULT_SERVICES + [AR], **project)


def service_name(c, service: str = AR) -> str:
    return f"projects/{c.project}/services/{service}"


def parent(c, location: str = "us-east1") -> str:
    return f"projects/{c.project}/locations/{location}"


def create_repo(c, repo_id: str = "coiled", location: str = "us-east1"):
    return c.registry.create_repository(
        parent=parent(c, location),
        repository=artifactregistry_v1.Repository(format_=DOCKER, description="Coiled images"),
        repository_id=repo_id,
    )


# -- Service Usage -------------------------------------------------------------------------------------


def test_registry_refused_before_enabling(sandbox):
    c = clients(sandbox)
    with pytest.raises(gx.PermissionDenied) as e:
        c.registry.list_repositories(parent=parent(c))
    assert e.value.reason == "SERVICE_DISABLED"
    assert e.value.metadata["service"] == AR
    assert e.value.metadata["consumer"] == "projects/123456789012"
    assert e.value.domain == "googleapis.com"
    with pytest.raises(gx.PermissionDenied) as e:
        create_repo(c)
    assert e.value.reason == "SERVICE_DISABLED"
    svc = c.usage.get_service(request={"name": service_name(c)})
    assert svc.state == service_usage_v1.State.DISABLED
    assert svc.config.name == AR
    enabled = c.usage.get_service(request={"name": service_name(c, "iam.googleapis.com")})
    assert enabled.state == service_usage_v1.State.ENABLED


def test_enable_service_operation_takes_operation_time(make_sandbox):
    sb = make_sandbox(operation_s=0.5)
    c = clients(sb)
    t0 = time.monotonic()
    op = c.usage.enable_service(request={"name": service_name(c)})
    assert not op.done(retry=None)  # the first poll: still running
    result = op.result(polling=FAST)
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 3
    assert isinstance(result, service_usage_v1.EnableServiceResponse)
    assert result.service.config.name == AR
    assert result.service.state == service_usage_v1.State.ENABLED
    assert isinstance(op.metadata, service_usage_v1.OperationMetadata)
    assert c.usage.get_service(request={"name": service_name(c)}).state == service_usage_v1.State.ENABLED
    assert AR in state(sb)["projects"][c.project]["services"]
    assert c.registry.list_repositories(parent=parent(c)).repositories == []

    # Enabling again is a no-op that is done at once.
    again = c.usage.enable_service(request={"name": service_name(c)})
    assert again.operation.name == "operations/noop.DONE_OPERATION" and again.done(retry=None)
    writes = [x for x in calls(sb) if x["method"] == "EnableService"]
    assert [x["mutating"] for x in writes] == [True, False]


def test_enable_while_enabling(make_sandbox):
    """A second enable during the first one answers an operation about that same service."""
    sb = make_sandbox(operation_s=0.3)
    c = clients(sb)
    first = c.usage.enable_service(request={"name": service_name(c)})
    second = c.usage.enable_service(request={"name": service_name(c)})
    noop = c.usage.enable_service(request={"name": service_name(c, "iam.googleapis.com")})
    assert noop.done(retry=None) and noop.result().service.config.name == "iam.googleapis.com"
    assert not second.done(retry=None)
    assert second.result(polling=FAST).service.config.name == AR
    assert first.result(polling=FAST).service.state == service_usage_v1.State.ENABLED


def test_enable_service_default_polling(make_sandbox):
    sb = make_sandbox(operation_s=0.2)
    c = clients(sb)
    op = c.usage.enable_service(request={"name": service_name(c)})
    assert op.result(timeout=10).service.state == service_usage_v1.State.ENABLED
    assert any(x["service"] == "operations" and x["method"] == "GetOperation" for x in calls(sb))


def test_registry_lags_after_enabling(make_sandbox):
    delay = 1.0
    sb = make_sandbox(operation_s=0.1, propagation_delay_s=delay)
    c = clients(sb)
    t0 = time.monotonic()
    c.usage.enable_service(request={"name": service_name(c)}).result(polling=FAST)
    # Service Usage says enabled, yet the API itself still refuses for a moment.
    assert c.usage.get_service(request={"name": service_name(c)}).state == service_usage_v1.State.ENABLED
    with pytest.raises(gx.PermissionDenied) as e:
        c.registry.list_repositories(parent=parent(c))
    assert e.value.reason == "SERVICE_DISABLED"
    listed = wait_until(lambda: c.registry.list_repositories(parent=parent(c)) is not None)
    assert listed is True
    assert time.monotonic() - t0 >= 0.1 + delay / 2 - 0.05


def test_batch_enable(make_sandbox):
    sb = make_sandbox(operation_s=0.1)
    c = clients(sb)
    wanted = [AR, "iamcredentials.googleapis.com"]
    result = c.usage.batch_enable_services(
        request={"parent": f"projects/{c.project}", "service_ids": wanted}).result(polling=FAST)
    assert sorted(s.config.name for s in result.services) == sorted(wanted)
    assert all(s.state == service_usage_v1.State.ENABLED for s in result.services)
    with pytest.raises(gx.InvalidArgument):
        c.usage.batch_enable_services(request={"parent": f"projects/{c.project}", "service_ids": []})


def test_enable_without_billing(make_sandbox):
    sb = make_sandbox(scenario(billing=False), operation_s=0.1)
    c = clients(sb)
    with pytest.raises(gx.FailedPrecondition) as e:
        c.usage.enable_service(request={"name": service_name(c)})
    assert e.value.reason == "UREQ_PROJECT_BILLING_NOT_FOUND"
    assert e.value.domain == "serviceusage.googleapis.com/billing-enabled"  # as Google answers (conformance tests)
    assert AR in e.value.metadata["services"]
    assert c.usage.get_service(request={"name": service_name(c)}).state == service_usage_v1.State.DISABLED
    assert AR not in state(sb)["projects"][c.project]["services"]
    # An API that needs no billing account can still be enabled.
    ok = c.usage.enable_service(request={"name": service_name(c, "iamcredentials.googleapis.com")})
    assert ok.result(polling=FAST).service.state == service_usage_v1.State.ENABLED


def test_disable_service(make_sandbox):
    sb = make_sandbox(with_registry())
    c = clients(sb)
    c.registry.list_repositories(parent=parent(c))
    c.usage.disable_service(request={"name": service_name(c)}).result(polling=FAST)
    with pytest.raises(gx.PermissionDenied) as e:
        c.registry.list_repositories(parent=parent(c))
    assert e.value.reason == "SERVICE_DISABLED"


def test_enable_needs_permission(make_sandbox):
    s = scenario()
    s["operator"]["roles"] = ["roles/viewer"]
    sb = make_sandbox(s)
    c = clients(sb)
    with pytest.raises(gx.PermissionDenied) as e:
        c.usage.enable_service(request={"name": service_name(c)})
    assert e.value.reason == "IAM_PERMISSION_DENIED"
    assert e.value.metadata["permission"] == "serviceusage.services.enable"


# -- Artifact Registry -----------------------------------------------------------------------------------


def test_create_get_list_repository(make_sandbox):
    sb = make_sandbox(with_registry(), operation_s=0.3)
    c = clients(sb)
    op = create_repo(c)
    name = f"{parent(c)}/repositories/coiled"
    # Still being created: not visible yet, and its id is taken.
    assert c.registry.list_repositories(parent=parent(c)).repositories == []
    with pytest.raises(gx.NotFound):
        c.registry.get_repository(name=name)
    repo = op.result(polling=FAST)
    assert isinstance(repo, artifactregistry_v1.Repository)
    assert (repo.name, repo.format_, repo.description) == (name, DOCKER, "Coiled images")

    got = c.registry.get_repository(name=name)
    assert got.name == name and got.format_ == DOCKER
    assert [r.name for r in c.registry.list_repositories(parent=parent(c))] == [name]
    assert c.registry.list_repositories(parent=parent(c, "us-central1")).repositories == []
    assert state(sb)["repositories"][name]["ready"] is True

    with pytest.raises(gx.AlreadyExists):
        create_repo(c)


def test_duplicate_while_creating(make_sandbox):
    sb = make_sandbox(with_registry(), operation_s=0.3)
    c = clients(sb)
    create_repo(c)
    with pytest.raises(gx.AlreadyExists):
        create_repo(c)


@pytest.mark.parametrize("location, repo_id", [("mars-north1", "coiled"), ("us-east1", "Bad_Repo"),
                                                ("us-east1", "-leading-dash")])
def test_create_repository_invalid(make_sandbox, location, repo_id):
    sb = make_sandbox(with_registry())
    c = clients(sb)
    with pytest.raises(gx.InvalidArgument):
        create_repo(c, repo_id, location)
    assert state(sb)["repositories"] == {}


def test_create_repository_needs_format(make_sandbox):
    c = clients(make_sandbox(with_registry()))
    with pytest.raises(gx.InvalidArgument):
        c.registry.create_repository(parent=parent(c), repository=artifactregistry_v1.Repository(),
                                     repository_id="noformat")


def test_get_missing_repository(make_sandbox):
    c = clients(make_sandbox(with_registry()))
    with pytest.raises(gx.NotFound):
        c.registry.get_repository(name=f"{parent(c)}/repositories/absent")


def test_delete_repository(make_sandbox):
    sb = make_sandbox(with_registry(repositories=[{"location": "us-east1", "id": "coiled"}]))
    c = clients(sb)
    name = f"{parent(c)}/repositories/coiled"
    c.registry.delete_repository(name=name).result(polling=FAST)
    with pytest.raises(gx.NotFound):
        c.registry.get_repository(name=name)


def repo_policy(c, name):
    return c.registry.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=name))


def test_repository_policy_etag(make_sandbox):
    sb = make_sandbox(with_registry(repositories=[{"location": "us-east1", "id": "coiled"}]))
    c = clients(sb)
    name = f"{parent(c)}/repositories/coiled"
    stale = repo_policy(c, name)
    assert list(stale.bindings) == []
    member = f"serviceAccount:{sb.operator_email}"

    first = copy.deepcopy(stale)
    first.bindings.append(policy_pb2.Binding(role="roles/artifactregistry.repoAdmin", members=[member]))
    written = c.registry.set_iam_policy(request={"resource": name, "policy": first})
    assert written.etag != stale.etag

    second = copy.deepcopy(stale)
    second.bindings.append(policy_pb2.Binding(role="roles/artifactregistry.reader", members=[member]))
    with pytest.raises(gx.Aborted):
        c.registry.set_iam_policy(request={"resource": name, "policy": second})
    now = repo_policy(c, name)
    assert now.etag == written.etag
    assert [(b.role, list(b.members)) for b in now.bindings] == [("roles/artifactregistry.repoAdmin", [member])]
    # The project policy is untouched.
    proj = state(sb)["projects"][c.project]["policy"]["bindings"]
    assert not any(b["role"] == "roles/artifactregistry.repoAdmin" for b in proj)


def test_repository_test_permissions_follow_grant(make_sandbox):
    delay = 0.6
    s = with_registry(repositories=[{"location": "us-east1", "id": "coiled"}],
                      service_accounts=[{"id": "image-pusher"}])
    sb = make_sandbox(s, propagation_delay_s=delay)
    c = clients(sb)
    email = f"image-pusher@{c.project}.iam.gserviceaccount.com"
    key = json.loads(c.iam.create_service_account_key(
        name=f"projects/{c.project}/serviceAccounts/{email}").private_key_data)
    pusher = clients(sb, key)
    name = f"{parent(c)}/repositories/coiled"
    probe = ["artifactregistry.repositories.uploadArtifacts", "artifactregistry.repositories.downloadArtifacts",
             "artifactregistry.repositories.delete"]

    def repo_granted():
        return sorted(pusher.registry.test_iam_permissions(
            request={"resource": name, "permissions": probe}).permissions)

    assert repo_granted() == []
    policy = repo_policy(c, name)
    policy.bindings.append(policy_pb2.Binding(role="roles/artifactregistry.repoAdmin",
                                              members=[f"serviceAccount:{email}"]))
    c.registry.set_iam_policy(request={"resource": name, "policy": policy})
    t0 = time.monotonic()
    assert repo_granted() == []
    assert wait_until(repo_granted) == ["artifactregistry.repositories.downloadArtifacts",
                                        "artifactregistry.repositories.uploadArtifacts"]
    assert time.monotonic() - t0 >= delay - 0.05
    # Granted on the repository only, not on the project.
    project_level = pusher.projects.test_iam_permissions(resource=f"projects/{c.project}", permissions=probe)
    assert list(project_level.permissions) == []
    # And the repository grant lets it read the repository.
    assert pusher.registry.get_repository(name=name).name == name


# -- operations ------------------------------------------------------------------------------------------------


def test_unknown_operation_not_found(sandbox):
    c = clients(sandbox)
    with pytest.raises(gx.NotFound):
        c.registry.get_operation(operations_pb2.GetOperationRequest(
            name=f"{parent(c)}/operations/0123456789abcdef"))


def test_operation_polled_directly(make_sandbox):
    sb = make_sandbox(with_registry(), operation_s=0.2)
    c = clients(sb)
    op = create_repo(c, "polled")
    name = op.operation.name
    assert name.startswith(f"{parent(c)}/operations/")
    first = c.registry.get_operation(operations_pb2.GetOperationRequest(name=name))
    assert first.done is False
    time.sleep(0.25)
    last = c.registry.get_operation(operations_pb2.GetOperationRequest(name=name))
    assert last.done is True
    repo = artifactregistry_v1.Repository.deserialize(last.response.value)
    assert last.response.type_url.endswith("google.devtools.artifactregistry.v1.Repository")
    assert repo.name == f"{parent(c)}/repositories/polled"


# -- project state -------------------------------------------------------------------------------------------


def test_project_pending_deletion(make_sandbox):
    sb = make_sandbox(with_registry(state="DELETE_REQUESTED",
                                    repositories=[{"location": "us-east1", "id": "coiled"}]))
    c = clients(sb)
    repo = f"{parent(c)}/repositories/coiled"
    project = c.projects.get_project(name=f"projects/{c.project}")
    assert project.state.name == "DELETE_REQUESTED"
    attempts = [
        lambda: c.iam.list_service_accounts(name=f"projects/{c.project}"),
        lambda: c.iam.create_service_account(name=f"projects/{c.project}", account_id="too-late"),
        lambda: c.projects.get_iam_policy(resource=f"projects/{c.project}"),
        lambda: c.projects.test_iam_permissions(resource=f"projects/{c.project}",
                                                permissions=["iam.roles.list"]),
        lambda: c.usage.enable_service(request={"name": service_name(c, "compute.googleapis.com")}),
        lambda: c.registry.list_repositories(parent=parent(c)),
        lambda: create_repo(c),
        lambda: c.registry.get_repository(name=repo),
        lambda: repo_policy(c, repo),
        lambda: c.registry.test_iam_permissions(request={"resource": repo, "permissions": ["a.b.c"]}),
    ]
    for attempt in attempts:
        with pytest.raises(gx.PermissionDenied) as e:
            attempt()
        assert e.value.reason == "CONSUMER_INVALID"
    assert [a for a in state(sb)["service_accounts"] if a.startswith("too-late")] == []
