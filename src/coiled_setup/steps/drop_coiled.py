"""Teardown, first: Coiled stops using the project (its credentials and GCP settings removed from the workspace)."""

from __future__ import annotations

from coiled_setup.options import SA_EMAIL_RE
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step


class DropCoiledStep(Step):
    key = "coiled"
    title = "Coiled workspace"

    def __init__(self):
        self.email: str | None = None
        self.unfinished = False

    def observe(self, run: Run) -> None:
        options = (run.coiled.backend_options() or {}).get("options") or {}
        self.email = (options.get("gcp_service_creds_dict") or {}).get("client_email")
        # The credentials went, the settings may not have (a run stopped between the two).
        self.unfinished = run.journal.get("coiled_teardown") == run.coiled.workspace

    def _ours(self, run: Run) -> bool:
        m = SA_EMAIL_RE.match(self.email or "")
        return bool(m) and m.group(3) == run.opts.project

    def plan(self, run: Run) -> Change:
        ws = run.coiled.workspace
        if not self.email:
            if self.unfinished:
                return Change(UPDATE, f"finish removing the GCP settings from workspace {ws}")
            return Change(NOTHING, f"workspace {ws} holds no Google Cloud credentials")
        if not self._ours(run):
            return Change(NOTHING, f"leave workspace {ws}: it uses {self.email}, of another project")
        return Change(UPDATE, f"remove the key of {self.email} and the GCP settings from workspace {ws}")

    def apply(self, run: Run) -> str:
        c = run.coiled
        run.journal.set(coiled_teardown=c.workspace)
        c.drop_credentials()
        c.drop_infrastructure()
        run.journal.set(coiled_teardown=None)
        self.email, self.unfinished = None, False
        return f"workspace {c.workspace} no longer uses project {run.opts.project}"


def steps_for(opts) -> list[Step]:
    return [DropCoiledStep()] if opts.upload else []
