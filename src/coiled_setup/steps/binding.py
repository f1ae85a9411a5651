"""Step 3: the account bound to the role in the project's IAM policy, everyone else's bindings kept."""

from __future__ import annotations

from collections.abc import Callable

from coiled_setup.needs import holds
from coiled_setup.steps import policy as policies
from coiled_setup.steps.base import CREATE, NOTHING, Change, Run, Step


class BindingStep(Step):
    key = "binding"
    title = "Project IAM binding"
    permissions = ("resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy")

    def __init__(self, member: Callable[[Run], str], role: Callable[[Run], str], key: str = "binding",
                 title: str = "Project IAM binding", after: tuple[str, ...] = ("account", "role")):
        self.member, self.role = member, role
        self.key, self.title, self.after = key, title, after
        self.present = False

    def observe(self, run: Run) -> None:
        self.present = holds(run.google.get_policy(run.opts.project), self.role(run), self.member(run))

    def plan(self, run: Run) -> Change:
        what = f"{self.member(run)} → {self.role(run)}"
        return Change(NOTHING, what) if self.present else Change(CREATE, f"bind {what}")

    def apply(self, run: Run) -> str:
        g, p = run.google, run.opts.project
        wrote = policies.ensure_member(
            lambda: g.get_policy(p), lambda pol: g.set_policy(p, pol), self.role(run), self.member(run),
            timeout=run.opts.wait_timeout, tick=run.ui.tick, on_conflict=run.ui.conflict,
        )
        self.present = True
        return "bound" if wrote else "already bound"


def steps_for(opts) -> list[Step]:
    return [BindingStep(lambda run: f"serviceAccount:{run.opts.account_email}", lambda run: run.opts.role_name)]
