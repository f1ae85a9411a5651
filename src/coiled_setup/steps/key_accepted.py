"""Rotation, second: Google accepts the new key (a call made with it) before Coiled gets it."""

from __future__ import annotations

from coiled_setup.steps.base import NOTHING, Change, Run, Step
from coiled_setup.steps.confirm import ConfirmStep


class KeyAcceptedStep(ConfirmStep):
    key = "accepted"
    title = "New key accepted by Google"
    after = ("new_key",)
    reads = ("key_id", "keyfile", "coiled_credentials")
    early = {}

    def observe(self, run: Run) -> None:
        """Nothing to test beforehand: the key it tests is the one the rotation makes."""

    def plan(self, run: Run) -> Change:
        if run.key_id is not None and run.key_id == run.coiled_credentials.get("private_key_id"):
            return Change(NOTHING, "Coiled keeps its key")
        return super().plan(run)


def steps_for(opts) -> list[Step]:
    return [KeyAcceptedStep()]
