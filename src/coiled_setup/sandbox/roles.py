"""Predefined roles the sandbox knows, and permission matching."""

from __future__ import annotations

# Only what the wizard, verify and their tests touch; permissions may end in ".*"; one starting with "!" is
# left out of what the others grant.
PREDEFINED_ROLES: dict[str, list[str]] = {
    # Everything but setting organization policies, as on Google: that takes roles/orgpolicy.policyAdmin.
    "roles/owner": ["*", "!orgpolicy.policies.*"],
    "roles/editor": [
        "iam.serviceAccounts.*",
        "iam.serviceAccountKeys.*",
        "iam.roles.get",
        "iam.roles.list",
        "resourcemanager.projects.get",
        "resourcemanager.projects.getIamPolicy",
        "serviceusage.services.*",
        "artifactregistry.repositories.create",
        "artifactregistry.repositories.get",
        "artifactregistry.repositories.list",
        "artifactregistry.repositories.delete",
        "artifactregistry.repositories.getIamPolicy",
        "compute.*",
        "logging.*",
        "storage.*",
        "bigquery.*",
        "orgpolicy.policy.get",
    ],
    "roles/viewer": [
        "iam.serviceAccounts.get",
        "iam.serviceAccounts.list",
        "iam.serviceAccountKeys.get",
        "iam.serviceAccountKeys.list",
        "iam.roles.get",
        "iam.roles.list",
        "resourcemanager.projects.get",
        "resourcemanager.projects.getIamPolicy",
        "serviceusage.services.get",
        "serviceusage.services.list",
        "artifactregistry.repositories.get",
        "artifactregistry.repositories.list",
        "artifactregistry.repositories.getIamPolicy",
        "orgpolicy.policy.get",
    ],
    "roles/orgpolicy.policyViewer": ["orgpolicy.policy.get", "orgpolicy.policies.list", "orgpolicy.constraints.list"],
    "roles/orgpolicy.policyAdmin": ["orgpolicy.*"],
    "roles/browser": ["resourcemanager.projects.get"],
    "roles/iam.serviceAccountTokenCreator": ["iam.serviceAccounts.getAccessToken", "iam.serviceAccounts.signBlob",
                                             "iam.serviceAccounts.signJwt"],
    "roles/iam.serviceAccountAdmin": [
        "iam.serviceAccounts.*",
        "resourcemanager.projects.get",
    ],
    "roles/iam.serviceAccountCreator": [
        "iam.serviceAccounts.create",
        "resourcemanager.projects.get",
    ],
    "roles/iam.serviceAccountKeyAdmin": [
        "iam.serviceAccountKeys.*",
        "iam.serviceAccounts.get",
        "iam.serviceAccounts.list",
        "resourcemanager.projects.get",
    ],
    "roles/iam.roleAdmin": [
        "iam.roles.*",
        "resourcemanager.projects.get",
        "resourcemanager.projects.getIamPolicy",
    ],
    "roles/iam.roleViewer": ["iam.roles.get", "iam.roles.list"],
    "roles/iam.securityReviewer": [
        "iam.roles.get",
        "iam.roles.list",
        "iam.serviceAccounts.get",
        "iam.serviceAccounts.list",
        "iam.serviceAccountKeys.get",
        "iam.serviceAccountKeys.list",
        "resourcemanager.projects.getIamPolicy",
        "artifactregistry.repositories.getIamPolicy",
    ],
    "roles/resourcemanager.projectIamAdmin": [
        "resourcemanager.projects.get",
        "resourcemanager.projects.getIamPolicy",
        "resourcemanager.projects.setIamPolicy",
    ],
    "roles/serviceusage.serviceUsageAdmin": [
        "serviceusage.services.*",
        "resourcemanager.projects.get",
    ],
    "roles/serviceusage.serviceUsageConsumer": [
        "serviceusage.services.get",
        "serviceusage.services.list",
        "serviceusage.services.use",
    ],
    "roles/artifactregistry.admin": ["artifactregistry.*"],
    "roles/artifactregistry.repoAdmin": [
        "artifactregistry.repositories.get",
        "artifactregistry.repositories.list",
        "artifactregistry.repositories.downloadArtifacts",
        "artifactregistry.repositories.uploadArtifacts",
        "artifactregistry.repositories.deleteArtifacts",
        "artifactregistry.repositories.readViaVirtualRepository",
        "artifactregistry.packages.*",
        "artifactregistry.tags.*",
        "artifactregistry.versions.*",
        "artifactregistry.files.*",
        "artifactregistry.dockerimages.*",
    ],
    "roles/artifactregistry.writer": [
        "artifactregistry.repositories.get",
        "artifactregistry.repositories.list",
        "artifactregistry.repositories.downloadArtifacts",
        "artifactregistry.repositories.uploadArtifacts",
        "artifactregistry.repositories.readViaVirtualRepository",
        "artifactregistry.dockerimages.get",
        "artifactregistry.dockerimages.list",
        "artifactregistry.files.get",
        "artifactregistry.files.list",
        "artifactregistry.packages.get",
        "artifactregistry.packages.list",
        "artifactregistry.tags.create",
        "artifactregistry.tags.get",
        "artifactregistry.tags.list",
        "artifactregistry.tags.update",
        "artifactregistry.versions.get",
        "artifactregistry.versions.list",
    ],
    "roles/artifactregistry.reader": [
        "artifactregistry.repositories.get",
        "artifactregistry.repositories.list",
        "artifactregistry.repositories.downloadArtifacts",
    ],
    "roles/logging.logWriter": ["logging.logEntries.create"],
    "roles/cloudquotas.viewer": ["cloudquotas.quotas.get"],
    "roles/cloudquotas.admin": ["cloudquotas.quotas.get", "cloudquotas.quotas.update"],
}


def _matches(p: str, permission: str) -> bool:
    return p == "*" or p == permission or (p.endswith(".*") and permission.startswith(p[:-1]))


def grants(patterns, permission: str) -> bool:
    if any(p.startswith("!") and _matches(p[1:], permission) for p in patterns):
        return False
    for p in patterns:
        if p == "*" or p == permission:
            return True
        if p.endswith(".*") and permission.startswith(p[:-1]):
            return True
    return False
