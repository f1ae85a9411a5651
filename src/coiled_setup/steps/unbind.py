"""Teardown: an account taken out of a role's binding (project or repository), everyone else's bindings kept."""

from __future__ import annotations

from coiled_setup.needs import REPO_ROLE
from coiled_setup.options import INSTANCE_ROLE_ID, role_name
from coiled_setup.steps import policy as policies
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step


def gone(email: str):
    """The account's member, and what Google shows once the account is deleted (deleted:serviceAccount:...?uid=)."""
    return lambda m: m == f"serviceAccount:{email}" or m.startswith(f"deleted:serviceAccount:{email}?uid=")


class UnbindStep(Step):
    def __init__(self, key: str, title: str, email, role, *, repository: bool = False):
        self.key, self.title = key, title
        self.email, self.role = email, role  # functions of the run
        self.repository = repository
        self.permissions = (("artifactregistry.repositories.getIamPolicy", "artifactregistry.repositories.setIamPolicy")
                            if repository else
                            ("resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy"))
        self.present = False
        self.exists = True

    def _io(self, run: Run):
        g = run.google
        if self.repository:
            name = run.opts.repository
            return lambda: g.get_repo_policy(name), lambda p: g.set_repo_policy(name, p)
        p = run.opts.project
        return lambda: g.get_policy(p), lambda pol: g.set_policy(p, pol)

    def observe(self, run: Run) -> None:
        if self.repository and run.google.get_repository(run.opts.repository) is None:
            self.exists, self.present = False, False
            return
        get, _ = self._io(run)
        self.present = policies.without(get(), self.role(run), gone(self.email(run))) is not None

    def plan(self, run: Run) -> Change:
        what = f"{self.email(run)} → {self.role(run)}"
        if not self.exists:
            return Change(NOTHING, "no repository")
        if not self.present:
            return Change(NOTHING, f"not bound: {what}")
        return Change(UPDATE, f"unbind {what} (every other binding kept)")

    def apply(self, run: Run) -> str:
        get, put = self._io(run)
        wrote = policies.ensure_removed(get, put, self.role(run), gone(self.email(run)),
                                        timeout=run.opts.wait_timeout, tick=run.ui.tick, on_conflict=run.ui.conflict)
        self.present = False
        return "unbound" if wrote else "already unbound"


def instance_unbind(opts) -> UnbindStep:
    from coiled_setup.steps.instance import instance_email

    return UnbindStep("instance_binding", "Instance IAM binding", lambda run: instance_email(run.opts),
                      lambda run: role_name(run.opts.project, INSTANCE_ROLE_ID))


def account_unbind(opts) -> list[Step]:
    steps: list[Step] = [UnbindStep("binding", "Project IAM binding", lambda run: run.opts.account_email,
                                    lambda run: run.opts.role_name)]
    if opts.gar and not opts.delete_repository:
        steps.append(UnbindStep("registry_access", "Registry access", lambda run: run.opts.account_email,
                                lambda run: REPO_ROLE, repository=True))
    return steps
