"""Step 5: the optional instance service account, with least privilege."""

from __future__ import annotations

from coiled_setup import role_templates
from coiled_setup.cloud import AlreadyExists
from coiled_setup.errors import BadInput
from coiled_setup.options import INSTANCE_ACCOUNT_ID, INSTANCE_ROLE_ID, role_name
from coiled_setup.steps.account import MARKER
from coiled_setup.steps.base import CREATE, NOTHING, Change, Run, Step
from coiled_setup.steps.binding import BindingStep
from coiled_setup.steps.role import RoleStep


def instance_email(opts) -> str:
    if opts.instance_service_account:
        return opts.instance_service_account
    return f"{INSTANCE_ACCOUNT_ID}@{opts.project}.iam.gserviceaccount.com"


class InstanceAccountStep(Step):
    key = "instance"
    title = "Instance service account"
    optional = True
    permissions = ("iam.serviceAccounts.get", "iam.serviceAccounts.create")
    publishes = ("instance_email",)

    def __init__(self):
        self.account = None

    def observe(self, run: Run) -> None:
        self.account = run.google.get_account(instance_email(run.opts))

    def plan(self, run: Run) -> Change:
        email = instance_email(run.opts)
        if self.account is not None:
            return Change(NOTHING, f"use {email}", {"instance_email": email})
        if run.opts.instance_service_account:
            if "instance" not in run.opts.explicit:  # kept from what Coiled holds, not a flag
                raise BadInput(
                    f"Coiled's instance account {email} does not exist (or you cannot see it): create it, or pass "
                    "--no-instance-service-account or --create-instance-service-account."
                )
            raise BadInput(
                f"--instance-service-account {email} does not exist (or you cannot see it): create it first, "
                "or use --create-instance-service-account."
            )
        return Change(CREATE, f"create {email}", {"instance_email": email})

    def on_skip(self, run: Run) -> None:
        run.instance_email = None

    def apply(self, run: Run) -> str:
        if self.account is not None:
            return "nothing to do"
        try:
            self.account = run.google.create_account(
                run.opts.project, INSTANCE_ACCOUNT_ID, "Coiled instances",
                f"Attached to Coiled's cluster instances; grant it only the data access your work needs {MARKER}.",
            )
        except AlreadyExists:
            pass
        run.journal.created("instance_account", instance_email(run.opts))
        return "created"


def steps_for(opts) -> list[Step]:
    if not (opts.instance_service_account or opts.create_instance_service_account):
        return []
    if not opts.create_instance_service_account:
        return [InstanceAccountStep()]
    # The role exists for the account alone: skipping the account skips it too.
    return [
        InstanceAccountStep(),
        RoleStep(INSTANCE_ROLE_ID, role_templates.INSTANCE, key="instance_role", title="Instance role",
                 after=("instance",)),
        BindingStep(lambda run: f"serviceAccount:{instance_email(run.opts)}",
                    lambda run: role_name(run.opts.project, INSTANCE_ROLE_ID),
                    key="instance_binding", title="Instance IAM binding", after=("instance", "instance_role"),
                    follows=("binding",)),  # one writer of the project's policy at a time
    ]
