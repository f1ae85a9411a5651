"""Step 1: the Coiled service account and its JSON key."""

from __future__ import annotations

import json
import time
from pathlib import Path

from coiled_setup import keyfile as keyfiles
from coiled_setup import paths, retry, waiting
from coiled_setup.cloud import AlreadyExists, CloudError, FailedPrecondition, NotFound, Transient, Unreachable
from coiled_setup.concurrency import run_all
from coiled_setup.errors import UserError
from coiled_setup.journal import JournalError
from coiled_setup.steps.base import CREATE, NOTHING, UPDATE, Change, LocalFile, Run, Step
from coiled_setup.wording import count

MAX_USER_KEYS = 10
# How long Google's key list may lag behind a new key (its own samples wait 5 s before listing one).
LIST_SETTLE_S = 5.0
# In the description of every account this tool creates: teardown on another machine recognises them by it.
MARKER = "(created by coiled-setup)"
# The legacy constraint and the managed one that organizations created since 3 May 2024 enforce by default.
KEY_ORG_POLICIES = ("constraints/iam.disableServiceAccountKeyCreation",
                    "constraints/iam.managed.disableServiceAccountKeyCreation")


def key_policy_sentence(project: str, constraint: str) -> str:
    """The refusal of a key by an organization policy, with the project-level exception written to a file."""
    from coiled_setup import org_policies

    f = org_policies.Finding(constraint, "", True, {"name": f"projects/{project}/policies/{constraint}",
                                                     "spec": {"rules": [{"enforce": False}]}})
    try:
        org_policies.write_exception(project, f)
        how = f"gcloud org-policies set-policy {f.file}"
    except OSError:
        how = f"a project-level policy of {constraint} with enforce: false"
    return (f"The organization policy {constraint} forbids creating keys in project {project}: someone with "
            f"{org_policies.ADMIN_ROLE} on the organization or folder must exempt this project ({how}) before "
            "Coiled can get a key.")


def key_path(o, journal) -> Path:
    """Where the account's key file is (or goes): --key-file, else the one recorded, else the default."""
    if o.key_file is not None:
        return o.key_file
    recorded = journal.get("key_file")
    if recorded and journal.get("account") == o.account_email and not _anothers(Path(recorded), o.account_email):
        return Path(recorded)
    return paths.default_key_path(o.project, o.account_id)


def _anothers(path: Path, email: str) -> bool:
    """Whether the file holds another account's key (a journal from an older run may pair it with this one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("client_email") not in (None, email)


def record_account(journal, email: str) -> None:
    """The journal's account; another account's key file and key id do not carry over to it."""
    if journal.get("account") != email:
        journal.set(account=email, key_file=None, key_id=None)


def _account_and_keys(run: Run, email: str):
    """The account (None when it does not exist) and its user-managed keys."""
    g = run.google
    if run.journal.get("account") != email:
        account = g.get_account(email)
        return account, g.list_user_keys(email) if account else []

    # Set up here before: the account most likely exists, so its keys are read beside it.
    def keys():
        try:
            return g.list_user_keys(email)
        except NotFound:
            return None

    account, listed = run_all([lambda: g.get_account(email), keys])
    if account is None:
        return None, []
    return account, listed if listed is not None else g.list_user_keys(email)


def delete_key(run: Run, kid: str) -> bool:
    """Deletes one of the account's keys and forgets it; answers whether it was still there."""
    try:
        run.google.delete_key(run.opts.account_email, kid)
        gone = True
    except NotFound:
        gone = False
    run.journal.drop_key(kid)
    return gone


class AccountStep(Step):
    key = "account"
    title = "Service account and key"
    after = ("apis",)
    permissions = ("iam.serviceAccounts.get", "iam.serviceAccounts.create", "iam.serviceAccountKeys.list",
                   "iam.serviceAccountKeys.create", "iam.serviceAccountKeys.delete")
    reads = ("coiled_credentials",)
    publishes = ("key_id", "keyfile", "key_path", "fresh_account", "account_created")

    def __init__(self):
        self.account = None
        self.keys = []
        self.local: dict | None = None  # a usable key file's content
        self.local_path: Path | None = None
        self.orphans: list[str] = []
        self.fresh: str | None = None  # the key this tool made moments ago (Google may not list it yet)
        self.proven: str | None = None  # the key file's key, unlisted yet accepted by Google
        self.replaced: str | None = None  # why the file at local_path, there but unusable, gets a new key

    # -- observe --------------------------------------------------------------------------------
    def key_path(self, run: Run) -> Path:
        return key_path(run.opts, run.journal)

    def observe(self, run: Run) -> None:
        o = run.opts
        self.account, self.keys = _account_and_keys(run, o.account_email)
        # Google lists a new key only after a while: the one this tool just made, not yet accepted, is live.
        self.fresh = run.journal.fresh_key(o.account_email) if self.account else None
        self.proven = None
        self.local, self.local_path, self.replaced = None, None, None
        if not o.no_local_key:
            path = self.key_path(run)
            self.local_path = path
            if path.exists():
                try:
                    data = keyfiles.read(path)
                except UserError:
                    if o.key_file is not None:
                        raise
                    data = None  # a damaged default file is replaced, not trusted
                if data and data["client_email"] == o.account_email and (self._live(data["private_key_id"])
                                                                         or self._proves_itself(data)):
                    self.local = data
                else:
                    self.replaced = self._why_replaced(data, o.account_email)
        pending = run.journal.get("key_pending")
        self.orphans = []
        if pending and pending.get("email") == o.account_email:
            keep = set(pending.get("known", [])) | {self._local_id()}
            self.orphans = [k.key_id for k in self.keys if k.key_id not in keep]

    def _why_replaced(self, data: dict | None, email: str) -> str:
        if data is None:
            return "it is not a usable key file"
        if data["client_email"] != email:
            return f"it holds a key of {data['client_email']}"
        if any(k.key_id == data["private_key_id"] for k in self.keys):
            return "its key is disabled on Google"
        return "its key no longer exists on Google"

    def _proves_itself(self, data: dict) -> bool:
        """Whether Google accepts a key its list does not show (the list lags behind a new key)."""
        if any(k.key_id == data["private_key_id"] for k in self.keys):
            return False  # listed, so disabled: _live said so
        from coiled_setup.cloud import Google

        as_key = Google.from_key(data)
        try:
            as_key.authenticate()
            self.proven = data["private_key_id"]
            return True
        except CloudError:
            return False
        finally:
            as_key.close()

    def _live(self, key_id: str) -> bool:
        listed = [k for k in self.keys if k.key_id == key_id]
        if listed:
            return not listed[0].disabled
        return key_id is not None and key_id in (self.fresh, self.proven)

    def _local_id(self) -> str | None:
        return self.local["private_key_id"] if self.local else None

    def _coiled_key(self, run: Run) -> str | None:
        """The key id Coiled holds for this account, when it is still live on Google."""
        creds = run.coiled_credentials
        kid = creds.get("private_key_id")
        if creds.get("client_email") == run.opts.account_email and kid and self._live(kid):
            return kid
        return None

    def needs_key(self, run: Run) -> bool:
        if self.account is None:
            return True
        if run.opts.no_local_key:
            return self._coiled_key(run) is None
        return self.local is None

    def local_files(self, run: Run) -> list[LocalFile]:
        if self.local_path is None or not self.needs_key(run):
            return []
        return [LocalFile(self.local_path, "The key file", "choose another --key-file", private=True)]

    # -- plan -----------------------------------------------------------------------------------
    def plan(self, run: Run) -> Change:
        o = run.opts
        if self.account is None:
            return Change(CREATE, f"create {o.account_email} and a key{self._replacing()}", {"key_id": None})
        if self.account.disabled:
            raise UserError(
                f"Service account {o.account_email} is disabled: enable it (gcloud iam service-accounts "
                f"enable {o.account_email}) or choose another with --service-account."
            )
        extra = f"; delete {count(len(self.orphans), 'key')} an interrupted run left behind" if self.orphans else ""
        if self.needs_key(run):
            return Change(CREATE, f"create a key for {o.account_email}{self._replacing()}{extra}", {"key_id": None})
        kid = self._local_id() or self._coiled_key(run)
        where = f"in {self.local_path}" if self.local else "held by Coiled"
        return Change(UPDATE if self.orphans else NOTHING, f"key {kid[:12]}… {where}{extra}", {"key_id": kid})

    def _replacing(self) -> str:
        """The file a new key overwrites, and why: a plan never replaces a file silently."""
        return f", replacing {self.local_path} ({self.replaced})" if self.replaced else ""

    # -- apply ----------------------------------------------------------------------------------
    def apply(self, run: Run) -> str:
        o, g = run.opts, run.google
        done = []
        made = False  # by this call: an account with no keys yet
        if self.account is None:
            try:
                self.account = g.create_account(o.project, o.account_id, "Coiled",
                                                f"Used by Coiled to run Dask clusters {MARKER}.")
                made = True
                run.fresh_account = True
                run.account_created = retry.now()
                run.journal.created("account", o.account_email)
                done.append("created account")
            except AlreadyExists:
                # Unseen a moment ago, yet there: most likely our own earlier create whose answer was lost,
                # so Google may not show it everywhere yet either.
                run.fresh_account = True
        record_account(run.journal, o.account_email)
        run.reach("account.exists")  # what its binding needs; the key is made meanwhile
        if self.orphans:
            for kid in self.orphans:
                delete_key(run, kid)
            done.append(f"deleted {count(len(self.orphans), 'orphaned key')}")
            self.orphans = []
        if self.needs_key(run):
            pending = run.journal.get("key_pending")
            if pending and pending.get("email") == o.account_email and not pending.get("uncertain"):
                # Left by a run that ended before the creation's answer: its key may exist, not listed yet.
                run.journal.set(key_pending={**pending, "uncertain": True})
            self._create_key(run, made)  # settles what an earlier attempt may have left first
            done.append(f"created key {run.key_id[:12]}…")
        else:
            run.journal.set(key_pending=None)
            self.adopt(run)
        return ", ".join(done) or "nothing to do"

    def adopt(self, run: Run) -> None:
        if self.local is not None:
            run.keyfile, run.key_id, run.key_path = self.local, self.local["private_key_id"], str(self.local_path)
            if run.journal.get("key_file") != run.key_path or run.journal.get("key_id") != run.key_id:
                run.journal.set(account=run.opts.account_email, key_file=run.key_path, key_id=run.key_id)
            pending = run.journal.get("key_pending") or {}
            if pending.get("email") == run.opts.account_email and run.key_id not in pending.get("known", []):
                # The key that creation made is the file's (a run killed before it cleared the record): settled.
                run.journal.set(key_pending=None)
        else:
            run.key_id = self._coiled_key(run)

    def _keys_now(self, run: Run):
        """User-managed keys, waiting while a just-created account is not yet visible."""
        def attempt():
            try:
                return run.google.list_user_keys(run.opts.account_email), True
            except NotFound:
                if run.fresh_account:
                    return None
                raise
        keys, _ = waiting.poll(attempt, timeout=run.opts.wait_timeout, what="waiting for the new account to appear",
                               tick=run.ui.tick)
        return keys

    def _create_key(self, run: Run, made: bool = False) -> None:
        o = run.opts
        path = None if o.no_local_key else (self.local_path or paths.default_key_path(o.project, o.account_id))
        if made:
            # Just created: it has no key to count, unless Google does not know it everywhere yet.
            try:
                create_key(run, path, [])
                return
            except NotFound:
                pass
        keys = self._keys_now(run)
        if len(keys) >= MAX_USER_KEYS:
            keys = self._make_room(run, keys)
        create_key(run, path, [k.key_id for k in keys])

    def _make_room(self, run: Run, keys):
        o = run.opts
        ours = [k for k in keys if k.key_id in run.journal.our_keys() and k.key_id != self._coiled_key(run)]
        message = (f"Service account {o.account_email} already has {len(keys)} user-managed keys, the most Google "
                   f"allows")
        if not ours or not o.interactive:
            raise UserError(
                f"{message}: delete one you no longer use (gcloud iam service-accounts keys list "
                f"--iam-account {o.account_email}, then keys delete) and run again."
            )
        oldest = min(ours, key=lambda k: k.created)
        if not run.ui.confirm(f"{message}. Delete the oldest key coiled-setup created ({oldest.key_id[:12]}…)?",
                              default=False):
            raise UserError(f"{message}: delete a key you no longer use and run again.")
        delete_key(run, oldest.key_id)
        return [k for k in keys if k.key_id != oldest.key_id]


def steps_for(opts) -> list[Step]:
    return [AccountStep()]


def create_key(run: Run, path: Path | None, known: list[str]) -> dict:
    """A new key of the account, its private half kept (in `path`, when given) before anything else happens.

    `known` are the account's keys before it: a crash between the create and the file leaves the journal's
    pending record, from which the next run deletes the one key nobody holds."""
    o, g = run.opts, run.google
    known = list(known)
    n = settle_unlisted(run, known)
    if n:
        run.ui.tick(f"deleted {count(n, 'key')} an earlier attempt made, whose answer was lost")
    # Written before the key exists, so a crash between here and the file leaves a trace to clean up.
    run.journal.set(key_pending={"email": o.account_email, "known": known, "started": time.time()})
    try:
        data = g.create_key(o.account_email)
    except CloudError as e:
        if isinstance(e, NotFound):  # a certain answer: no key was made
            run.journal.set(key_pending=None)
        if isinstance(e, (Transient, Unreachable)):
            # The key may have been made, its answer lost: the next attempt first looks for it.
            run.journal.set(key_pending={**run.journal.get("key_pending"), "uncertain": True})
        violated = [v for v in KEY_ORG_POLICIES if v in e.violations]
        if isinstance(e, FailedPrecondition) and violated:
            raise UserError(key_policy_sentence(o.project, violated[0].split("/", 1)[1])) from None
        raise
    kid = data["private_key_id"]
    try:
        run.journal.add_key(kid)
        if path is not None:
            paths.write_private(path, json.dumps(data, indent=2) + "\n")
            run.key_path = str(path)
            run.journal.set(key_file=str(path))
        run.journal.set(key_pending=None, key_id=kid, key_created=time.time())
    except (OSError, JournalError) as e:
        reason = e.reason if isinstance(e, JournalError) else \
            f"could not write the key file {path} ({e.strerror or e})"
        _discard(run, kid)
        raise UserError(f"C{reason[1:]}, so the new key was deleted on Google again: fix that, then run "
                        "again.") from None
    run.keyfile, run.key_id = data, kid
    return data


def settle_unlisted(run: Run, known: list[str]) -> int:
    """A key an earlier attempt of this run may have made (the journal's pending record says its answer was lost)
    can be missing from Google's key list for a few seconds after it was made. Until LIST_SETTLE_S after
    that attempt, watch the list for a key that is neither known then nor now, and delete it (nobody holds its
    private half); answers how many. Without a recent pending record, nothing to wait for."""
    pending = run.journal.get("key_pending") or {}
    started = pending.get("started")
    if (pending.get("email") != run.opts.account_email or not pending.get("uncertain")
            or not isinstance(started, (int, float))):
        return 0
    keep = set(pending.get("known", [])) | set(known)
    deadline = started + LIST_SETTLE_S
    found: list[str] = []

    def settled():
        found[:] = [k.key_id for k in run.google.list_user_keys(run.opts.account_email) if k.key_id not in keep]
        return bool(found) or time.time() >= deadline

    if time.time() < deadline:
        waiting.poll(settled, timeout=max(0.0, deadline - time.time()) + 1,
                     what="waiting for Google to list a key an earlier attempt may have made", tick=run.ui.tick)
    for kid in found:
        delete_key(run, kid)
    return len(found)


def _discard(run: Run, kid: str) -> None:
    """A key whose private half could not be kept: deleted, so none is left that nobody holds."""
    try:
        run.google.delete_key(run.opts.account_email, kid)
    except CloudError:
        return  # the journal's key_pending still names it: the next run deletes it
    try:
        run.journal.set(key_pending=None, keys=[k for k in run.journal.our_keys() if k != kid])
    except JournalError:
        pass
