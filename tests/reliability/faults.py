"""1. transient faults: seeded runs with a share of Google and Coiled calls failing, each ending where
a fault-free run ends."""

from __future__ import annotations

from tests.helpers import calls, state
from tests.reliability.common import (
    FAST,
    JSON_ARGS,
    Figures,
    Ratio,
    converged,
    orphans,
)
from tests.reliability.lab import Lab, Reference, reference_run


def run_faults(lab: Lab, runs: int = 50, rate: float = 0.2, seed: int = 1000, ref: Reference | None = None,
               delayed: int = 10, delay_s: float = 0.5, list_lag_s: float = 3.0) -> Figures:
    """`runs` seeded runs with `rate` of Google and Coiled calls failing transiently (a failed write may have
    been made, its answer lost), then `delayed` more where Google is also eventually consistent: bindings and
    accounts take `delay_s`, a new key is refused for `delay_s`, and Google's key list shows a new key only
    after `list_lag_s` (so an immediate re-run, which must make no second key, does not see it listed)."""
    ref = ref or reference_run(lab)
    fig = Figures("faults")
    ok = same = orphan_keys = injected = conflicts = relisted = 0
    plan = [(seed + i, 0.0) for i in range(runs)] + [(seed + runs + i, delay_s) for i in range(delayed)]
    for n, (s, delay) in enumerate(plan):
        lag = dict(key_usable_s=delay, key_list_lag_s=list_lag_s) if delay else {}
        sb = lab.sandbox(fault_rate=rate, seed=s, propagation_delay_s=delay, **lag, **FAST)
        out = lab.run(sb, *JSON_ARGS, what=f"fault run {n}")
        record = calls(sb)
        injected += sum(1 for c in record if c["fault"])
        doc = out.doc or {}
        conflicts += doc.get("conflicts_retried", 0)
        label = f"seed {s}" + (f", propagation delay {delay} s" if delay else "")
        if out.code != 0 or out.crash:
            fig.problems.append(f"{label}: exit {out.code}: {out.stderr.strip()[-300:]}{out.crash[-600:]}")
        else:
            ok += 1
            problems = converged(sb, ref.state, dask=ref.dask)
            orphan_keys += len(orphans(sb, state(sb)))
            if delay and not problems:
                # At once again, while Google's list does not show the new key yet: nothing to change.
                sb.world.config.fault_rate = 0
                mark = len(record)
                again = lab.run(sb, *JSON_ARGS, what=f"the immediate re-run of fault run {n}")
                made = [c for c in calls(sb, mark) if c["method"] == "CreateServiceAccountKey"]
                if again.code != 0 or made or any(c["write"] for c in calls(sb, mark)):
                    problems.append(f"the immediate re-run exited {again.code}, made {len(made)} key(s)")
                relisted += 1
            if problems:
                fig.problems.append(f"{label}: " + "; ".join(problems))
            else:
                same += 1
        lab.stop(sb)
    fig.values = {"runs exiting 0": Ratio(ok, len(plan)), "with a propagation delay": delayed,
                  "faults injected": injected, "conflicts retried": conflicts,
                  "same final state as without faults": Ratio(same, len(plan)), "orphan keys": orphan_keys,
                  "immediate re-runs while the key list lags, with no second key": relisted}
    return fig
