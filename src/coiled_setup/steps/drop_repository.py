"""Teardown: the registry repository, only when asked (it holds the software environments' images)."""

from __future__ import annotations

from coiled_setup import waiting
from coiled_setup.cloud import NotFound
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step


class DropRepositoryStep(Step):
    key = "repository"
    title = "Registry repository"
    permissions = ("artifactregistry.repositories.get", "artifactregistry.repositories.delete")

    def __init__(self):
        self.format: str | None = None

    def observe(self, run: Run) -> None:
        self.format = run.google.get_repository(run.opts.repository)

    def plan(self, run: Run) -> Change:
        name = run.opts.repository
        if self.format is None:
            return Change(NOTHING, f"no repository {name}")
        if (run.journal.get("created") or {}).get("repository") != name:
            return Change(NOTHING, f"leave {name}: this machine's journal does not say coiled-setup created it")
        return Change(UPDATE, f"delete {name} and every image in it")

    def apply(self, run: Run) -> str:
        g, o = run.google, run.opts
        try:
            op = g.start_delete_repository(o.repository)
            waiting.poll(lambda: g.operation_done("registry", op), timeout=o.wait_timeout,
                         what="deleting the repository", tick=run.ui.tick)
        except NotFound:
            pass  # an earlier try deleted it (its answer lost)
        self.format = None
        run.journal.forget("repository")
        return "deleted"


def steps_for(opts) -> list[Step]:
    return [DropRepositoryStep()] if opts.gar and opts.delete_repository else []
