"""Rotation, last: the keys Coiled no longer uses are deleted, but only those this tool made or Coiled held."""

from __future__ import annotations

from coiled_setup.steps.account import delete_key
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step
from coiled_setup.wording import count


def _short(kid: str) -> str:
    return f"{kid[:12]}…"


class RetireKeysStep(Step):
    key = "retire"
    title = "Old keys deleted"
    after = ("new_key", "accepted", "handover")
    permissions = ("iam.serviceAccountKeys.list", "iam.serviceAccountKeys.delete")
    reads = ("key_id", "coiled_credentials")

    def __init__(self):
        self.live: list[str] = []

    def observe(self, run: Run) -> None:
        self.live = [k.key_id for k in run.google.list_user_keys(run.opts.account_email)]

    def _split(self, run: Run) -> tuple[list[str], list[str]]:
        """(to delete, to leave): the key Coiled held before and this tool's own go; someone else's stay."""
        keep = run.key_id
        was = run.coiled_credentials.get("private_key_id")
        ours = set(run.journal.our_keys()) | {was, (run.journal.get("rotation") or {}).get("from")} - {None}
        old = [k for k in self.live if k != keep and k in ours]
        foreign = [k for k in self.live if k != keep and k not in ours]
        return old, foreign

    def plan(self, run: Run) -> Change:
        was = run.coiled_credentials.get("private_key_id")
        old, foreign = self._split(run)
        if run.key_id is not None and run.key_id == was and not run.journal.get("rotation"):
            old = []  # nothing rotates: the keys stay as they are
        left = (f"; leave {count(len(foreign), 'key')} someone else created ({', '.join(map(_short, foreign))})"
                if foreign else "")
        if not old:
            if run.journal.get("rotation"):  # recorded by an interrupted rotation: closed here
                return Change(UPDATE, "no old key left to delete; close the interrupted rotation" + left)
            return Change(NOTHING, "no old key to delete" + left)
        return Change(UPDATE, f"delete {', '.join(map(_short, old))} once Coiled holds the new key" + left)

    def apply(self, run: Run) -> str:
        old, foreign = self._split(run)
        n = sum(delete_key(run, kid) for kid in old)
        run.journal.set(rotation=None)
        left = f"; left {count(len(foreign), 'key')} someone else created" if foreign else ""
        return f"deleted {count(n, 'old key')}{left}"


def steps_for(opts) -> list[Step]:
    return [RetireKeysStep()]
