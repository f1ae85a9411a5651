"""Step 3: the account bound to the role in the project's IAM policy, everyone else's bindings kept."""

from __future__ import annotations

from collections.abc import Callable

from coiled_setup import retry
from coiled_setup.needs import holds
from coiled_setup.steps import policy as policies
from coiled_setup.steps.base import CREATE, NOTHING, Change, Run, Step


class BindingStep(Step):
    key = "binding"
    title = "Project IAM binding"
    permissions = ("resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy")

    def __init__(self, member: Callable[[Run], str], role: Callable[[Run], str], key: str = "binding",
                 title: str = "Project IAM binding", after: tuple[str, ...] = ("account", "role"),
                 paces: bool = False, first_writer: bool = False, follows: tuple[str, ...] = (),
                 early: dict[str, str] | None = None):
        self.member, self.role = member, role
        self.key, self.title, self.after, self.follows = key, title, after, follows
        self.early = early or {}
        self.present = False
        # The run's first write of the project's policy: the policy read at observation (and its etag) is still
        # current unless someone else wrote since, which the etag tells.
        self.first_writer = first_writer
        self.policy = None
        # The binding of the account the account step made: how long Google took to know it paces later waits.
        self.paces = paces
        if paces:
            self.reads, self.publishes = ("account_created",), ("propagation_s", "bound_at")

    def observe(self, run: Run) -> None:
        self.policy = run.google.get_policy(run.opts.project)
        self.present = holds(self.policy, self.role(run), self.member(run))

    def plan(self, run: Run) -> Change:
        what = f"{self.member(run)} → {self.role(run)}"
        return Change(NOTHING, what) if self.present else Change(CREATE, f"bind {what}")

    def apply(self, run: Run) -> str:
        g, p = run.google, run.opts.project
        unknown = []
        held = [self.policy] if self.first_writer and self.policy is not None else []

        def get():
            return held.pop() if held else g.get_policy(p)

        def unknown_member():
            unknown.append(1)
            if len(unknown) == 1:
                # Started beside the account step's key: while Google does not know the account, that step waits for
                # it too, so this one polls only once it has ended (one poller at a time, as long as the wait).
                for key in self.after:
                    run.wait_for(key)

        wrote = policies.ensure_member(
            get, lambda pol: g.set_policy(p, pol), self.role(run), self.member(run),
            timeout=run.opts.wait_timeout, tick=run.ui.tick, on_conflict=run.ui.conflict,
            on_unknown=unknown_member,
        )
        if wrote and self.paces:
            run.bound_at = retry.now()
            if unknown and run.account_created is not None:
                # Google took this long to know the account: the binding will take about as long to take effect.
                run.propagation_s = run.bound_at - run.account_created
        self.present = True
        return "bound" if wrote else "already bound"


def steps_for(opts) -> list[Step]:
    return [BindingStep(lambda run: f"serviceAccount:{run.opts.account_email}", lambda run: run.opts.role_name,
                        paces=True, first_writer=True, early={"account": "exists"})]  # not its key
