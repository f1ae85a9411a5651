"""Rotation, first: a new key for the account Coiled uses, unless the one it holds is young enough."""

from __future__ import annotations

import time
from pathlib import Path

from coiled_setup import keyfile as keyfiles
from coiled_setup.errors import UserError
from coiled_setup.remedies import command
from coiled_setup.steps.account import MAX_USER_KEYS, create_key, delete_key
from coiled_setup.steps.base import CREATE, NOTHING, UPDATE, Change, LocalFile, Run, Step
from coiled_setup.wording import count

DAY_S = 86400.0


def age_days(key, now: float | None = None) -> float:
    return max(0.0, ((now or time.time()) - key.created) / DAY_S)


class NewKeyStep(Step):
    key = "new_key"
    title = "New key"
    permissions = ("iam.serviceAccounts.get", "iam.serviceAccountKeys.list", "iam.serviceAccountKeys.create",
                   "iam.serviceAccountKeys.delete")
    reads = ("coiled_credentials",)
    publishes = ("key_id", "keyfile", "key_path")

    def __init__(self):
        self.account = None
        self.keys = []
        self.resumed: dict | None = None  # a new key an interrupted rotation made and kept
        self.orphans: list[str] = []
        self.finishing = False

    def observe(self, run: Run) -> None:
        o, g = run.opts, run.google
        self.account = g.get_account(o.account_email)
        self.keys = g.list_user_keys(o.account_email) if self.account else []
        live = {k.key_id for k in self.keys if not k.disabled}
        held = run.coiled_credentials.get("private_key_id")
        self.resumed = None
        path = o.key_file
        if path is not None and path.exists():
            try:
                data = keyfiles.read(path)
            except UserError:
                data = None
            kid = data["private_key_id"] if data else None
            # The file holds a live key Coiled does not hold yet: written by a rotation that stopped before the
            # hand-over, so this run carries it on rather than making one more.
            if data and data["client_email"] == o.account_email and kid in live and kid != held \
                    and kid in run.journal.our_keys():
                self.resumed = data
        rotation = run.journal.get("rotation") or {}
        # Coiled already holds the key an interrupted rotation made: only the old key's deletion is left.
        self.finishing = bool(rotation.get("to")) and rotation.get("to") == held and held in live
        pending = run.journal.get("key_pending")
        self.orphans = []
        if pending and pending.get("email") == o.account_email:
            keep = set(pending.get("known", [])) | {held, self.resumed and self.resumed["private_key_id"]}
            self.orphans = [k.key_id for k in self.keys if k.key_id not in keep]

    def held(self, run: Run):
        kid = run.coiled_credentials.get("private_key_id")
        return next((k for k in self.keys if k.key_id == kid), None)

    def plan(self, run: Run) -> Change:
        o = run.opts
        if self.account is None:
            raise UserError(f"Service account {o.account_email} does not exist in project {o.project}: run "
                            f"{command('gcp')} --project {o.project} to set it up first.")
        held = self.held(run)
        if held is None:
            raise UserError(f"Coiled holds no live key of {o.account_email}: run {command('gcp')} --project "
                            f"{o.project} to give it one, then rotate.")
        extra = (f"; delete {count(len(self.orphans), 'key')} an interrupted run left behind"
                 if self.orphans else "")
        if self.finishing:
            return Change(UPDATE if self.orphans else NOTHING, f"Coiled holds key {held.key_id[:12]}…, made by a "
                          "rotation that was interrupted" + extra, {"key_id": held.key_id})
        if self.resumed is not None:
            kid = self.resumed["private_key_id"]
            return Change(UPDATE if self.orphans else NOTHING, f"key {kid[:12]}… in {o.key_file}, made by a "
                          "rotation that was interrupted" + extra,
                          {"key_id": kid, "keyfile": self.resumed, "key_path": str(o.key_file)})
        age = age_days(held)
        if o.max_age is not None and age < o.max_age:
            return Change(UPDATE if self.orphans else NOTHING, f"Coiled's key {held.key_id[:12]}… is {age:.0f} days "
                          f"old, under --max-age {o.max_age:g}: nothing to rotate" + extra, {"key_id": held.key_id})
        if len(self.keys) - len(self.orphans) >= MAX_USER_KEYS:
            raise UserError(f"Service account {o.account_email} already has {len(self.keys)} user-managed keys, the "
                            f"most Google allows: delete one you no longer use (gcloud iam service-accounts keys "
                            f"list --iam-account {o.account_email}, then keys delete) and run again.")
        where = f", written to {o.key_file}" if o.key_file is not None else ""
        return Change(CREATE, f"create a new key of {o.account_email}{where} (Coiled's is {age:.0f} days old)"
                      + extra, {"key_id": None})

    def local_files(self, run: Run) -> list[LocalFile]:
        if run.opts.key_file is None or self.resumed is not None:
            return []
        return [LocalFile(Path(run.opts.key_file), "The key file", "choose another --key-file", private=True)]

    def apply(self, run: Run) -> str:
        done = []
        for kid in self.orphans:
            delete_key(run, kid)
        if self.orphans:
            done.append(f"deleted {count(len(self.orphans), 'orphaned key')}")
            self.orphans = []
        if run.key_id is not None:  # the plan keeps a key (resumed, or young enough)
            run.journal.set(key_pending=None)
            self.adopt(run)
            return ", ".join(done) or "nothing to do"
        data = create_key(run, run.opts.key_file, [k.key_id for k in self.keys])
        # Until the old key is deleted: a re-run after a crash finishes this rotation instead of starting another.
        run.journal.set(rotation={"from": run.coiled_credentials.get("private_key_id"),
                                  "to": data["private_key_id"]})
        done.append(f"created key {data['private_key_id'][:12]}…")
        return ", ".join(done)

    def adopt(self, run: Run) -> None:
        if self.resumed is not None:
            run.keyfile, run.key_id, run.key_path = self.resumed, self.resumed["private_key_id"], str(run.opts.key_file)


def steps_for(opts) -> list[Step]:
    return [NewKeyStep()]
