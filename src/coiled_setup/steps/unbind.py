"""Teardown: an account taken out of a role's binding (project or repository), everyone else's bindings kept."""

from __future__ import annotations

from coiled_setup.concurrency import run_all
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
        # Per resource (the project, or each registry region's repository): whether it exists and binds the account.
        self.found: dict[str, tuple[bool, bool]] = {}

    @property
    def present(self) -> bool:
        return any(bound for _, bound in self.found.values())

    def _resources(self, run: Run) -> list[str]:
        if not self.repository:
            return [run.opts.project]
        if run.opts.delete_repository:  # the ones coiled-setup created are deleted, grant and all
            ours = run.journal.created_repositories()
            return [n for n in run.opts.repositories if n not in ours]
        return run.opts.repositories

    def _io(self, run: Run, name: str):
        g = run.google
        if self.repository:
            return lambda: g.get_repo_policy(name), lambda p: g.set_repo_policy(name, p)
        return lambda: g.get_policy(name), lambda pol: g.set_policy(name, pol)

    def observe(self, run: Run) -> None:
        names = self._resources(run)
        self.found = dict(zip(names, run_all([lambda n=n: self._observe(run, n) for n in names]), strict=True))

    def _observe(self, run: Run, name: str) -> tuple[bool, bool]:
        if self.repository and run.google.get_repository(name) is None:
            return False, False
        get, _ = self._io(run, name)
        return True, policies.without(get(), self.role(run), gone(self.email(run))) is not None

    def plan(self, run: Run) -> Change:
        what = f"{self.email(run)} → {self.role(run)}"
        if len(self.found) > 1:  # several repositories: each one named
            bound = [n for n, (_, b) in self.found.items() if b]
            if not bound:
                return Change(NOTHING, f"not bound on any repository: {what}")
            return Change(UPDATE, f"unbind {what} on {', '.join(bound)} (every other binding kept)")
        exists, bound = next(iter(self.found.values()), (False, False))
        if not exists:
            return Change(NOTHING, "no repository")
        if not bound:
            return Change(NOTHING, f"not bound: {what}")
        return Change(UPDATE, f"unbind {what} (every other binding kept)")

    def apply(self, run: Run) -> str:
        names = [n for n, (_, bound) in self.found.items() if bound] or self._resources(run)
        wrote = any(run_all([lambda n=n: self._apply(run, n) for n in names]))
        self.found = {n: (exists, False) for n, (exists, _) in self.found.items()}
        return "unbound" if wrote else "already unbound"

    def _apply(self, run: Run, name: str) -> bool:
        get, put = self._io(run, name)
        return policies.ensure_removed(get, put, self.role(run), gone(self.email(run)),
                                       timeout=run.opts.wait_timeout, tick=run.ui.tick, on_conflict=run.ui.conflict)


def instance_unbind(opts) -> UnbindStep:
    from coiled_setup.steps.instance import instance_email

    return UnbindStep("instance_binding", "Instance IAM binding", lambda run: instance_email(run.opts),
                      lambda run: role_name(run.opts.project, INSTANCE_ROLE_ID))


def account_unbind(opts) -> list[Step]:
    steps: list[Step] = [UnbindStep("binding", "Project IAM binding", lambda run: run.opts.account_email,
                                    lambda run: run.opts.role_name)]
    # With --delete-repository and several registry regions, a repository coiled-setup did not create stays: the
    # account's grant on it goes.
    if opts.gar and (not opts.delete_repository or len(opts.repo_regions) > 1):
        steps.append(UnbindStep("registry_access", "Registry access", lambda run: run.opts.account_email,
                                lambda run: REPO_ROLE, repository=True))
    return steps
