"""Before the upload: prove, as the account itself, that Google grants every permission."""

from __future__ import annotations

import time

from coiled_setup import needs, retry, waiting
from coiled_setup.cloud import CloudError, PermissionDenied, Unauthenticated
from coiled_setup.concurrency import run_all
from coiled_setup.errors import UserError
from coiled_setup.needs import REPO_PERMISSIONS
from coiled_setup.remedies import command
from coiled_setup.steps.base import CHECK, Change, Run, Step
from coiled_setup.wording import count


class PermissionTest:
    """What the account (behind `google`) does not hold yet, test after test.

    The first test asks the project and every repository together (on a converged project all pass at once).
    After that, while the project's test fails, only the project is asked: the repositories' bindings were made
    after the project's and take effect no sooner, so asking them too would only double the calls of a wait. Once
    the project passes, the repositories still lacking something are asked (together). A resource that passed is
    not asked again."""

    def __init__(self, google, opts):
        self.google = google
        self.project = opts.project
        self.want = list(needs.control_role().permissions)
        self.repositories = list(opts.repositories)  # each registry region's (none without Artifact Registry)
        self.lacking: dict[str, list[str]] = {}  # by resource, from its latest test

    def _test(self, resources: list[str]) -> None:
        def one(resource):
            if resource == self.project:
                held = self.google.test_permissions(resource, self.want)
                return [p for p in self.want if p not in held]
            held = self.google.test_permissions(resource, list(REPO_PERMISSIONS), repository=True)
            return [p for p in REPO_PERMISSIONS if p not in held]

        for resource, lacking in zip(resources, run_all([lambda r=r: one(r) for r in resources]), strict=True):
            self.lacking[resource] = lacking

    def missing(self) -> list[str]:
        if not self.lacking:
            self._test([self.project, *self.repositories])
        else:
            if self.lacking[self.project]:
                self._test([self.project])
            if not self.lacking[self.project]:
                self._test([r for r in self.repositories if self.lacking.get(r, True)])
        several = len(self.repositories) > 1
        missing = list(self.lacking.get(self.project, []))
        for r in self.repositories:
            missing += [f"{p} on {r}" if several else p for p in self.lacking.get(r, [])]
        return missing


class ConfirmStep(Step):
    key = "confirm"
    title = "Permissions in effect"
    after = ("account", "role", "binding", "registry")
    # Tests as the account, with the key the account step made or kept; paced by what the binding saw of Google.
    reads = ("keyfile", "key_id", "propagation_s", "bound_at")
    # Starts once the bindings are being written: Google is asked to accept the key meanwhile, and the test waits
    # for them (run.wait_for).
    early = {"binding": "start", "registry": "start"}

    def __init__(self):
        self.tested: tuple[str, list[str]] | None = None  # (key id, what it lacked) tested while observing
        self.trusted = False  # that test stands: nothing before this step writes

    def observe(self, run: Run) -> None:
        """On a project set up before, the test is made beside the other observations: when nothing before this
        step writes, it is the step's own test (a converged re-run waits for no test of its own)."""
        self.tested = None
        o = run.opts
        if o.no_local_key or run.journal.get("account") != o.account_email:
            return
        from coiled_setup import keyfile
        from coiled_setup.steps.account import key_path

        try:
            data = keyfile.read(key_path(o, run.journal))
        except UserError:
            return  # no key file yet, or one the account step replaces
        if data.get("client_email") != o.account_email:
            return
        from coiled_setup.cloud import Google

        as_account = Google.from_key(data)
        as_account.notify = run.google.notify
        try:
            as_account.authenticate()
            self.tested = data["private_key_id"], PermissionTest(as_account, o).missing()
        except CloudError:
            return  # the key is refused (deleted, or too new): the step tests once the account step has run
        finally:
            as_account.close()

    def plan(self, run: Run) -> Change:
        self.trusted = self.tested is not None and not self.tested[1] and not run.earlier_writes
        # Counted as verify counts them: the role's permissions on the project, the registry's on the repository.
        what = f"the role's {count(len(needs.control_role().permissions), 'permission')} in the project"
        if len(run.opts.repositories) > 1:
            what += f" and {len(REPO_PERMISSIONS)} on each of {len(run.opts.repositories)} registry repositories"
        elif run.opts.gar:
            what += f" and {len(REPO_PERMISSIONS)} on the registry repository"
        return Change(CHECK, f"check, as the account itself, {what}")

    def apply(self, run: Run) -> str:
        if run.keyfile is None:
            return f"skipped: the key is held by Coiled only (check later with {command('verify')} --key-file)"
        if self.trusted and self.tested[0] == run.key_id:
            self._accepted(run)
            return "all permissions in effect"
        from coiled_setup.cloud import Google

        as_account = Google.from_key(run.keyfile)
        as_account.notify = run.google.notify  # told like the operator's calls while Google does not answer
        try:
            left = self._await_key(run, as_account)
            run.wait_for("binding")
            run.wait_for("registry")
            self._await_permissions(run, as_account, left)
        finally:
            as_account.close()
        return "all permissions in effect"

    def _await_key(self, run: Run, as_account) -> float:
        """Waits while Google refuses the key (a new key: for a minute or more); answers the seconds left."""
        started = time.monotonic()
        refusal = ""

        def accepted():
            nonlocal refusal
            try:
                as_account.authenticate()
            except Unauthenticated as e:
                # Google answers invalid_grant "Invalid JWT Signature." until a new key is in effect.
                refusal = e.message.split(": ", 1)[-1]
                return False
            return True

        try:
            waiting.poll(accepted, timeout=run.opts.wait_timeout, what="waiting for Google to accept the new key",
                         tick=run.ui.tick)
        except waiting.TimedOut:
            raise UserError(
                f"After {int(run.opts.wait_timeout)} s Google still does not accept the key of "
                f"{run.opts.account_email} ({refusal}); a new key can take a minute or more to be accepted: run "
                "again with a longer --wait-timeout."
            ) from None
        self._accepted(run)
        return run.opts.wait_timeout - (time.monotonic() - started)

    @staticmethod
    def _accepted(run: Run) -> None:
        if run.journal.get("key_accepted") != run.key_id:
            run.journal.set(key_accepted=run.key_id)  # from now on, a key missing from Google's list was deleted

    def _await_permissions(self, run: Run, as_account, left: float) -> None:
        last: list[str] = []
        test = PermissionTest(as_account, run.opts)

        def check():
            nonlocal last
            try:
                last = test.missing()
            except CloudError as e:
                # A new key or binding may not be usable for a little while. (A transient error is not waited
                # out here: the adapter retried the call already.)
                if isinstance(e, (Unauthenticated, PermissionDenied)):
                    last = last or ["(the key is not accepted yet)"]
                    return False
                raise
            return not last

        expected = None
        if "propagation_s" in self.reads and run.propagation_s is not None and run.bound_at is not None:
            # The binding should take effect about as long after it was made as Google took to know the account.
            expected = max(0.0, run.bound_at + run.propagation_s - retry.now())
        try:
            waiting.poll(check, timeout=max(left, 0.0), what="waiting for Google to put the permissions "
                         "in effect", tick=run.ui.tick, expected=expected)
        except waiting.TimedOut:
            raise UserError(
                f"After {int(run.opts.wait_timeout)} s Google still does not grant {run.opts.account_email}: "
                f"{', '.join(last[:5])}{' …' if len(last) > 5 else ''}; run `{command('verify')}` to see why, "
                "or run again with a longer --wait-timeout."
            ) from None


def steps_for(opts) -> list[Step]:
    return [ConfirmStep()]
