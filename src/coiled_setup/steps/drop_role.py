"""Teardown: a custom role coiled-setup created, soft-deleted (Google keeps its id reserved for up to 37 days)."""

from __future__ import annotations

from coiled_setup.cloud import FailedPrecondition, NotFound
from coiled_setup.options import INSTANCE_ROLE_ID, role_name
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step


class DropRoleStep(Step):
    permissions = ("iam.roles.get", "iam.roles.delete")

    def __init__(self, key: str, title: str, name, created: str, after: tuple[str, ...] = ()):
        self.key, self.title, self.name, self.created, self.after = key, title, name, created, after
        self.role = None

    def observe(self, run: Run) -> None:
        self.role = run.google.get_role(self.name(run))

    def _ours(self, run: Run) -> bool:
        return (run.journal.get("created") or {}).get(self.created) == self.name(run)

    def plan(self, run: Run) -> Change:
        name = self.name(run)
        if self.role is None:
            return Change(NOTHING, f"no role {name}")
        if self.role.deleted:
            return Change(NOTHING, f"{name} is already deleted")
        if not self._ours(run):
            rid = name.rsplit("/", 1)[1]
            return Change(NOTHING, f"leave {name}: this machine's journal does not say coiled-setup created it "
                          f"(delete it yourself: gcloud iam roles delete {rid} --project {run.opts.project})")
        return Change(UPDATE, f"delete {name} (its id stays reserved for up to 37 days; other bindings to it stay, "
                      "inactive)")

    def apply(self, run: Run) -> str:
        try:
            self.role = run.google.delete_role(self.name(run), self.role.etag)
        except (NotFound, FailedPrecondition):
            self.observe(run)  # an earlier try deleted it (its answer lost): fine if so
            if self.role is not None and not self.role.deleted:
                raise
        run.journal.forget(self.created)
        return "deleted (undeletable for 7 days)"


def steps_for(opts) -> list[Step]:
    return [DropRoleStep("role", "Custom role", lambda run: run.opts.role_name, "role", after=("binding",))]


def instance_role(opts) -> DropRoleStep:
    return DropRoleStep("instance_role", "Instance role", lambda run: role_name(run.opts.project, INSTANCE_ROLE_ID),
                        "instance_role", after=("instance_binding",))
