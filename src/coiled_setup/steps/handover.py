"""Rotation, third: Coiled's workspace gets the new key, and is read back holding it."""

from __future__ import annotations

from coiled_setup.errors import UserError
from coiled_setup.remedies import command
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step


class HandOverStep(Step):
    key = "handover"
    title = "Key handed to Coiled"
    after = ("new_key", "accepted")
    reads = ("key_id", "keyfile")

    def __init__(self):
        self.held: str | None = None
        self.instance: str | None = None

    def observe(self, run: Run) -> None:
        options = (run.coiled.backend_options() or {}).get("options") or {}
        creds = options.get("gcp_service_creds_dict") or {}
        self.held = creds.get("private_key_id")
        self.instance = options.get("instance_service_account") or None

    def plan(self, run: Run) -> Change:
        ws = run.coiled.workspace
        if run.key_id is not None and run.key_id == self.held:
            return Change(NOTHING, f"workspace {ws} holds key {self.held[:12]}…")
        new = f"{run.key_id[:12]}…" if run.key_id else "the new key"
        return Change(UPDATE, f"workspace {ws}: key {(self.held or 'none')[:12]}… → {new}"
                      + (f", instance account {self.instance} kept" if self.instance else ""))

    def apply(self, run: Run) -> str:
        if run.keyfile is None:
            raise UserError(f"This run does not hold the new key's private half: run {command('rotate-key')} again "
                            "(the key nobody holds is deleted).")
        c = run.coiled
        c.store_credentials(run.keyfile, self.instance)
        # Read back: the old key is deleted only once Coiled is seen holding the new one.
        self.observe(run)
        if self.held != run.key_id:
            raise UserError(f"Coiled's workspace {c.workspace} still holds key {(self.held or 'none')[:12]}… after "
                            f"receiving the new one: run {command('rotate-key')} again (the old key is kept until "
                            "Coiled holds the new one).")
        run.journal.set(key_id=run.key_id)
        return f"workspace {c.workspace} holds key {run.key_id[:12]}…"


def steps_for(opts) -> list[Step]:
    return [HandOverStep()]
