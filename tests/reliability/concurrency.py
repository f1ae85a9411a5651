"""2. a concurrent writer: others change the project and repository policies (with etags) while the
wizard binds; nothing of theirs may be lost."""

from __future__ import annotations

import json
import random
import threading
import time

from tests.helpers import calls, clients
from tests.reliability.common import (
    ALL_SERVICES,
    FAST,
    JSON_ARGS,
    MEMBER,
    REPO,
    REPO_ROLE,
    ROLE,
    Figures,
    P,
    Ratio,
    _cond_key,
    scenario,
)
from tests.reliability.lab import Lab

COND = {"title": "until-2031", "description": "foreign, written during the wizard's run",
        "expression": 'request.time < timestamp("2031-01-01T00:00:00Z")'}


def _tuples(pb) -> set[tuple[str, str, str]]:
    out = set()
    for b in pb.bindings:
        cond = None
        if b.HasField("condition"):
            cond = {k: v for k, v in (("title", b.condition.title), ("description", b.condition.description),
                                      ("expression", b.condition.expression)) if v}
        for m in b.members:
            out.add((b.role, _cond_key(cond), m))
    return out


class PolicyWriter(threading.Thread):
    """Someone else, adding and removing unrelated bindings (some conditional) with etags, retrying conflicts."""

    def __init__(self, sb, key: dict, seed: int, targets: list[str], tag: str = "w"):
        super().__init__(daemon=True)
        self.tag = tag
        from tests.helpers import clients

        self.c = clients(sb, key)
        self.rng = random.Random(seed)
        self.targets = targets
        self.present: dict[str, set] = {t: set() for t in targets}
        self.removed: dict[str, set] = {t: set() for t in targets}
        self.made = 0
        self.conflicts = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.started_writing = threading.Event()

    def _client(self, target: str):
        return self.c.registry if "/repositories/" in target else self.c.projects

    def _roles(self, target: str) -> list[str]:
        # Our roles too: others' members (conditional or not) share the bindings the wizard adds to.
        if "/repositories/" in target:
            return ["roles/artifactregistry.reader", "roles/artifactregistry.writer", REPO_ROLE]
        return ["roles/viewer", "roles/logging.viewer", "roles/storage.objectViewer", ROLE]

    def change(self, i: int) -> None:
        from google.api_core import exceptions as gexc

        target = self.rng.choice(self.targets)
        if self.present[target] and self.rng.random() < 0.4:
            op, t = "remove", self.rng.choice(sorted(self.present[target]))
        else:
            cond = COND if self.rng.random() < 0.5 else None
            member = f"user:writer-{self.tag}-{i}@example.com"
            op, t = "add", (self.rng.choice(self._roles(target)), _cond_key(cond), member)
        client = self._client(target)
        while True:
            pol = client.get_iam_policy(request={"resource": target, "options": {"requested_policy_version": 3}})
            self._mutate(pol, op, t)
            pol.version = 3
            try:
                client.set_iam_policy(request={"resource": target, "policy": pol})
            except gexc.Aborted:
                self.conflicts += 1
                continue
            break
        self.made += 1
        if op == "add":
            self.present[target].add(t)
        else:
            self.present[target].discard(t)
            self.removed[target].add(t)

    @staticmethod
    def _mutate(pol, op: str, t: tuple[str, str, str]) -> None:
        role, cond, member = t
        for idx, b in enumerate(pol.bindings):
            here = _cond_key({k: v for k, v in (("title", b.condition.title), ("description", b.condition.description),
                                                ("expression", b.condition.expression)) if v}
                             if b.HasField("condition") else None)
            if b.role == role and here == cond:
                if op == "add":
                    b.members.append(member)
                else:
                    b.members.remove(member)
                    if not b.members:
                        del pol.bindings[idx]
                return
        assert op == "add", f"{t} vanished from the policy"
        nb = pol.bindings.add(role=role, members=[member])
        if cond:
            c = json.loads(cond)
            nb.condition.title, nb.condition.expression = c.get("title", ""), c["expression"]
            nb.condition.description = c.get("description", "")

    def run(self) -> None:
        i = 0
        try:
            while not self.stopping.is_set():
                self.change(i)
                self.started_writing.set()
                i += 1
                time.sleep(self.rng.uniform(0.002, 0.012))  # busy, yet leaving the wizard a chance
        except Exception as e:  # noqa: BLE001 - reported, not raised in a thread
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.started_writing.set()


def _writer_key(sb) -> dict:
    """A second principal, owner of the project, for the foreign writer (so its calls are told apart)."""
    from tests.helpers import clients

    c = clients(sb)
    sa = c.iam.create_service_account(name=f"projects/{P}", account_id="policy-writer")
    pol = c.projects.get_iam_policy(request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})
    pol.bindings.add(role="roles/owner", members=[f"serviceAccount:{sa.email}"])
    c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": pol})
    key = c.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{sa.email}")
    c.channel.close()
    return json.loads(key.private_key_data)


V3 = {"requested_policy_version": 3}


def beside_writers(lab, sb, writer_class, seed: int, args: tuple, what: str, tag: str):
    """Runs the CLI while one foreign writer per policy (the project's, the repository's) keeps changing it.

    Answers the outcome, the operator's clients, the policy readers by resource, each policy's bindings before
    (as tuples) and the writers, stopped and joined (their counts and errors for the caller to read)."""
    key = _writer_key(sb)
    lab.ledger.learn_key(key, "the foreign writer's private key")
    c = clients(sb)
    read = {f"projects/{P}": c.projects, REPO: c.registry}
    before = {t: _tuples(read[t].get_iam_policy(request={"resource": t, "options": V3})) for t in read}
    writers = [writer_class(sb, key, seed + n, [t], tag=f"{tag}{n}") for n, t in enumerate(read)]
    for w in writers:
        w.start()
        w.started_writing.wait(10)
    out = lab.run(sb, *args, what=what)
    for w in writers:
        w.stopping.set()
    for w in writers:
        w.join(30)
    return out, c, read, before, writers


def run_concurrent(lab: Lab, runs: int = 8, seed: int = 2000) -> Figures:
    """The wizard against a custom role that exists and a repository that exists, while one foreign writer per
    policy (project, repository) keeps changing it; latency gives each read-modify-write a window to lose."""
    from coiled_setup import role_templates

    fig = Figures("concurrent")
    ok = conflicts = aborted = made = lost = writer_conflicts = conditions_dropped = 0
    t = role_templates.load()
    scen = scenario(
        services=ALL_SERVICES,
        roles=[{"id": "coiled", "title": t.title, "description": t.description, "stage": t.stage,
                "permissions": list(t.permissions)}],
        repositories=[{"location": "us-east1", "id": "coiled", "format": "DOCKER",
                       "bindings": [{"role": "roles/artifactregistry.reader", "members": ["user:bo@example.com"]}]}],
    )
    targets = {f"projects/{P}": ROLE, REPO: REPO_ROLE}
    for i in range(runs):
        # Each policy read's answer waits 8 ms (the wizard's and the writers' alike): the other threads run
        # inside every read-modify-write window, so conflicts happen even when the machine is busy.
        sb = lab.sandbox(scen, latency_ms=4, hold_method="GetIamPolicy", hold_s=0.008, **FAST)
        mark = len(calls(sb))
        out, c, read, before, writers = beside_writers(lab, sb, PolicyWriter, seed + 10 * i, JSON_ARGS,
                                                       f"concurrent run {i}", "w")
        for w in writers:
            made += w.made
            writer_conflicts += w.conflicts
            if w.errors:
                fig.problems.append(f"run {i}: a writer failed: {w.errors[0]}")
        doc = out.doc or {}
        conflicts += doc.get("conflicts_retried", 0)
        aborted += sum(1 for x in calls(sb, mark) if x["method"] == "SetIamPolicy" and x["code"] == "ABORTED"
                       and x["caller"] == sb.operator_email)
        if out.code != 0:
            fig.problems.append(f"run {i}: exit {out.code}: {out.stderr.strip()[:300]}{out.crash[-600:]}")
        else:
            ok += 1
        for (t, ours), w in zip(targets.items(), writers, strict=True):
            final = _tuples(read[t].get_iam_policy(request={"resource": t, "options": V3}))
            expected = (before[t] - w.removed[t]) | w.present[t]
            missing = expected - final
            resurrected = final & w.removed[t]
            lost += len(missing) + len(resurrected)
            if missing or resurrected:
                fig.problems.append(f"run {i}: {t}: lost {sorted(missing)[:3]}, removed yet present "
                                    f"{sorted(resurrected)[:3]}")
            if (ours, "", MEMBER) not in final:
                fig.problems.append(f"run {i}: {t}: our binding is missing")
            extra = {x for x in final if x[2] != MEMBER} - expected
            if extra:
                fig.problems.append(f"run {i}: {t}: unexpected bindings {sorted(extra)[:3]}")
            # A conditional binding that came back without its condition.
            conditions_dropped += sum(1 for role, cond, member in expected
                                      if cond and (role, cond, member) not in final and (role, "", member) in final)
            w.c.channel.close()
        c.channel.close()
        lab.stop(sb)
    if conflicts != aborted:
        fig.problems.append(f"the wizard reported {conflicts} conflicts, the record shows {aborted} ABORTED writes")
    fig.values = {"runs exiting 0": Ratio(ok, runs), "conflicts retried": conflicts,
                  "ABORTED writes of the wizard in the record": aborted,
                  "foreign changes kept/made": Ratio(made - lost, made), "lost": lost,
                  "conditions dropped": conditions_dropped, "writers' own conflicts": writer_conflicts}
    return fig
