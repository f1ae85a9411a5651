"""Step 4: the Docker repository `coiled` in Artifact Registry, and the account's repoAdmin grant on it, in each
registry region (the cluster region, and any more --registry-regions names): one step, the regions handled
together, so that the order, the journal and the plan line of the registry stay in one place."""

from __future__ import annotations

from dataclasses import dataclass

from coiled_setup import waiting
from coiled_setup.cloud import AlreadyExists, CloudError, NotFound
from coiled_setup.concurrency import run_all
from coiled_setup.errors import UserError
from coiled_setup.needs import ARTIFACT_REGISTRY, REPO_ROLE, holds
from coiled_setup.options import repository_name
from coiled_setup.steps import policy as policies
from coiled_setup.steps.base import CREATE, NOTHING, UPDATE, Change, Run, Step


def _settling(e: CloudError) -> bool:
    """Just after enabling, Artifact Registry may still say it is disabled."""
    return e.service_disabled


@dataclass
class Repo:
    """What exists of Coiled's repository in one region."""

    region: str
    name: str
    format: str | None = None
    granted: bool = False
    disabled: bool = False  # Google answered that the API is off (or, just enabled, not served yet)


class RegistryStep(Step):
    key = "registry"
    title = "Artifact Registry"
    after = ("apis", "account")
    # The repository needs only its API: made while the account is. Its grant names the account, and while Google
    # does not know a new account yet a grant is refused and tried again: the project's binding waits that out,
    # and the grant here waits for it (run.wait_for) instead of polling beside it.
    early = {"account": "start"}
    permissions = ("artifactregistry.repositories.get", "artifactregistry.repositories.create",
                   "artifactregistry.repositories.getIamPolicy", "artifactregistry.repositories.setIamPolicy")
    reads = ("services",)

    def __init__(self):
        self.repos: list[Repo] = []
        # Repositories coiled-setup created in regions this run no longer names: kept (only teardown deletes).
        self.kept: list[str] = []

    @property
    def format(self) -> str | None:
        """The cluster region's repository format (None: no repository)."""
        return self.repos[0].format if self.repos else None

    @property
    def granted(self) -> bool:
        return bool(self.repos) and self.repos[0].granted

    def member(self, run: Run) -> str:
        return f"serviceAccount:{run.opts.account_email}"

    def observe(self, run: Run) -> None:
        o = run.opts
        self.repos = [Repo(r, repository_name(o.project, r)) for r in o.repo_regions]
        self.kept = [n for n in run.journal.created_repositories() if n not in o.repositories]
        if run.services.get(ARTIFACT_REGISTRY) is False:
            return  # known off: nothing there to read
        # Read while the preflight learns which APIs are on (Google answers SERVICE_DISABLED when it is off). Set up
        # here before, the repositories most likely exist, so their policies are read beside them.
        known = run.journal.get("account") is not None
        run_all([lambda r=r: self._observe(run, r, known) for r in self.repos])

    def _observe(self, run: Run, r: Repo, known: bool) -> None:
        g = run.google

        def policy():
            try:
                return g.get_repo_policy(r.name)
            except NotFound:
                return None

        try:
            if known:
                r.format, found = run_all([lambda: g.get_repository(r.name), policy])
            else:
                r.format, found = g.get_repository(r.name), None
            if r.format is not None:
                r.granted = holds(found if found is not None else g.get_repo_policy(r.name), REPO_ROLE,
                                  self.member(run))
        except CloudError as e:
            if not _settling(e):
                raise
            # Off, or enabled by an earlier (interrupted or failed) run and still propagating: nothing could be
            # read, and apply creates the repository once the API answers.
            r.format, r.granted, r.disabled = None, False, True

    def plan(self, run: Run) -> Change:
        for r in self.repos:
            if r.format is not None and r.format != "DOCKER":
                raise UserError(
                    f"Repository {r.name} exists with format {r.format}, but Coiled needs a DOCKER repository named "
                    "coiled: delete or rename it, or pass --no-gar."
                )
        # The API reads as on, yet Google did not serve it: just enabled, still propagating.
        settling = bool(run.services.get(ARTIFACT_REGISTRY))
        changes = [self._plan(r, settling) for r in self.repos]
        action = (CREATE if any(a == CREATE for a, _ in changes) else
                  UPDATE if any(a == UPDATE for a, _ in changes) else NOTHING)
        details = [d for _, d in changes] + [f"kept {n} (not a registry region of this run; teardown "
                                             "--delete-repository deletes it)" for n in self.kept]
        return Change(action, "; ".join(details))

    @staticmethod
    def _plan(r: Repo, settling: bool = False) -> tuple[str, str]:
        if r.format is None:
            note = " (once the just-enabled Artifact Registry API takes effect)" if settling and r.disabled else ""
            return CREATE, f"create DOCKER repository {r.name}; grant {REPO_ROLE}{note}"
        if not r.granted:
            return UPDATE, f"grant {REPO_ROLE} on {r.name}"
        return NOTHING, f"{r.name} with {REPO_ROLE}"

    def _until_ready(self, run: Run, fn, what: str):
        """Runs `fn`, waiting with backoff while the API is still settling after enablement; first for the project's
        binding, which its grant waits for anyway (Google takes about as long to know a new account)."""
        waited = []

        def attempt():
            try:
                return (fn(),)
            except CloudError as e:
                if not _settling(e):
                    raise
            if not waited:
                waited.append(True)
                run.wait_for("binding")
            return None
        return waiting.poll(attempt, timeout=run.opts.wait_timeout, what=what, tick=run.ui.tick)[0]

    def apply(self, run: Run) -> str:
        # The regions are independent: created and granted together; one already in place is left alone.
        todo = [r for r in self.repos if self._plan(r)[0] != NOTHING] if len(self.repos) > 1 else self.repos
        done = run_all([lambda r=r: self._apply(run, r) for r in todo])
        if len(self.repos) == 1:
            return done[0]
        return "; ".join(f"{r.region}: {d}" for r, d in zip(todo, done, strict=True))

    def _apply(self, run: Run, r: Repo) -> str:
        g, o = run.google, run.opts
        name = r.name
        done = []
        # What the observation saw stands (a retry observes again first); unseen, the API was off or settling,
        # and a repository made before it was turned off shows itself as already there.
        if r.format is None:
            try:
                op = self._until_ready(run, lambda: g.start_create_repository(
                    o.project, r.region, "coiled", "Software environments for Coiled"),
                    "waiting for Artifact Registry to be enabled")
                if op:
                    waiting.poll(lambda: g.operation_done("registry", op), timeout=o.wait_timeout,
                                 what="creating the repository", tick=run.ui.tick)
                done.append("created repository")  # its operation done: the repository is there
            except AlreadyExists:
                # Someone else's creation (or our own whose answer was lost) may still be under way.
                fmt = waiting.poll(lambda: g.get_repository(name), timeout=o.wait_timeout,
                                   what="waiting for the repository to appear", tick=run.ui.tick)
                if fmt != "DOCKER":
                    r.format = fmt
                    self.plan(run)  # refuses it
            run.journal.created_repository(name)
        # The policy is read while the project's binding is written; the grant waits for that binding.
        held = [g.get_repo_policy(name)]
        run.wait_for("binding")
        wrote = policies.ensure_member(
            lambda: held.pop() if held else g.get_repo_policy(name), lambda pol: g.set_repo_policy(name, pol),
            REPO_ROLE, self.member(run), timeout=o.wait_timeout, tick=run.ui.tick, on_conflict=run.ui.conflict,
        )
        if wrote:
            done.append(f"granted {REPO_ROLE}")
        r.format, r.granted = "DOCKER", True
        return ", ".join(done) or "nothing to do"


def steps_for(opts) -> list[Step]:
    return [RegistryStep()] if opts.gar else []
