"""Teardown: the registry repositories coiled-setup created, only when asked (they hold the software environments'
images); one step for every registry region, like the step that made them."""

from __future__ import annotations

from coiled_setup import waiting
from coiled_setup.cloud import NotFound
from coiled_setup.concurrency import run_all
from coiled_setup.steps.base import NOTHING, UPDATE, Change, Run, Step


class DropRepositoryStep(Step):
    key = "repository"
    title = "Registry repository"
    permissions = ("artifactregistry.repositories.get", "artifactregistry.repositories.delete")

    def __init__(self):
        self.formats: dict[str, str | None] = {}  # each registry region's repository: its format, None when none

    def observe(self, run: Run) -> None:
        names = run.opts.repositories
        self.formats = dict(zip(names, run_all([lambda n=n: run.google.get_repository(n) for n in names]),
                                strict=True))

    def _doomed(self, run: Run) -> list[str]:
        ours = run.journal.created_repositories()
        return [n for n, fmt in self.formats.items() if fmt is not None and n in ours]

    def plan(self, run: Run) -> Change:
        lines = []
        for name, fmt in self.formats.items():
            if fmt is None:
                lines.append(f"no repository {name}")
            elif name not in run.journal.created_repositories():
                lines.append(f"leave {name}: this machine's journal does not say coiled-setup created it")
            else:
                lines.append(f"delete {name} and every image in it")
        return Change(UPDATE if self._doomed(run) else NOTHING, "; ".join(lines))

    def apply(self, run: Run) -> str:
        doomed = self._doomed(run)
        run_all([lambda n=n: self._delete(run, n) for n in doomed])
        return "deleted" if len(doomed) <= 1 else f"deleted {len(doomed)} repositories"

    def _delete(self, run: Run, name: str) -> None:
        g, o = run.google, run.opts
        try:
            op = g.start_delete_repository(name)
            waiting.poll(lambda: g.operation_done("registry", op), timeout=o.wait_timeout,
                         what="deleting the repository", tick=run.ui.tick)
        except NotFound:
            pass  # an earlier try deleted it (its answer lost)
        self.formats[name] = None
        run.journal.forget_repository(name)


def steps_for(opts) -> list[Step]:
    return [DropRepositoryStep()] if opts.gar and opts.delete_repository else []
