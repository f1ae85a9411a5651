"""The wizard's steps, in the order a run takes them.

Each module holds one step and `steps_for(opts)`, the steps it adds to a run with those options (none, one,
or a few configured ones). A new step is a module like them and one line in its command's order.
"""

from __future__ import annotations

from coiled_setup.steps import (
    account,
    apis,
    binding,
    confirm,
    drop_account,
    drop_coiled,
    drop_repository,
    drop_role,
    forget,
    handover,
    instance,
    key_accepted,
    new_key,
    quotas,
    registry,
    retire_keys,
    role,
    unbind,
    upload,
)
from coiled_setup.steps.base import Step

ORDER = (apis.steps_for, account.steps_for, role.steps_for, binding.steps_for, registry.steps_for,
         instance.steps_for, confirm.steps_for, upload.steps_for, quotas.steps_for)
# rotate-key: the new key is accepted by Google and held by Coiled before an old one is deleted.
ROTATION = (new_key.steps_for, key_accepted.steps_for, handover.steps_for, retire_keys.steps_for)


def _instance_teardown(opts) -> list[Step]:
    if not opts.create_instance_service_account:
        return []  # an instance account coiled-setup did not create is left as it is
    return [unbind.instance_unbind(opts), drop_role.instance_role(opts), drop_account.instance_account(opts)]


# teardown: Coiled stops using the project first; bindings go before the roles and accounts they name.
TEARDOWN = (drop_coiled.steps_for, _instance_teardown, unbind.account_unbind, drop_role.steps_for,
            drop_repository.steps_for, drop_account.steps_for, forget.steps_for)

# What the preflight itself reads, before any step.
PREFLIGHT_PERMISSIONS = ("resourcemanager.projects.get", "serviceusage.services.get")
LISTING_PERMISSION = "iam.serviceAccounts.list"  # the interactive account choice lists the project's accounts


def build(opts, order=ORDER) -> list[Step]:
    return [step for steps_for in order for step in steps_for(opts)]


def operator_permissions(opts) -> list[str]:
    """What the operator needs for the steps this run will take, in step order."""
    perms = dict.fromkeys(PREFLIGHT_PERMISSIONS)
    for step in build(opts):
        perms.update(dict.fromkeys(step.permissions))
    if opts.interactive and "service_account" not in opts.explicit:
        perms[LISTING_PERMISSION] = None
    return list(perms)
