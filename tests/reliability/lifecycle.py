"""7. the lifecycle: rotate-key and teardown under seeded faults, killed at their calls, and a teardown beside
a concurrent policy writer. After a rotation Coiled must hold a key Google accepts, and no other key of the
account may be left; a teardown must end where a fault-free one ends, losing nobody else's binding."""

from __future__ import annotations

import json
import signal
import threading
import time

from tests.helpers import calls, clients, state
from tests.reliability.common import (
    FAST,
    JSON_ARGS,
    MEMBER,
    REPO_ROLE,
    WS,
    Figures,
    P,
    Ratio,
    configure,
    diff,
    journal_path,
    key_file,
    normalise,
    user_keys,
)
from tests.reliability.concurrency import V3, PolicyWriter, _tuples, beside_writers
from tests.reliability.crashes import _release, kill_points
from tests.reliability.lab import Lab

ROTATE = ("rotate-key", "--non-interactive", "--yes", "--output", "json")
TEARDOWN = ("teardown", "--non-interactive", "--yes", "--output", "json")


def _set_up(lab: Lab, **config):
    sb = lab.sandbox(**{**FAST, **config})
    out = lab.run(sb, *JSON_ARGS, what="the setup before a lifecycle run")
    assert out.code == 0, out.stderr + out.crash
    return sb


def held(dump: dict) -> str | None:
    return (dump["coiled"]["workspaces"][WS].get("credentials") or {}).get("private_key_id")


def coiled_key_works(sb, dump: dict) -> list[str]:
    """Coiled holds a key that is live on Google (the old one goes only once Coiled holds the new)."""
    kid = held(dump)
    return [] if kid and kid in user_keys(dump) else [f"Coiled holds key {kid}, which Google does not have"]


def rotated(sb, before: str) -> list[str]:
    """After a finished rotation: a new key, the only one, in Coiled and the key file, accepted by Google."""
    dump = state(sb)
    kid = held(dump)
    problems = coiled_key_works(sb, dump)
    if kid == before:
        problems.append("Coiled still holds the old key")
    if user_keys(dump) != {kid}:
        problems.append(f"{len(user_keys(dump) - {kid})} key(s) besides Coiled's are left")
    if not key_file(sb).exists() or json.loads(key_file(sb).read_text())["private_key_id"] != kid:
        problems.append("the key file does not hold Coiled's key")
    else:
        c = clients(sb, json.loads(key_file(sb).read_text()))
        try:
            c.projects.test_iam_permissions(request={"resource": f"projects/{P}", "permissions": ["iam.roles.get"]})
        except Exception as e:  # noqa: BLE001 - reported as a problem
            problems.append(f"Google refuses the new key: {type(e).__name__}")
        finally:
            c.channel.close()
    j = json.loads(journal_path(sb).read_text())
    if j.get("key_pending") or j.get("rotation"):
        problems.append("the journal still holds a pending key or an open rotation")
    return problems


def teardown_reference(lab: Lab) -> dict:
    sb = _set_up(lab)
    out = lab.run(sb, *TEARDOWN, what="the reference teardown")
    assert out.code == 0, out.stderr + out.crash
    ref = normalise(state(sb))
    lab.stop(sb)
    return ref


def run_lifecycle_faults(lab: Lab, runs: int = 10, rate: float = 0.2, seed: int = 3000,
                         ref: dict | None = None) -> Figures:
    """Each seed: a setup, then a rotation and a teardown with `rate` of the calls failing transiently."""
    ref = ref or teardown_reference(lab)
    fig = Figures("lifecycle faults")
    rotations = teardowns = injected = 0
    for i in range(runs):
        sb = _set_up(lab)
        before = held(state(sb))
        mark = len(calls(sb))
        configure(sb, fault_rate=rate, seed=seed + i)
        out = lab.run(sb, *ROTATE, what=f"rotation under faults {i}")
        configure(sb, fault_rate=0)  # the checks' own calls must not meet a fault
        problems = [f"exit {out.code}: {out.stderr.strip()[-300:]}{out.crash[-600:]}"] if out.code else []
        problems = problems or rotated(sb, before)
        rotations += not problems
        fig.problems += [f"rotation, seed {seed + i}: {p}" for p in problems]
        configure(sb, fault_rate=rate, seed=seed + 1000 + i)
        out = lab.run(sb, *TEARDOWN, what=f"teardown under faults {i}")
        injected += sum(1 for c in calls(sb, mark) if c["fault"])
        configure(sb, fault_rate=0)
        problems = [f"exit {out.code}: {out.stderr.strip()[-300:]}{out.crash[-600:]}"] if out.code else []
        problems = problems or [f"state differs: {d}" for d in diff(ref, normalise(state(sb)))]
        teardowns += not problems
        fig.problems += [f"teardown, seed {seed + i}: {p}" for p in problems]
        lab.stop(sb)
    fig.values = {"rotations converged": Ratio(rotations, runs), "teardowns as without faults": Ratio(teardowns, runs),
                  "faults injected": injected}
    return fig


def _process_calls(lab: Lab, args: tuple) -> int:
    sb = _set_up(lab)
    mark = len(calls(sb))
    code, _, err = lab.reap(lab.spawn(sb, *args, tag=f"reference-{args[0]}"))
    assert code == 0, err
    n = len(calls(sb)) - mark
    lab.stop(sb)
    return n


def _kill_once(lab: Lab, args: tuple, point: int, ref: dict | None, lock: threading.Lock) -> tuple[bool, list[str]]:
    """SIGKILL `args` while the answer to its call `point` is held, then run it again."""
    with lock:
        sb = _set_up(lab)
        before = held(state(sb))
        mark = len(calls(sb))
        sb.world.config.hold_call, sb.world.config.hold_s = mark + point, 60
        proc = lab.spawn(sb, *args, tag=f"kill-{args[0]}-{point}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(calls(sb)) < mark + point:
        time.sleep(0.01)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    lab.reap(proc)
    _release(sb)
    problems = []
    if args[0] == "rotate-key":
        problems += [f"after the kill: {p}" for p in coiled_key_works(sb, state(sb))]
    with lock:
        out = lab.run(sb, *args, what=f"the {args[0]} after a kill at call {point}")
    if out.code != 0:
        problems.append(f"the run after the kill exited {out.code}: {out.stderr.strip()[:300]}{out.crash[-600:]}")
    elif args[0] == "rotate-key":
        problems += rotated(sb, before)
    else:
        problems += [f"state differs: {d}" for d in diff(ref, normalise(state(sb)))]
    with lock:
        lab.stop(sb)
    return not finished, [f"{args[0]} killed at call {point}: {p}" for p in problems]


def run_lifecycle_crashes(lab: Lab, points: int | None = None, workers: int = 3, ref: dict | None = None) -> Figures:
    """SIGKILL at every call (or `points` spread) of a rotation and of a teardown; each re-run must converge."""
    import concurrent.futures

    ref = ref or teardown_reference(lab)
    fig = Figures("lifecycle crashes")
    lock = threading.Lock()
    jobs = []
    totals = {}
    for args in (ROTATE, TEARDOWN):
        totals[args[0]] = total = _process_calls(lab, args)
        chosen = range(1, total) if points is None else kill_points(total - 1, points)
        jobs += [(args, n) for n in chosen]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda j: _kill_once(lab, j[0], j[1], ref, lock), jobs))
    for _, problems in results:
        fig.problems += problems
    killed = [(job, problems) for job, (was_killed, problems) in zip(jobs, results, strict=True) if was_killed]
    fig.values = {"calls in a rotation": totals["rotate-key"], "calls in a teardown": totals["teardown"],
                  "kill points": len(killed),
                  "converged": Ratio(sum(1 for _, p in killed if not p), len(killed)),
                  "Coiled without a working key": sum(1 for _, p in killed for x in p if "Google does not have" in x)}
    return fig


class _TeardownWriter(PolicyWriter):
    def _roles(self, target: str) -> list[str]:
        # Not the Coiled role: it is deleted meanwhile, and Google refuses new members of a deleted role.
        if "/repositories/" in target:
            return ["roles/artifactregistry.reader", "roles/artifactregistry.writer", REPO_ROLE]
        return ["roles/viewer", "roles/logging.viewer", "roles/storage.objectViewer"]


def run_teardown_concurrent(lab: Lab, runs: int = 3, seed: int = 4000) -> Figures:
    """A teardown while one foreign writer per policy (project, repository) keeps changing it."""
    fig = Figures("teardown concurrent")
    ok = made = lost = 0
    for i in range(runs):
        sb = _set_up(lab, latency_ms=4)
        sb.world.config.hold_method, sb.world.config.hold_s = "GetIamPolicy", 0.008
        out, c, read, before, writers = beside_writers(lab, sb, _TeardownWriter, seed + 10 * i, TEARDOWN,
                                                       f"teardown beside a writer {i}", "t")
        for w in writers:
            made += w.made
            if w.errors:
                fig.problems.append(f"run {i}: a writer failed: {w.errors[0]}")
        if out.code != 0:
            fig.problems.append(f"run {i}: exit {out.code}: {out.stderr.strip()[:300]}{out.crash[-600:]}")
        else:
            ok += 1
        for (t, pol_client), w in zip(read.items(), writers, strict=True):
            final = _tuples(pol_client.get_iam_policy(request={"resource": t, "options": V3}))
            expected = ({x for x in before[t] if x[2] != MEMBER} - w.removed[t]) | w.present[t]
            missing = expected - final
            lost += len(missing)
            if missing:
                fig.problems.append(f"run {i}: {t}: lost {sorted(missing)[:3]}")
            if any(x[2] == MEMBER for x in final):
                fig.problems.append(f"run {i}: {t}: the Coiled account is still bound")
            w.c.channel.close()
        c.channel.close()
        lab.stop(sb)
    fig.values = {"runs exiting 0": Ratio(ok, runs), "foreign changes kept/made": Ratio(made - lost, made),
                  "lost": lost}
    return fig
