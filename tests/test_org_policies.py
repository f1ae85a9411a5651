"""Organization policies and VPC Service Controls: the sandbox's Org Policy v2 service and its enforcement, checked
against Google's public shapes, and the wizard's prediction before the first write (end to end, real CLI).

Sources:
- Org Policy v2 reference (OrgPolicyClient: GetEffectivePolicy, GetPolicy, CreatePolicy, UpdatePolicy, DeletePolicy;
  PolicySpec rules of values, allow_all, deny_all, enforce; inherit_from_parent, reset).
- Key creation refused: public gcloud transcripts (google/create-service-account #21, GaloyMoney/galoy-infra #242):
  FAILED_PRECONDITION "Key creation is not allowed on this service account.", PreconditionFailure violation of type
  constraints/iam.disableServiceAccountKeyCreation; organizations created since 3 May 2024 enforce the managed
  iam.managed.disableServiceAccountKeyCreation (hashicorp-education/learn-terraform-google-workspace #9).
- Locations refused: firebase/firebase-tools #6454: FAILED_PRECONDITION "Constraint constraints/gcp.resourceLocations
  violated for [orgpolicy:projects/NUMBER] attempting to create a secret in [global]. ...", violation type
  constraints/gcp.resourceLocations, subject orgpolicy:projects/NUMBER.
- Domain restricted sharing: terraform-google-modules/terraform-example-foundation #1454, MicrosoftDocs/azure-docs
  #117449: FAILED_PRECONDITION "One or more users named in the policy do not belong to a permitted customer.",
  violation subject orgpolicy:projects/PID?configvalue=EMAIL, description "User EMAIL is not in permitted
  organization.".
- VPC Service Controls: cloudquery/cloudquery #1062: PERMISSION_DENIED "Request is prohibited by organization's
  policy. vpcServiceControlsUniqueIdentifier: UID", PreconditionFailure violation type VPC_SERVICE_CONTROLS, ErrorInfo
  reason SECURITY_POLICY_VIOLATED (domain googleapis.com, metadata service, uid, consumer).
"""

import copy
import json

import pytest
import yaml
from google.api_core import exceptions as gx
from google.cloud.orgpolicy_v2 import types as op
from google.rpc import error_details_pb2

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from coiled_setup.sandbox.world import DEFAULT_SERVICES
from tests.helpers import calls, clients

P = "coiled-demo"
ARGS = ("gcp", "--non-interactive", "--yes")
CUSTOMER = "C01abc234"


def scenario(policies=None, perimeter=None, **project) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update(project)
    s["organization"] = {"id": "123456789", "customer_id": CUSTOMER, "domain": "example.com",
                         "policies": policies or {}}
    # The tests set project-level policies as the operator: an owner may not, an organization policy admin may.
    s["operator"]["roles"] = ["roles/owner", "roles/orgpolicy.policyAdmin"]
    if perimeter:
        s["perimeter"] = perimeter
    return s


def writes(sb, since=0):
    return [c for c in calls(sb, since) if c["write"]]


def _detail(err, cls):
    return next(d for d in err.details if isinstance(d, cls))


# -- the sandbox service, through the real client ---------------------------------------------------------------

@pytest.fixture(scope="module")
def org(tmp_path_factory):
    from coiled_setup.sandbox import Config, Sandbox

    sb = Sandbox(scenario({"iam.managed.disableServiceAccountKeyCreation": {"enforce": True},
                           "gcp.resourceLocations": {"allowed_values": ["in:eu-locations"]},
                           "iam.allowedPolicyMemberDomains": {"allowed_values": [CUSTOMER]}},
                          service_accounts=[{"id": "coiled"}],
                          services=[*DEFAULT_SERVICES, "artifactregistry.googleapis.com"]),
                 Config(), state_dir=tmp_path_factory.mktemp("org")).start()
    yield sb
    sb.stop()


def test_effective_policies_are_inherited_from_the_organization(org):
    c = clients(org)
    eff = c.orgpolicy.get_effective_policy(name=f"projects/{P}/policies/iam.managed.disableServiceAccountKeyCreation")
    assert [r.enforce for r in eff.spec.rules] == [True]
    loc = c.orgpolicy.get_effective_policy(name=f"projects/{P}/policies/gcp.resourceLocations")
    assert list(loc.spec.rules[0].values.allowed_values) == ["in:eu-locations"]
    # Nothing set anywhere: no rules (the constraint's default).
    assert not c.orgpolicy.get_effective_policy(name=f"projects/{P}/policies/compute.vmExternalIpAccess").spec.rules
    with pytest.raises(gx.NotFound):
        c.orgpolicy.get_policy(name=f"projects/{P}/policies/gcp.resourceLocations")


def test_key_creation_refused_with_the_managed_constraint_named(org):
    c = clients(org)
    email = f"coiled@{P}.iam.gserviceaccount.com"
    with pytest.raises(gx.FailedPrecondition) as e:
        c.iam.create_service_account_key(name=f"projects/{P}/serviceAccounts/{email}")
    assert e.value.message == "Key creation is not allowed on this service account."
    v = _detail(e.value, error_details_pb2.PreconditionFailure).violations
    assert [(x.type, x.subject) for x in v] == [
        ("constraints/iam.managed.disableServiceAccountKeyCreation",
         f"projects/{P}/serviceAccounts/{email}?configvalue={email.replace('@', '%40')}")]


def test_repository_outside_the_allowed_locations_is_refused(org):
    c = clients(org)
    with pytest.raises(gx.FailedPrecondition) as e:
        c.registry.create_repository(parent=f"projects/{P}/locations/us-east1", repository_id="r1",
                                     repository={"format_": 1})
    v = _detail(e.value, error_details_pb2.PreconditionFailure).violations[0]
    assert v.type == "constraints/gcp.resourceLocations" and v.subject == "orgpolicy:projects/123456789012"
    assert "attempting to create a repository in [us-east1]" in e.value.message


def test_granting_outside_the_allowed_customers_is_refused(org):
    c = clients(org)
    pol = c.projects.get_iam_policy(request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})
    pol.bindings.add(role="roles/viewer", members=["user:eve@elsewhere.example"])
    with pytest.raises(gx.FailedPrecondition) as e:
        c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": pol})
    assert e.value.message == "One or more users named in the policy do not belong to a permitted customer."
    v = _detail(e.value, error_details_pb2.PreconditionFailure).violations[0]
    assert (v.type, v.subject, v.description) == (
        "constraints/iam.allowedPolicyMemberDomains", f"orgpolicy:projects/{P}?configvalue=eve@elsewhere.example",
        "User eve@elsewhere.example is not in permitted organization.")
    # A member of the organization's own domain is granted.
    pol = c.projects.get_iam_policy(request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})
    pol.bindings.add(role="roles/viewer", members=["user:bob@example.com"])
    c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": pol})


def test_project_policy_create_get_update_delete_and_its_enforcement(org):
    c = clients(org)
    name = f"projects/{P}/policies/gcp.resourceLocations"
    made = c.orgpolicy.create_policy(parent=f"projects/{P}", policy=op.Policy(name=name, spec=op.PolicySpec(
        inherit_from_parent=True,
        rules=[op.PolicySpec.PolicyRule(values=op.PolicySpec.PolicyRule.StringValues(
            allowed_values=["in:us-west1-locations"]))])))
    assert made.etag
    with pytest.raises(gx.AlreadyExists):
        c.orgpolicy.create_policy(parent=f"projects/{P}", policy=op.Policy(name=name, spec=op.PolicySpec()))
    eff = c.orgpolicy.get_effective_policy(name=name)
    assert set(eff.spec.rules[0].values.allowed_values) == {"in:eu-locations", "in:us-west1-locations"}
    op_ = c.registry.create_repository(parent=f"projects/{P}/locations/us-west1", repository_id="r2",
                                       repository={"format_": 1})
    assert op_.operation.name
    got = c.orgpolicy.get_policy(name=name)
    got.spec.rules[0].values.allowed_values.append("in:us-east1-locations")
    with pytest.raises(gx.Aborted):  # a stale etag
        c.orgpolicy.update_policy(policy=op.Policy(name=name, spec=got.spec, etag="stale"))
    updated = c.orgpolicy.update_policy(policy=op.Policy(name=name, spec=got.spec, etag=got.etag))
    assert updated.etag != got.etag
    c.orgpolicy.delete_policy(name=name)
    with pytest.raises(gx.NotFound):
        c.orgpolicy.get_policy(name=name)


def test_vpc_service_controls_refuse_with_googles_shape(make_sandbox):
    sb = make_sandbox(scenario(perimeter=["cloudresourcemanager.googleapis.com"]))
    c = clients(sb)
    with pytest.raises(gx.PermissionDenied) as e:
        c.projects.get_project(name=f"projects/{P}")
    assert e.value.message.startswith("Request is prohibited by organization's policy. "
                                      "vpcServiceControlsUniqueIdentifier: ")
    assert e.value.reason == "SECURITY_POLICY_VIOLATED"
    assert [v.type for v in _detail(e.value, error_details_pb2.PreconditionFailure).violations] == [
        "VPC_SERVICE_CONTROLS"]


# -- the wizard: predicted before the first write ---------------------------------------------------------------

def test_key_policy_is_predicted_before_any_write_and_its_exception_lets_the_rerun_through(make_sandbox, cli,
                                                                                          tmp_path):
    sb = make_sandbox(scenario({"iam.managed.disableServiceAccountKeyCreation": {"enforce": True}}))
    out = cli(sb, *ARGS, check=5)
    assert writes(sb) == []
    err = out.stdout + out.stderr
    assert "constraints/iam.managed.disableServiceAccountKeyCreation" in err and "forbids creating" in err
    assert "roles/orgpolicy.policyAdmin" in err and "gcloud org-policies set-policy" in err
    assert "nothing was changed" in err
    path = next(tmp_path.rglob("iam.managed.disableServiceAccountKeyCreation.yaml"))
    assert path.parent.name == P and path.parent.parent.name == "org-policies"
    doc = yaml.safe_load(path.read_text())
    assert doc == {"name": f"projects/{P}/policies/iam.managed.disableServiceAccountKeyCreation",
                   "spec": {"rules": [{"enforce": False}]}}
    # What `gcloud org-policies set-policy FILE` does with it, through the real client (JSON names as in the file).
    c = clients(sb)
    c.orgpolicy.create_policy(parent=f"projects/{P}", policy=op.Policy.from_json(json.dumps(doc)))
    cli(sb, *ARGS, check=0)
    assert any(x["method"] == "CreateServiceAccountKey" and x["code"] == "OK" for x in calls(sb))
    # The policy file sits beside the key directory.
    assert (path.parent.parent.parent / "keys" / P / "coiled.json").exists()


def test_legacy_key_policy_on_an_existing_key_does_not_block(make_sandbox, cli):
    sb = make_sandbox(scenario())
    cli(sb, *ARGS, check=0)  # the key exists now
    c = clients(sb)
    c.orgpolicy.create_policy(parent=f"projects/{P}", policy=op.Policy(
        name=f"projects/{P}/policies/iam.disableServiceAccountKeyCreation",
        spec=op.PolicySpec(rules=[op.PolicySpec.PolicyRule(enforce=True)])))
    out = cli(sb, *ARGS, check=0)
    assert "iam.disableServiceAccountKeyCreation forbids" in out.stdout  # said, as a warning


def test_region_outside_allowed_locations_blocks_dry_run_and_run_alike(make_sandbox, cli, tmp_path):
    sb = make_sandbox(scenario({"gcp.resourceLocations": {"allowed_values": ["in:us-central1-locations"]},
                                "compute.vmExternalIpAccess": {"deny_all": True}}))
    dry = cli(sb, *ARGS, "--dry-run", check=5)
    out = cli(sb, *ARGS, check=5)
    assert writes(sb) == []
    for text in (dry.stdout, out.stdout):
        assert "constraints/gcp.resourceLocations does not allow region us-east1" in text
        assert "constraints/compute.vmExternalIpAccess refuses external IP" in text
    doc = yaml.safe_load(next(tmp_path.rglob("gcp.resourceLocations.yaml")).read_text())
    assert doc["spec"] == {"inheritFromParent": True,
                           "rules": [{"values": {"allowedValues": ["in:us-east1-locations"]}}]}
    # The external-IP constraint stops Coiled's clusters, not this setup: no file for it.
    assert not list(tmp_path.rglob("compute.vmExternalIpAccess.yaml"))
    # review --project reports the same findings, read-only.
    review = json.loads(cli(sb, "review", "--project", P, "--format", "json", check=0).stdout)
    assert writes(sb) == []
    found = {p["constraint"]: p for p in review["org_policies"]}
    assert {c: p["in_force"] for c, p in found.items()} == {
        "constraints/iam.disableServiceAccountKeyCreation": False,
        "constraints/iam.managed.disableServiceAccountKeyCreation": False,
        "constraints/gcp.resourceLocations": True, "constraints/compute.vmExternalIpAccess": True,
        "constraints/iam.allowedPolicyMemberDomains": None}
    assert found["constraints/gcp.resourceLocations"]["exception"]["spec"] == doc["spec"]
    assert "the run stops before its first change" in found["constraints/gcp.resourceLocations"]["finding"]
    assert "a warning; the run goes on" in found["constraints/compute.vmExternalIpAccess"]["finding"]
    # In a region the organization allows, the run goes through.
    cli(sb, *ARGS, "--region", "us-central1", check=0)
    v = json.loads(cli(sb, "verify", "--output", "json", check=None).stdout)
    check = next(x for x in v["checks"] if x["name"] == "org_policies")
    assert check["status"] == "warning" and check["data"]["constraints"] == ["compute.vmExternalIpAccess"]


def test_operator_who_cannot_read_org_policies_is_told_the_check_was_skipped(make_sandbox, cli):
    s = scenario({"iam.disableServiceAccountKeyCreation": {"enforce": False}})
    from coiled_setup import steps
    from coiled_setup.options import Options

    # Exactly what a run needs, and nothing of Org Policy's.
    s["projects"][0]["roles"] = [{"id": "setup", "permissions": steps.operator_permissions(Options(project=P))}]
    s["operator"]["roles"] = [f"projects/{P}/roles/setup"]
    sb = make_sandbox(s)
    out = cli(sb, *ARGS, check=0)
    assert "Skipped the check of organization policies" in out.stdout and "orgpolicy.policy.get" in out.stdout
    v = json.loads(cli(sb, "verify", "--output", "json", check=None).stdout)
    assert next(x for x in v["checks"] if x["name"] == "org_policies")["status"] == "skipped"


def test_vpc_service_controls_are_one_sentence_at_a_step_too(make_sandbox, cli):
    sb = make_sandbox(scenario(perimeter=["artifactregistry.googleapis.com", "orgpolicy.googleapis.com"]))
    out = cli(sb, *ARGS, check=1)
    assert "perimeter refused the call to the Org Policy API" in out.stdout
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "VPC Service Controls perimeter refused this machine's call to " \
        "artifactregistry.googleapis.com" in err[0] and "network administrator" in err[0]


def test_vpc_service_controls_are_one_sentence_in_preflight(make_sandbox, cli):
    sb = make_sandbox(scenario(perimeter=["cloudresourcemanager.googleapis.com"]))
    out = cli(sb, *ARGS, check=1)
    assert "VPC Service Controls perimeter refused" in out.stderr and "network administrator" in out.stderr
    assert "does not exist" not in out.stderr and writes(sb) == []


# -- enterprise credentials ----------------------------------------------------------------------------------------

def _user_adc(tmp_path, monkeypatch, **extra):
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir(parents=True)
    (gcloud / "application_default_credentials.json").write_text(json.dumps({
        "type": "authorized_user", "client_id": "id.apps.googleusercontent.com", "client_secret": "s",
        "refresh_token": "r", **extra}))
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_QUOTA_PROJECT", "COILED_SETUP_GOOGLE_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))


def test_user_credentials_get_the_target_project_as_quota_project_without_googles_raw_warning(tmp_path, monkeypatch):
    import warnings

    from coiled_setup.cloud import Google

    _user_adc(tmp_path, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # google-auth's UserWarning would raise here
        g = Google.from_environment()
    assert g.use_quota_project(P) == P and g.credentials.quota_project_id == P
    # Already set: the ADC file's quota_project_id, or GOOGLE_CLOUD_QUOTA_PROJECT, is kept.
    _user_adc(tmp_path / "b", monkeypatch, quota_project_id="billing-proj")
    g = Google.from_environment()
    assert g.use_quota_project(P) == "" and g.credentials.quota_project_id == "billing-proj"
    _user_adc(tmp_path / "c", monkeypatch)
    monkeypatch.setenv("GOOGLE_CLOUD_QUOTA_PROJECT", "env-proj")
    g = Google.from_environment()
    assert g.use_quota_project(P) == "" and g.credentials.quota_project_id == "env-proj"


DEPLOYER = f"deployer@{P}.iam.gserviceaccount.com"


def _deployer_scenario(operator_roles):
    s = scenario(service_accounts=[{"id": "deployer"}])
    s["projects"][0]["bindings"].append({"role": "roles/owner", "members": [f"serviceAccount:{DEPLOYER}"]})
    s["operator"]["roles"] = operator_roles
    return s


def test_impersonated_run_calls_google_as_the_impersonated_account(make_sandbox, cli):
    sb = make_sandbox(_deployer_scenario(["roles/iam.serviceAccountTokenCreator"]))
    out = cli(sb, *ARGS, "--impersonate-service-account", DEPLOYER, check=0)
    assert f"as {DEPLOYER}" in out.stdout
    google = [x for x in calls(sb) if x["service"] not in ("coiled", "iamcredentials")]
    # Every operator call is the impersonated account's (the new key of Coiled's account is checked as itself).
    assert google and {x["caller"] for x in google} == {DEPLOYER, f"coiled@{P}.iam.gserviceaccount.com"}
    minted = [x for x in calls(sb) if x["service"] == "iamcredentials"]
    assert minted and {(x["caller"], x["code"]) for x in minted} == {(sb.operator_email, "OK")}
    # verify too, through gcloud's property this time.
    gcloud = sb.state_dir / "gcloud-config"
    (gcloud / "configurations").mkdir(parents=True)
    (gcloud / "configurations" / "config_default").write_text(f"[auth]\nimpersonate_service_account = {DEPLOYER}\n")
    mark = len(calls(sb))
    cli(sb, "verify", env={"CLOUDSDK_CONFIG": str(gcloud)}, check=None)
    assert {x["caller"] for x in calls(sb, mark) if x["service"] not in ("coiled", "iamcredentials")} <= {
        DEPLOYER, f"coiled@{P}.iam.gserviceaccount.com"}
    # rotate-key and teardown take the flag too: every operator call is the impersonated account's.
    for args in (("rotate-key", "--non-interactive", "--yes"), ("teardown", "--non-interactive", "--yes")):
        mark = len(calls(sb))
        cli(sb, *args, "--impersonate-service-account", DEPLOYER, check=0)
        made = [x for x in calls(sb, mark) if x["service"] not in ("coiled", "iamcredentials")]
        assert made and {x["caller"] for x in made} <= {DEPLOYER, f"coiled@{P}.iam.gserviceaccount.com"}
        assert DEPLOYER in {x["caller"] for x in made if x["write"]}


def test_impersonation_without_the_token_creator_role_is_one_sentence(make_sandbox, cli):
    sb = make_sandbox(_deployer_scenario(["roles/viewer"]))
    out = cli(sb, *ARGS, "--impersonate-service-account", DEPLOYER, check=2)
    assert "roles/iam.serviceAccountTokenCreator" in out.stderr and DEPLOYER in out.stderr
    assert not [c for c in calls(sb) if c["write"]]


def test_gclouds_compute_region_and_zone_are_the_defaults(make_sandbox, cli, tmp_path):
    sb = make_sandbox(scenario())
    gcloud = tmp_path / "gcloud-config"
    (gcloud / "configurations").mkdir(parents=True)
    (gcloud / "configurations" / "config_default").write_text("[compute]\nregion = us-central1\nzone = us-central1-f\n")
    cli(sb, *ARGS, "--no-upload", env={"CLOUDSDK_CONFIG": str(gcloud)}, check=0)
    assert any(x["method"] == "CreateRepository" and "/locations/us-central1" in x["resource"] for x in calls(sb))
    recorded = json.loads((sb.state_dir / "home" / "state" / f"journal-{P}.json").read_text())
    assert json.dumps(recorded).count("us-central1-f") >= 1
