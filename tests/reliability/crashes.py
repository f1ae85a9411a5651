"""3. crashes and resumes: SIGKILL at calls spread over a run, then a re-run that must converge; Ctrl-C
that must exit 130 with the resume hint."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

from tests.helpers import calls
from tests.reliability.common import (
    ARGS,
    FAST,
    JSON_ARGS,
    RESUME_HINT,
    Figures,
    Ratio,
    converged,
    journal_path,
)
from tests.reliability.lab import Lab, Reference, reference_run


def _release(sb) -> None:
    """Lets go of a held answer (the client that waited for it is dead) and holds nothing more."""
    sb.world.config.hold_call = 0
    sb.world.config.hold_method = ""
    sb.world.stopping.set()
    time.sleep(0.05)
    sb.world.stopping.clear()


def kill_points(total: int, n: int) -> list[int]:
    """`n` call numbers spread evenly over a run of `total` calls."""
    if n >= total:
        return list(range(1, total + 1))
    return sorted({1 + round(k * (total - 1) / (n - 1)) for k in range(n)})


def process_calls(lab: Lab) -> int:
    """How many calls a fault-free run makes as a real process (its waits are not shortened)."""
    sb = lab.sandbox(**FAST)
    code, _, err = lab.reap(lab.spawn(sb, *ARGS, tag="reference-process"))
    assert code == 0, err
    n = len(calls(sb))
    lab.stop(sb)
    return n


def crash_once(lab: Lab, point: int, ref: Reference, extra_args: tuple = (),
               lock: threading.Lock | None = None) -> tuple[bool, list[str]]:
    """SIGKILL the CLI while the answer to call `point` is held, then run again: (killed?, problems)."""
    lock = lock or threading.Lock()
    with lock:
        sb = lab.sandbox(hold_call=point, hold_s=60, **FAST)
        proc = lab.spawn(sb, *ARGS, *extra_args, tag=f"kill-{point}{'-'.join(extra_args)}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(calls(sb)) < point:
        time.sleep(0.01)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    code, _, err = lab.reap(proc)
    _release(sb)
    problems = []
    if finished and code != 0:
        problems.append(f"the run failed (exit {code}) before call {point}: {err.strip()[-200:]}")
    if journal_path(sb).exists():
        try:
            json.loads(journal_path(sb).read_text())
        except ValueError:
            problems.append("the journal is torn after the kill")
    with lock:
        out = lab.run(sb, *JSON_ARGS, *extra_args, what=f"the run after a kill at call {point}")
    if out.code != 0:
        problems.append(f"the run after the kill exited {out.code}: {out.stderr.strip()[:300]}{out.crash[-600:]}")
    else:
        problems += converged(sb, ref.state, dask=ref.dask, local_key="--no-local-key" not in extra_args)
    with lock:
        lab.stop(sb)
    return not finished, [f"kill at call {point}{' '.join(('',) + extra_args)}: {p}" for p in problems]


def interrupt_once(lab: Lab, method: str, config: dict, lock: threading.Lock) -> list[str]:
    """SIGINT (Ctrl-C) while the answer to `method` is held (or while waiting): exit 130 and a resume hint."""
    with lock:
        sb = lab.sandbox(hold_method=method, hold_s=60, **{**FAST, **config})
        proc = lab.spawn(sb, *ARGS, tag=f"sigint-{(method or 'wait').split()[-1].replace('/', '_')}")
    deadline = time.monotonic() + 60
    if method:
        while time.monotonic() < deadline and proc.poll() is None and not any(
                x["method"] == method and x["code"] in ("OK", 200, 201) for x in calls(sb)):
            time.sleep(0.01)
    else:  # waiting for the new account to become visible
        while time.monotonic() < deadline and proc.poll() is None and not any(
                x["method"] == "ListServiceAccountKeys" and x["code"] == "NOT_FOUND" for x in calls(sb)):
            time.sleep(0.01)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        code, _, err = lab.reap(proc, timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code, _, err = lab.reap(proc)
        code = f"none within 20 s (killed: {code})"
    took = time.monotonic() - t0
    _release(sb)
    problems = []
    if code != 130 or RESUME_HINT not in err or "Traceback" in err:
        problems.append(f"exit {code}, stderr {err.strip()[-300:]!r}")
    elif took > 5:
        problems.append(f"took {took:.1f} s to stop")
    sb.world.config.propagation_delay_s = 0
    with lock:
        out = lab.run(sb, *JSON_ARGS, what=f"the run after Ctrl-C at {method or 'a wait'}")
        if out.code != 0:
            problems.append(f"the run after it exited {out.code}: {out.stderr.strip()[:300]}")
        lab.stop(sb)
    return [f"Ctrl-C at {method or 'a wait'}: {p}" for p in problems]


INTERRUPTS = [("GetProject", {}), ("CreateRole", {}), ("POST /api/v2/cloud-credentials/{ws}/gcp", {}),
              ("", {"propagation_delay_s": 30})]


def run_crashes(lab: Lab, points: int = 34, memory_only: int = 8, workers: int = 3,
                ref: Reference | None = None) -> Figures:
    """SIGKILL at `points` calls spread over a run, and at `memory_only` more with --no-local-key (the key's
    only copy is in memory until Coiled holds it); then Ctrl-C at each of INTERRUPTS."""
    import concurrent.futures

    ref = ref or reference_run(lab)
    fig = Figures("crashes")
    total = process_calls(lab)
    chosen = [(n, ()) for n in kill_points(total - 1, points)]
    chosen += [(n, ("--no-local-key",)) for n in kill_points(total - 1, memory_only)]
    lock = threading.Lock()
    jobs = [(crash_once, (lab, n, ref, extra, lock)) for n, extra in chosen]
    jobs += [(interrupt_once, (lab, m, cfg, lock)) for m, cfg in INTERRUPTS]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda j: j[0](*j[1]), jobs))
    kills = [problems for killed, problems in results[:len(chosen)] if killed]
    sigints = results[len(chosen):]
    for r in results[:len(chosen)]:
        fig.problems += r[1]
    for r in sigints:
        fig.problems += r
    orphan_keys = sum(1 for r in kills for p in r if "orphan" in p)
    fig.values = {"kill points": len(kills),
                  "of which with --no-local-key": sum(1 for (_, extra), (killed, _)
                                                      in zip(chosen, results, strict=False) if extra and killed),
                  "calls in a run": total,
                  "converged": Ratio(sum(1 for r in kills if not r), len(kills)),
                  "orphan keys": orphan_keys,
                  "Ctrl-C exit 130 with a resume hint": Ratio(sum(1 for r in sigints if not r), len(sigints))}
    return fig
