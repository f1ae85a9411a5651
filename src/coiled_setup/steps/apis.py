"""Enables the Google APIs the later steps and Coiled need, before anything else changes."""

from __future__ import annotations

from coiled_setup import needs, waiting
from coiled_setup.steps.base import CREATE, NOTHING, Change, Run, Step


def wanted_services(opts) -> list[str]:
    return needs.services(opts.gar)


class ApisStep(Step):
    key = "apis"
    title = "Google APIs"

    def observe(self, run: Run) -> None:
        for s in wanted_services(run.opts):
            if not run.services.get(s):
                run.services[s] = run.google.service_enabled(run.opts.project, s)

    def _missing(self, run: Run) -> list[str]:
        return [s for s in wanted_services(run.opts) if not run.services.get(s)]

    def plan(self, run: Run) -> Change:
        missing = self._missing(run)
        if not missing:
            return Change(NOTHING, ", ".join(wanted_services(run.opts)) + " enabled")
        return Change(CREATE, "enable " + ", ".join(missing))

    def apply(self, run: Run) -> str:
        missing = self._missing(run)
        op = run.google.start_enable(run.opts.project, missing)
        if op:
            waiting.poll(lambda: run.google.operation_done("usage", op), timeout=run.opts.wait_timeout,
                         what="enabling " + ", ".join(missing), tick=run.ui.tick)
        for s in missing:
            run.services[s] = True
        return "enabled " + ", ".join(missing)
