"""Teardown, last: the local key file of a removed account, and the journal's record of what was set up."""

from __future__ import annotations

import json
from pathlib import Path

from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step


class ForgetStep(Step):
    key = "local"
    title = "Local files"
    after = ("account",)

    def __init__(self):
        self.key_file: Path | None = None

    def observe(self, run: Run) -> None:
        recorded = run.journal.get("key_file")
        path = Path(recorded) if recorded else None
        self.key_file = None
        if path is not None and path.is_file():
            try:
                holder = json.loads(path.read_text()).get("client_email")
            except (OSError, ValueError, AttributeError):
                holder = None
            if holder == run.opts.account_email:
                self.key_file = path

    def _recorded(self, run: Run) -> bool:
        return any(run.journal.get(k) for k in ("settings", "key_id", "key_file", "rotation", "key_pending"))

    def plan(self, run: Run) -> Change:
        if self.key_file is None and not self._recorded(run):
            return Change(NOTHING, "nothing recorded")
        what = [f"delete {self.key_file}"] if self.key_file else []
        return Change(UPDATE, "; ".join(what + ["clear the journal's settings of this setup (what is left "
                                                "stays recorded)"]))

    def apply(self, run: Run) -> str:
        done = []
        if self.key_file is not None:
            self.key_file.unlink(missing_ok=True)
            done.append("deleted the key file")
        run.journal.set(settings={}, key_id=None, key_file=None, rotation=None, key_pending=None)
        return ", ".join(done + ["journal's settings cleared"])


def steps_for(opts) -> list[Step]:
    return [ForgetStep()]
