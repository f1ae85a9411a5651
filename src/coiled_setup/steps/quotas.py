"""Reads the regional quotas that bound a cluster: shown in the plan and the summary, never a reason to stop."""

from __future__ import annotations

from coiled_setup import quotas
from coiled_setup.remedies import command
from coiled_setup.steps.base import CHECK, Change, Run, Step


class QuotasStep(Step):
    key = "quotas"
    title = "Quotas"
    # None required: without cloudquotas.quotas.get the plan says so in one sentence and the run goes on.
    permissions = ()

    def __init__(self):
        self.reading: quotas.Reading | None = None

    def observe(self, run: Run) -> None:
        self.reading = quotas.read(run.google, run.opts.project, run.opts.region)

    def plan(self, run: Run) -> Change:
        detail = self.reading.sentence()
        if self.reading.warning:
            detail += (f"; fewer than {quotas.WARN_BELOW} workers: `{command('quotas')} {self.reading.hint()}` "
                       "asks for more")
        return Change(CHECK, detail)

    def apply(self, run: Run) -> str:
        # Read once with the other observations: the summary says what the plan said.
        if self.reading.warning:
            run.ui.warn(self.reading.warning_sentence())
        return self.reading.sentence()


def steps_for(opts) -> list[Step]:
    return [QuotasStep()]
