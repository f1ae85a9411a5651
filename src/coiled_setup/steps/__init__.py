"""The wizard's steps, in the order a run takes them.

Each module holds one step and `steps_for(opts)`, the steps it adds to a run with those options (none, one,
or a few configured ones). A new step is a module like them and one line in ORDER.
"""

from __future__ import annotations

from coiled_setup.steps import account, apis, binding, confirm, instance, registry, role, upload
from coiled_setup.steps.base import Step

ORDER = (apis, account, role, binding, registry, instance, confirm, upload)

# What the preflight itself reads, before any step.
PREFLIGHT_PERMISSIONS = ("resourcemanager.projects.get", "serviceusage.services.get")
LISTING_PERMISSION = "iam.serviceAccounts.list"  # the interactive account choice lists the project's accounts


def build(opts) -> list[Step]:
    return [step for module in ORDER for step in module.steps_for(opts)]


def operator_permissions(opts) -> list[str]:
    """What the operator needs for the steps this run will take, in step order."""
    perms = dict.fromkeys(PREFLIGHT_PERMISSIONS)
    for step in build(opts):
        perms.update(dict.fromkeys(step.permissions))
    if opts.interactive and "service_account" not in opts.explicit:
        perms[LISTING_PERMISSION] = None
    return list(perms)
