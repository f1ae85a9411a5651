"""What the organization's policies will block, predicted before the first write, and the narrowest exception.

Reads the effective Org Policy v2 policy of each constraint that breaks a Coiled setup; a finding that blocks this
run comes with a project-level exception (a v2 policy file for `gcloud org-policies set-policy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coiled_setup import paths
from coiled_setup.cloud import CloudError, PermissionDenied

KEY_LEGACY = "iam.disableServiceAccountKeyCreation"
KEY_MANAGED = "iam.managed.disableServiceAccountKeyCreation"
DOMAINS = "iam.allowedPolicyMemberDomains"
LOCATIONS = "gcp.resourceLocations"
EXTERNAL_IP = "compute.vmExternalIpAccess"
CONSTRAINTS = (KEY_LEGACY, KEY_MANAGED, LOCATIONS, EXTERNAL_IP)
ADMIN_ROLE = "roles/orgpolicy.policyAdmin"
READ_PERMISSION = "orgpolicy.policy.get"
# Google's value groups, by the first part of a region's name.
_GROUPS = {"us": "us", "northamerica": "northamerica", "europe": "eu", "asia": "asia", "australia": "australia",
           "southamerica": "southamerica", "me": "me", "africa": "africa"}


@dataclass
class Finding:
    constraint: str
    what: str  # what it blocks, as a sentence fragment
    blocks: bool  # blocks this run (else: it will block Coiled's clusters later, or only warns)
    exception: dict = field(default_factory=dict)  # the project-level v2 policy that lifts it
    file: Path | None = None

    def sentence(self, project: str) -> str:
        lift = (f"someone with {ADMIN_ROLE} on the organization or folder can exempt project {project} with "
                f"`gcloud org-policies set-policy {self.file}`" if self.file else
                f"someone with {ADMIN_ROLE} on the organization or folder can exempt project {project}")
        return f"The organization policy constraints/{self.constraint} {self.what}: {lift}."


def read(g, project: str, also: tuple[str, ...] = ()) -> tuple[dict[str, list[dict]], str]:
    """The effective rules of each constraint (and of `also`), and why the check was skipped ("" when it was
    not)."""
    from coiled_setup.concurrency import run_all

    def one(c):
        try:
            return g.effective_org_policy(project, c), None
        except CloudError as e:
            return None, e

    constraints = (*CONSTRAINTS, *also)
    results = run_all([lambda c=c: one(c) for c in constraints])
    errors = [e for _, e in results if e is not None]
    if errors:
        return {}, skipped_reason(errors[0], g.principal, project)
    return {c: rules for c, (rules, _) in zip(constraints, results, strict=True)}, ""


def skipped_reason(e: CloudError, principal: str, project: str) -> str:
    from coiled_setup.remedies import vpc_refusal

    who = principal or "your account"
    if vpc_refusal(e):
        return "a VPC Service Controls perimeter refused the call to the Org Policy API"
    if e.service_disabled:
        where = e.metadata.get("consumer", f"projects/{project}").split("/", 1)[-1]
        return (f"the Org Policy API is disabled in project {where} (gcloud services enable orgpolicy.googleapis.com "
                f"--project {where})")
    if isinstance(e, PermissionDenied):
        return f"{who} cannot read organization policies (it lacks {READ_PERMISSION}, in roles/orgpolicy.policyViewer)"
    return f"Google answered {e.code} reading organization policies"


def enforced(rules: list[dict]) -> bool:
    return any(r.get("enforce") for r in rules)


def allows(rules: list[dict], matches) -> bool:
    if not rules or any(r.get("allow_all") for r in rules):
        return not any(r.get("deny_all") for r in rules)
    if any(r.get("deny_all") for r in rules):
        return False
    allowed = [v for r in rules for v in r.get("allowed_values", [])]
    denied = [v for r in rules for v in r.get("denied_values", [])]
    if any(matches(v) for v in denied):
        return False
    return not allowed or any(matches(v) for v in allowed)


def region_value(region: str) -> str:
    return f"in:{region}-locations"


def region_allowed(rules: list[dict], region: str) -> bool:
    group = _GROUPS.get(region.split("-", 1)[0], "")
    covered = {region, region_value(region), f"in:{group}-locations" if group else ""}
    return allows(rules, lambda v: v in covered)


def _policy(project: str, constraint: str, spec: dict) -> dict:
    return {"name": f"projects/{project}/policies/{constraint}", "spec": spec}


def findings(effective: dict[str, list[dict]], project: str, region: str, *, key_needed: bool,
             repository_needed: bool, registry_regions: tuple[str, ...] = (), log_sink: str = "") -> list[Finding]:
    """What the policies in force block: this run (key, repositories) or Coiled's clusters later.

    `region` is the cluster region (its repository too when `repository_needed`); `registry_regions` the other
    regions that get a repository. `log_sink`: how this run treats the grant Coiled's log sink needs ("" when
    Coiled sets up no sink for it)."""
    out = []
    for c in (KEY_LEGACY, KEY_MANAGED):
        if enforced(effective.get(c, [])):
            out.append(Finding(c, "forbids creating service-account keys, and Coiled needs a key of its account",
                               key_needed, _policy(project, c, {"rules": [{"enforce": False}]})))
    locations = effective.get(LOCATIONS, [])
    refused = [r for r in dict.fromkeys((region, *registry_regions)) if not region_allowed(locations, r)]
    if refused == [region]:
        what = (f"does not allow region {region}, where the Artifact Registry repository goes and Coiled's clusters "
                "run" if repository_needed else f"does not allow region {region}, where Coiled's clusters run")
    elif refused:  # a registry region of its own: one finding (one exception file) names every refused region
        what = (f"does not allow region{'s' if len(refused) > 1 else ''} {' and '.join(refused)}, where Coiled's "
                "Artifact Registry repositories go" + (" and its clusters run" if region in refused else ""))
    if refused:
        out.append(Finding(LOCATIONS, what, repository_needed or refused != [region], _policy(project, LOCATIONS, {
            "inheritFromParent": True, "rules": [{"values": {"allowedValues": [region_value(r) for r in refused]}}]})))
    if not allows(effective.get(EXTERNAL_IP, []), lambda v: False):
        out.append(Finding(EXTERNAL_IP, "refuses external IP addresses, which Coiled gives its VMs by default, so "
                                        "clusters would fail to start", False,
                           _policy(project, EXTERNAL_IP, {"rules": [{"allowAll": True}]})))
    if log_sink and not allows(effective.get(DOMAINS, []), lambda v: False):
        # The sink's writer identity is Google's own account: no customer id of the organization covers it.
        out.append(Finding(DOMAINS, "refuses roles to accounts outside the organization, such as the Google-managed "
                                    "writer identity of the log sink Coiled makes for cluster logs, so they would "
                                    f"not reach BigQuery; {log_sink}", False,
                           _policy(project, DOMAINS, {"rules": [{"allowAll": True}]})))
    return out


def exception_path(project: str, constraint: str) -> Path:
    """Beside the key directory: CONFIG/org-policies/PROJECT/CONSTRAINT.yaml."""
    return paths.config_dir() / "org-policies" / project / f"{constraint}.yaml"


def write_exception(project: str, f: Finding) -> Path:
    import yaml

    path = exception_path(project, f.constraint)
    # Private like every file the tool writes (it names the project and the organization's rules).
    paths.write_private(path, yaml.safe_dump(f.exception, sort_keys=False))
    f.file = path
    return path
