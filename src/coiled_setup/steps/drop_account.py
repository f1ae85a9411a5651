"""Teardown: a service account coiled-setup created, deleted with its keys; for any other account, only the keys
coiled-setup made."""

from __future__ import annotations

from coiled_setup.cloud import NotFound
from coiled_setup.steps.account import MARKER, delete_key
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step
from coiled_setup.wording import count


def _short(kid: str) -> str:
    return f"{kid[:12]}…"


class DropAccountStep(Step):
    permissions = ("iam.serviceAccounts.get", "iam.serviceAccounts.delete", "iam.serviceAccountKeys.list",
                   "iam.serviceAccountKeys.delete")
    reads = ("coiled_credentials",)

    def __init__(self, key: str, title: str, email, created: str, after: tuple[str, ...] = ()):
        self.key, self.title, self.email, self.created, self.after = key, title, email, created, after
        self.account = None
        self.keys: list[str] = []

    def observe(self, run: Run) -> None:
        email = self.email(run)
        self.account = run.google.get_account(email)
        self.keys = [k.key_id for k in run.google.list_user_keys(email)] if self.account else []

    def _made_here(self, run: Run) -> bool:
        """Created by coiled-setup: this machine's journal says so, or its description carries the marker."""
        return ((run.journal.get("created") or {}).get(self.created) == self.email(run)
                or MARKER in (self.account.description or ""))

    def _split(self, run: Run) -> tuple[list[str], list[str]]:
        """The account's keys: (this tool's, or the one Coiled held) and (someone else's)."""
        ours = set(run.journal.our_keys()) | {run.coiled_credentials.get("private_key_id")}
        return [k for k in self.keys if k in ours], [k for k in self.keys if k not in ours]

    def plan(self, run: Run) -> Change:
        email = self.email(run)
        if self.account is None:
            return Change(NOTHING, f"no account {email}")
        ours, foreign = self._split(run)
        if not self._made_here(run):
            if not ours:
                return Change(NOTHING, f"leave {email}: coiled-setup did not create it")
            return Change(UPDATE, f"delete {count(len(ours), 'key')} coiled-setup made; leave {email}: coiled-setup "
                          "did not create it")
        if foreign:
            keep = (f"leave {email}: it holds {count(len(foreign), 'key')} coiled-setup did not create "
                    f"({', '.join(map(_short, foreign))}); delete those and run teardown again to remove it")
            if not ours:
                return Change(NOTHING, keep)
            return Change(UPDATE, f"delete {count(len(ours), 'key')} coiled-setup made; {keep}")
        return Change(UPDATE, f"delete {email}" + (f" and its {count(len(ours), 'key')}" if ours else ""))

    def apply(self, run: Run) -> str:
        email = self.email(run)
        ours, foreign = self._split(run)
        if self._made_here(run) and not foreign:
            try:
                run.google.delete_account(email)
            except NotFound:
                pass  # an earlier try deleted it (its answer lost)
            run.journal.forget(self.created)
            for kid in ours:
                run.journal.drop_key(kid)
            self.account = None
            return "deleted" + (f" with {count(len(ours), 'key')}" if ours else "")
        n = sum(delete_key(run, kid) for kid in ours if kid in self.keys)
        return f"deleted {count(n, 'key')}; account kept"


def steps_for(opts) -> list[Step]:
    return [DropAccountStep("account", "Service account and keys", lambda run: run.opts.account_email, "account",
                            after=("coiled", "binding", "registry_access"))]


def instance_account(opts) -> DropAccountStep:
    from coiled_setup.steps.instance import instance_email

    return DropAccountStep("instance", "Instance service account", lambda run: instance_email(run.opts),
                           "instance_account", after=("coiled", "instance_binding"))
