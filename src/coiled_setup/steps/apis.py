"""Enables the Google APIs the later steps and Coiled need, before anything else changes."""

from __future__ import annotations

from coiled_setup import needs, waiting
from coiled_setup.steps.base import CREATE, NOTHING, Change, Run, Step


def wanted_services(opts) -> list[str]:
    return needs.services(opts.gar, opts.bigquery)


class ApisStep(Step):
    key = "apis"
    alone = True  # a project without billing is told before any other write
    after_preflight = True  # it observes the preflight's answers
    title = "Google APIs"
    permissions = ("serviceusage.services.get", "serviceusage.services.enable")
    publishes = ("services",)

    def __init__(self):
        self.enabled: dict[str, bool] = {}
        self.observed = False

    def observe(self, run: Run) -> None:
        # The preflight read them all moments ago; a retry reads again, in one call, what was not on.
        wanted = wanted_services(run.opts)
        self.enabled = {s: bool(run.services.get(s)) for s in wanted}
        off = [s for s in wanted if not self.enabled[s]]
        if off and (self.observed or any(s not in run.services for s in off)):
            self.enabled.update(run.google.services_enabled(run.opts.project, off))
        self.observed = True

    def _missing(self, run: Run) -> list[str]:
        return [s for s in wanted_services(run.opts) if not self.enabled.get(s)]

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
            self.enabled[s] = run.services[s] = True
        return "enabled " + ", ".join(missing)


def steps_for(opts) -> list[Step]:
    return [ApisStep()]
