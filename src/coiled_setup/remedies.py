"""One sentence per Google refusal: what is wrong and what to do."""

from __future__ import annotations

import os

from coiled_setup.cloud import (
    CloudError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Transient,
    Unauthenticated,
    Unreachable,
)
from coiled_setup.errors import MISSING_PERMISSION, STEP_FAILED
from coiled_setup.wording import count

# Set while a command runs against the embedded sandbox (gcp --sandbox, verify --sandbox).
SANDBOX_VAR = "COILED_SETUP_SANDBOX"


def command(sub: str) -> str:
    """`coiled-setup SUB` as the user must type it now: with --sandbox when this run rehearses."""
    return f"coiled-setup {sub}" + (" --sandbox" if os.environ.get(SANDBOX_VAR) else "")


# The predefined role to ask for, by permission prefix.
GRANTING_ROLES = [
    ("iam.serviceAccountKeys.", "roles/iam.serviceAccountKeyAdmin"),
    ("iam.serviceAccounts.", "roles/iam.serviceAccountAdmin"),
    ("iam.roles.", "roles/iam.roleAdmin"),
    ("resourcemanager.projects.setIamPolicy", "roles/resourcemanager.projectIamAdmin"),
    ("resourcemanager.projects.getIamPolicy", "roles/resourcemanager.projectIamAdmin"),
    ("resourcemanager.projects.get", "roles/browser"),
    ("serviceusage.services.", "roles/serviceusage.serviceUsageAdmin"),
    ("artifactregistry.", "roles/artifactregistry.admin"),
]


def granting_role(permission: str) -> str:
    for prefix, role in GRANTING_ROLES:
        if permission.startswith(prefix):
            return role
    return "roles/owner"


def missing_permissions_sentence(principal: str, project: str, missing: list[str]) -> str:
    by_role: dict[str, list[str]] = {}
    for p in missing:
        by_role.setdefault(granting_role(p), []).append(p)
    parts = "; ".join(f"{role} grants {', '.join(perms)}" for role, perms in by_role.items())
    return (f"{principal or 'Your account'} lacks {count(len(missing), 'permission')} needed in project {project} "
            f"({parts}): ask a project owner for those roles and run again; nothing was changed.")


def vpc_refusal(e: CloudError) -> bool:
    """A VPC Service Controls perimeter said no (ErrorInfo reason, or the PreconditionFailure violation type)."""
    return e.reason == "SECURITY_POLICY_VIOLATED" or "VPC_SERVICE_CONTROLS" in e.violations


def _service_disabled(e: CloudError, project: str) -> str:
    """Names the project Google named (its `consumer`), which with a quota project is not the target project."""
    svc = e.metadata.get("service", "an API")
    number = e.metadata.get("consumer", "").rsplit("/", 1)[-1]
    known = e.project_numbers.get(project)
    quota = e.quota_project if e.quota_project != project else ""
    differs = bool(number) and number != project and (number != known if known else bool(quota))
    if not differs:
        return (f"The API {svc} is disabled in project {project}: enable it (gcloud services enable {svc} "
                f"--project {project}) and run again.")
    if quota:
        named = quota if number == quota else f"{quota} (number {number})"
        return (f"The API {svc} is disabled in project {named}, the quota project your credentials bill their calls "
                f"to, not {project}: enable it there (gcloud services enable {svc} --project {quota}), or choose "
                f"another quota project (GOOGLE_CLOUD_QUOTA_PROJECT, or quota_project_id in the application default "
                f"credentials file: gcloud auth application-default set-quota-project {project}), and run again.")
    return (f"The API {svc} is disabled in project {number}, which Google charged this call to (the project of your "
            f"credentials, not {project}): enable it there (gcloud services enable {svc} --project {number}), or "
            f"set GOOGLE_CLOUD_QUOTA_PROJECT={project}, and run again.")


def explain(e: CloudError, project: str) -> tuple[str, int]:
    """(sentence, exit code) for a Google error a step could not get past."""
    if isinstance(e, Unreachable):  # already one sentence: where, for how long, what to check
        return e.message, STEP_FAILED
    if vpc_refusal(e):
        svc = e.metadata.get("service") or "a Google API"
        uid = e.metadata.get("uid") or ""
        return (f"A VPC Service Controls perimeter refused this machine's call to {svc}"
                + (f" (vpcServiceControlsUniqueIdentifier {uid})" if uid else "")
                + f": ask your network administrator to let this machine or your account into the perimeter around "
                f"project {project} (an access level or ingress rule), or run from inside it, then run again.",
                STEP_FAILED)
    if e.service_disabled:
        return _service_disabled(e, project), STEP_FAILED
    if e.reason == "USER_PROJECT_DENIED":
        quota = e.quota_project or e.metadata.get("consumer", "").rsplit("/", 1)[-1] or "your quota project"
        return (f"Google refused the quota project your credentials name, {quota}: it does not exist or your account "
                "lacks serviceusage.services.use there (granted by roles/serviceusage.serviceUsageConsumer), so ask "
                "for that role on it, or choose another quota project (GOOGLE_CLOUD_QUOTA_PROJECT, or "
                f"quota_project_id in the application default credentials file), then run again.", MISSING_PERMISSION)
    if e.reason == "UREQ_PROJECT_BILLING_NOT_FOUND":
        svc = e.metadata.get("services", "the APIs Coiled needs")
        return (f"Project {project} has no billing account, which Google requires before enabling {svc}: link "
                f"one (gcloud billing projects link {project} --billing-account=ACCOUNT_ID) and run again.",
                STEP_FAILED)
    constraints = [v for v in e.violations if v.startswith("constraints/")]
    if isinstance(e, FailedPrecondition) and constraints:
        return (f"The organization policy {constraints[0]} refused this ({e.message.rstrip('.')}): someone with "
                f"roles/orgpolicy.policyAdmin on the organization or folder can exempt project {project}, then run "
                "again.", STEP_FAILED)
    if isinstance(e, PermissionDenied) and e.permission:
        return (f"Google refused: your account lacks {e.permission} (granted by {granting_role(e.permission)}) "
                f"in project {project}; ask a project owner for it and run again.", MISSING_PERMISSION)
    if e.reason == "IMPERSONATION":
        return (f"Google refused to let your credentials act as {e.metadata.get('target', 'the account')}: they "
                "need roles/iam.serviceAccountTokenCreator on that account, so ask an administrator for it (or drop "
                "--impersonate-service-account and gcloud's auth/impersonate_service_account), then run again.",
                STEP_FAILED)
    if isinstance(e, Unauthenticated):
        return (f"Google did not accept your credentials ({e.message}): run `gcloud auth application-default "
                "login` or point GOOGLE_APPLICATION_CREDENTIALS at a valid key.", STEP_FAILED)
    if isinstance(e, InvalidArgument) and "number of members in the policy" in e.message:
        return (f"The IAM policy of project {project} is full (Google allows 1,500 principals in one policy, each "
                "binding counted): remove principals nobody needs, or grant roles to a group instead of to "
                "individual accounts, and run again.", STEP_FAILED)
    if isinstance(e, Transient):
        return (f"Google kept answering {e.code} ({e.message}): check your connection and run again; "
                "the run resumes where it stopped.", STEP_FAILED)
    return f"Google answered {e.code}: {e.message.rstrip('.')}.", STEP_FAILED
