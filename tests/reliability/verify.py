"""6. verify under faults: the verdict with transient faults is the verdict without."""

from __future__ import annotations

from tests.helpers import calls
from tests.reliability.common import (
    FAST,
    JSON_ARGS,
    MEMBER,
    ROLE,
    Figures,
    P,
    Ratio,
    configure,
)
from tests.reliability.lab import Lab, Outcome


def has_verify() -> bool:
    from coiled_setup.cli import app

    return any((c.name or getattr(c.callback, "__name__", "")) == "verify" for c in app.registered_commands)


def _verdict(out: Outcome) -> tuple:
    doc = out.doc or {}
    return out.code, tuple((c["name"], c["status"]) for c in doc.get("checks", []))


def run_verify(lab: Lab, runs: int = 8, rate: float = 0.2, seed: int = 3000) -> Figures:
    from tests.helpers import clients

    fig = Figures("verify")
    if not has_verify():
        fig.values = {"skipped": "coiled-setup has no verify command"}
        return fig
    sb = lab.sandbox(**FAST)
    assert lab.run(sb, *JSON_ARGS, what="the run before verify").code == 0
    same = total = injected = 0
    verdicts = []
    for setup, expected in (("healthy", 0), ("binding removed", 1)):
        if setup == "binding removed":
            c = clients(sb)
            pol = c.projects.get_iam_policy(request={"resource": f"projects/{P}",
                                                     "options": {"requested_policy_version": 3}})
            for b in pol.bindings:
                if b.role == ROLE and MEMBER in b.members:
                    b.members.remove(MEMBER)
            c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": pol})
            c.channel.close()
        plain = lab.run(sb, "verify", "--output", "json", what=f"verify ({setup})")
        want = _verdict(plain)
        verdicts.append(want[0])
        if want[0] != expected:
            fig.problems.append(f"verify ({setup}) without faults: exit {want[0]}, not {expected}: "
                                f"{plain.stderr.strip()[-300:]}{plain.crash[-300:]}")
        for i in range(runs):
            mark = len(calls(sb))
            configure(sb, fault_rate=rate, seed=seed + 100 * len(verdicts) + i)
            out = lab.run(sb, "verify", "--output", "json", what=f"verify under faults ({setup})")
            configure(sb, fault_rate=0.0)
            record = calls(sb, mark)
            injected += sum(1 for x in record if x["fault"])
            total += 1
            got = _verdict(out)
            if got == want:
                same += 1
            else:
                changed = [f"{a[0]} {b[1]}→{a[1]}" for a, b in zip(got[1], want[1], strict=False) if a != b]
                fig.problems.append(f"verify ({setup}), seed {seed + i}: exit {got[0]} (without faults {want[0]}); "
                                    f"{', '.join(changed) or out.stderr.strip()[:300]}")
            if any(x["write"] or x["mutating"] for x in record):
                fig.problems.append(f"verify ({setup}) wrote under faults")
    lab.stop(sb)
    fig.values = {"runs": total, "faults injected": injected, "same verdict as without faults": Ratio(same, total),
                  "verdicts without faults": "/".join(f"exit {v}" for v in verdicts)}
    return fig
