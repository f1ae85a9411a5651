"""Reads the regional quotas that bound a cluster: shown in the plan and the summary, never a reason to stop."""

from __future__ import annotations

from coiled_setup import quotas
from coiled_setup.steps.base import CHECK, Change, Run, Step


class QuotasStep(Step):
    key = "quotas"
    title = "Quotas"
    # None required: without cloudquotas.quotas.get the plan says so in one sentence and the run goes on.
    permissions = ()

    def __init__(self):
        self.readings: list[quotas.Reading] = []

    def observe(self, run: Run) -> None:
        # Clusters may start where Coiled's images are too: the cluster region and each registry region.
        o = run.opts
        self.readings = quotas.read_all(run.google, o.project, quotas.regions_of(o.region, o.repo_regions))

    def plan(self, run: Run) -> Change:
        detail = quotas.sentences(self.readings)
        short = quotas.short_regions(self.readings)
        if short:
            regions = ", ".join(r.region for r in short)
            asks = ", ".join(f"`{c}`" for c in quotas.ask_more(self.readings))
            detail += f"; fewer than {quotas.WARN_BELOW} workers in {regions}: {asks} asks for more"
        return Change(CHECK, detail)

    def apply(self, run: Run) -> str:
        # Read once with the other observations: the summary says what the plan said.
        for r in quotas.short_regions(self.readings):
            run.ui.warn(r.warning_sentence())
        return quotas.sentences(self.readings)


def steps_for(opts) -> list[Step]:
    return [QuotasStep()]
