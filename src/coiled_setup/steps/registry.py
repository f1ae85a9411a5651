"""Step 4: the Docker repository `coiled` in Artifact Registry, and the account's repoAdmin grant on it."""

from __future__ import annotations

from coiled_setup import waiting
from coiled_setup.cloud import AlreadyExists, CloudError
from coiled_setup.errors import UserError
from coiled_setup.needs import ARTIFACT_REGISTRY, REPO_ROLE, holds
from coiled_setup.steps import policy as policies
from coiled_setup.steps.base import CREATE, NOTHING, UPDATE, Change, Run, Step


def _settling(e: CloudError) -> bool:
    """Just after enabling, Artifact Registry may still say it is disabled."""
    return e.service_disabled


class RegistryStep(Step):
    key = "registry"
    title = "Artifact Registry"
    after = ("apis", "account")
    permissions = ("artifactregistry.repositories.get", "artifactregistry.repositories.create",
                   "artifactregistry.repositories.getIamPolicy", "artifactregistry.repositories.setIamPolicy")
    reads = ("services",)

    def __init__(self):
        self.format: str | None = None
        self.granted = False
        self.settling = False  # enabled, but Google does not serve it yet

    def member(self, run: Run) -> str:
        return f"serviceAccount:{run.opts.account_email}"

    def observe(self, run: Run) -> None:
        self.format, self.granted, self.settling = None, False, False
        on = run.services.get(ARTIFACT_REGISTRY)
        if on is None:
            on = run.google.service_enabled(run.opts.project, ARTIFACT_REGISTRY)
        if not on:
            return
        name = run.opts.repository
        try:
            self.format = run.google.get_repository(name)
            if self.format is not None:
                self.granted = holds(run.google.get_repo_policy(name), REPO_ROLE, self.member(run))
        except CloudError as e:
            if not _settling(e):
                raise
            # Enabled by an earlier (interrupted or failed) run and still propagating: nothing there yet,
            # and apply waits until the API answers.
            self.format, self.granted, self.settling = None, False, True

    def plan(self, run: Run) -> Change:
        repo = run.opts.repository
        if self.format is not None and self.format != "DOCKER":
            raise UserError(
                f"Repository {repo} exists with format {self.format}, but Coiled needs a DOCKER repository named "
                "coiled: delete or rename it, or pass --no-gar."
            )
        if self.format is None:
            note = " (once the just-enabled Artifact Registry API takes effect)" if self.settling else ""
            return Change(CREATE, f"create DOCKER repository {repo}; grant {REPO_ROLE}{note}")
        if not self.granted:
            return Change(UPDATE, f"grant {REPO_ROLE} on {repo}")
        return Change(NOTHING, f"{repo} with {REPO_ROLE}")

    def _until_ready(self, run: Run, fn, what: str):
        """Runs `fn`, waiting with backoff while the API is still settling after enablement."""
        def attempt():
            try:
                return (fn(),)
            except CloudError as e:
                if _settling(e):
                    return None
                raise
        return waiting.poll(attempt, timeout=run.opts.wait_timeout, what=what, tick=run.ui.tick)[0]

    def apply(self, run: Run) -> str:
        g, o = run.google, run.opts
        name = o.repository
        done = []
        fmt = self._until_ready(run, lambda: g.get_repository(name), "waiting for Artifact Registry to be enabled")
        if fmt is not None and fmt != "DOCKER":  # seen only now when the API was still settling at observe
            self.format = fmt
            self.plan(run)
        if fmt is None:
            try:
                op = g.start_create_repository(o.project, o.region, "coiled", "Software environments for Coiled")
                waiting.poll(lambda: g.operation_done("registry", op), timeout=o.wait_timeout,
                             what="creating the repository", tick=run.ui.tick)
                done.append("created repository")
            except AlreadyExists:
                pass
            run.journal.created("repository", name)
            waiting.poll(lambda: g.get_repository(name), timeout=o.wait_timeout,
                         what="waiting for the repository to appear", tick=run.ui.tick)
        wrote = policies.ensure_member(
            lambda: g.get_repo_policy(name), lambda pol: g.set_repo_policy(name, pol), REPO_ROLE, self.member(run),
            timeout=o.wait_timeout, tick=run.ui.tick, on_conflict=run.ui.conflict,
        )
        if wrote:
            done.append(f"granted {REPO_ROLE}")
        self.format, self.granted = "DOCKER", True
        return ", ".join(done) or "nothing to do"


def steps_for(opts) -> list[Step]:
    return [RegistryStep()] if opts.gar else []
