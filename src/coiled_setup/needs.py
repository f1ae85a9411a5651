"""What Coiled needs in a project, declared once: the wizard's steps make it, verify's checks look for it."""

from __future__ import annotations

from coiled_setup import role_templates

IAM = "iam.googleapis.com"
RESOURCE_MANAGER = "cloudresourcemanager.googleapis.com"
COMPUTE = "compute.googleapis.com"
ARTIFACT_REGISTRY = "artifactregistry.googleapis.com"
# Coiled's cluster logs and metrics: the services Coiled's own `coiled setup gcp` enables beside compute.
LOGGING = "logging.googleapis.com"
MONITORING = "monitoring.googleapis.com"
BIGQUERY = "bigquery.googleapis.com"
# Every call the tool makes goes through these two: they must be on before anything else.
CORE_SERVICES = (IAM, RESOURCE_MANAGER)

REPO_ROLE = "roles/artifactregistry.repoAdmin"
# What Coiled does with the repository, tested as the account on the repository itself.
REPO_PERMISSIONS = ("artifactregistry.repositories.uploadArtifacts",
                    "artifactregistry.repositories.downloadArtifacts")

# The instance account needs to write its cluster's logs, and nothing more.
LOG_PERMISSION = "logging.logEntries.create"
# Predefined roles known to include logging.logEntries.create (read from Google otherwise).
LOG_WRITING_ROLES = frozenset({"roles/owner", "roles/editor", "roles/logging.logWriter", "roles/logging.admin"})


def services(gar: bool, bigquery: bool = True) -> list[str]:
    """The APIs the setup enables (beyond the core ones), as Coiled's own setup does; compute first, so that a
    project without billing is refused before anything else changes."""
    return [COMPUTE, LOGGING, MONITORING] + ([BIGQUERY] if bigquery else []) + ([ARTIFACT_REGISTRY] if gar else [])


def control_role() -> role_templates.RoleTemplate:
    return role_templates.load(role_templates.CONTROL_PLANE)


def instance_role() -> role_templates.RoleTemplate:
    return role_templates.load(role_templates.INSTANCE)


def role_diff(template: role_templates.RoleTemplate, have) -> tuple[list[str], list[str]]:
    """The template's permissions a role lacks (in template order), and those it has beyond it (sorted)."""
    have = set(have)
    want = template.permissions
    return [p for p in want if p not in have], sorted(have - set(want))


def bound_roles(policy, member: str) -> list[str]:
    """Roles granted to `member` without a condition (a conditional grant is not what Coiled needs)."""
    return [b.role for b in policy.bindings if b.condition is None and member in b.members]


def conditional_roles(policy, member: str) -> list[tuple[str, dict]]:
    return [(b.role, b.condition) for b in policy.bindings if b.condition is not None and member in b.members]


def holds(policy, role: str, member: str) -> bool:
    return role in bound_roles(policy, member)
