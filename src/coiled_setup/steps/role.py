"""Step 2: a custom role holding exactly the bundled template's permissions."""

from __future__ import annotations

from coiled_setup import role_templates
from coiled_setup.cloud import AlreadyExists, FailedPrecondition
from coiled_setup.errors import UserError
from coiled_setup.needs import role_diff
from coiled_setup.steps.base import CREATE, NOTHING, UPDATE, Change, Run, Step
from coiled_setup.wording import count


class RoleStep(Step):
    key = "role"
    title = "Custom role"
    permissions = ("iam.roles.get", "iam.roles.create", "iam.roles.update", "iam.roles.undelete")

    def __init__(self, role_id: str, template: str = role_templates.CONTROL_PLANE, key: str = "role",
                 title: str = "Custom role", after: tuple[str, ...] = ()):
        self.role_id = role_id
        self.template = role_templates.load(template)
        self.key, self.title, self.after = key, title, after
        self.role = None

    def name(self, run: Run) -> str:
        return f"projects/{run.opts.project}/roles/{self.role_id}"

    def observe(self, run: Run) -> None:
        self.role = run.google.get_role(self.name(run))

    def diff(self) -> tuple[list[str], list[str]]:
        return role_diff(self.template, self.role.permissions if self.role else ())

    def _drifted(self) -> bool:
        r, t = self.role, self.template
        added, removed = self.diff()
        return bool(added or removed) or (r.title, r.description, r.stage) != (t.title, t.description, t.stage)

    def plan(self, run: Run) -> Change:
        n = len(self.template.permissions)
        if self.role is None:
            return Change(CREATE, f"create {self.name(run)} with {count(n, 'permission')}")
        added, removed = self.diff()
        what = []
        if added:
            what.append(f"add {len(added)}: {', '.join(added)}")
        if removed:
            what.append(f"remove {len(removed)}: {', '.join(removed)}")
        if self.role.deleted:
            return Change(UPDATE, f"undelete {self.name(run)}" + (f" and {'; '.join(what)}" if what else ""))
        if self._drifted():
            return Change(UPDATE, f"update {self.name(run)}: " + ("; ".join(what) or "title/description/stage"))
        return Change(NOTHING, f"{self.name(run)} has the {count(n, 'permission')}")

    def _reserved(self, run: Run) -> UserError:
        """Google refuses the id, yet shows no role by it: deleted over 7 days ago, not yet purged."""
        remedy = (f"pass --role-id with another id (for example {self.role_id}_2)" if self.key == "role"
                  else "wait until Google purges it")
        return UserError(f"The role id {self.role_id} in project {run.opts.project} belongs to a role deleted more "
                         f"than 7 days ago, which Google keeps reserved for up to 37 days after its deletion: "
                         f"{remedy} and run again.")

    def adopt(self, run: Run) -> None:
        run.journal.settle_creation(self.key, self.name(run), self.role is not None)

    def apply(self, run: Run) -> str:
        g, t = run.google, self.template
        args = (t.title, t.description, list(t.permissions), t.stage)
        run.journal.settle_creation(self.key, self.name(run), self.role is not None)
        if self.role is None:
            try:
                run.journal.creating(self.key, self.name(run))
                g.create_role(run.opts.project, self.role_id, *args)
                run.journal.created(self.key, self.name(run))
                return "created"
            except (AlreadyExists, FailedPrecondition) as e:
                run.journal.settle_creation(self.key, self.name(run), False)  # not made by this call
                self.observe(run)  # someone else made it, or it is soft-deleted: converge below
                if self.role is None:
                    if "marked for deletion" in e.message:
                        raise self._reserved(run) from None
                    raise
        verbs = []
        etag = self.role.etag
        if self.role.deleted:
            self.role = g.undelete_role(self.name(run), etag)
            etag = self.role.etag
            verbs.append("undeleted")
        if self._drifted():
            added, removed = self.diff()
            self.role = g.update_role(self.name(run), etag, *args)
            verbs.append(f"updated (+{len(added)} −{len(removed)})")
        return " and ".join(verbs) or "nothing to do"


def steps_for(opts) -> list[Step]:
    return [RoleStep(opts.role_id)]
