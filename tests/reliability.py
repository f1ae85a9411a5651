"""Reliability and security of `coiled-setup gcp` (and `verify`): transient faults, a concurrent policy writer,
crashes and resumes, bad input, and secrets, each scenario measured.

    python -m tests.reliability            # one line of figures per area

tests/test_reliability.py runs the same scenario runners and asserts on what they report. Every run talks to
a sandbox on 127.0.0.1 and is seeded. Wizard runs happen in this process (typer's CliRunner, with the
environment a user would have), except where a real process has to die (SIGKILL, SIGINT).

In-process runs scale the back-off sleeps of the product by SLEEP_SCALE (through the sleep of its retry
policy, coiled_setup.retry): the sandbox answers at once, so the waits only cost time; the calls made, their
order and the retry budgets are unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coiled_setup.sandbox import Config, Sandbox
from coiled_setup.sandbox.scenario import DEFAULT_PROJECT, DEFAULT_SCENARIO, DEFAULT_TOKEN
from tests import json_contract
from tests.helpers import calls, http, state

P = DEFAULT_PROJECT
SA = f"coiled@{P}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{SA}"
ROLE = f"projects/{P}/roles/coiled"
REPO = f"projects/{P}/locations/us-east1/repositories/coiled"
REPO_ROLE = "roles/artifactregistry.repoAdmin"
WS = "demo"
ARGS = ("gcp", "--non-interactive", "--yes")
JSON_ARGS = ARGS + ("--output", "json")
FAST = dict(operation_s=0.05, infra_s=0.05)
SLEEP_SCALE = 0.02
USER_VARS = ("GOOGLE_", "CLOUDSDK_", "DASK_", "COILED_", "GCE_", "XDG_")
RESUME_HINT = "Run the same command again"
ALL_SERVICES = ["iam.googleapis.com", "cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com",
                "compute.googleapis.com", "logging.googleapis.com", "artifactregistry.googleapis.com"]


# -- the sandbox as a test sees it --------------------------------------------------------------------------------

def configure(sb, **values) -> None:
    status, body = http("POST", f"{sb.coiled_url}/_sandbox/config", values)
    assert status == 200, body


def writes(sb, since: int = 0) -> list[dict]:
    return [c for c in calls(sb, since) if c["write"] or c["mutating"]]


def scenario(**project) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update(project)
    return s


def _cond_key(cond) -> str:
    return json.dumps(cond, sort_keys=True) if cond else ""


def _norm_policy(pol: dict) -> dict:
    return {
        "version": pol["version"],
        "bindings": sorted(
            ({"role": b["role"], "members": sorted(b["members"]), "condition": b.get("condition")}
             for b in pol["bindings"]),
            key=lambda b: (b["role"], _cond_key(b["condition"]), b["members"]),
        ),
    }


def normalise(dump: dict) -> dict:
    """The sandbox state without what differs from run to run: ids, etags, numbers, key ids, timestamps."""
    d = json.loads(json.dumps(dump))
    d.pop("config", None)
    for p in d["projects"].values():
        p.pop("number", None)
        p["policy"] = _norm_policy(p["policy"])
    d["service_accounts"] = {
        e: {**{k: v for k, v in a.items() if k not in ("unique_id", "user_keys")}, "user_keys": len(a["user_keys"])}
        for e, a in d["service_accounts"].items()
    }
    d["keys"] = sorted(Counter((k["email"], k["type"], k["disabled"]) for k in d["keys"].values()).items())
    for r in d["repositories"].values():
        r["policy"] = _norm_policy(r["policy"])
    for w in d["coiled"]["workspaces"].values():
        if w.get("credentials"):
            w["credentials"] = {k: v for k, v in w["credentials"].items() if k not in ("private_key_id", "client_id")}
    return d


def diff(a, b, path="") -> list[str]:
    """Where two normalised states differ (first few places)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'missing' if k not in b else 'extra'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out[:5]
    return [] if a == b else [f"{path}: {json.dumps(b)[:160]} (expected {json.dumps(a)[:160]})"]


# -- secrets ---------------------------------------------------------------------------------------------------------

PEM_LINE = re.compile(r"[A-Za-z0-9+/]{64}")


class Ledger:
    """Every secret a run could leak (private keys, Coiled tokens), and every text and file checked for them."""

    def __init__(self):
        self.needles: dict[str, str] = {}
        self.texts = 0
        self.files = 0
        self.leaks: list[str] = []
        self._seen: list[tuple[str, str]] = []  # rechecked at the end, for keys learned after a text was seen

    def learn_key(self, keyfile: dict, what: str) -> None:
        body = [ln for ln in str(keyfile.get("private_key", "")).splitlines() if ln and not ln.startswith("-----")]
        for ln in body[:2] + body[-3:-1]:
            if len(ln) >= 40:
                self.needles[ln] = what

    def learn_token(self, token: str, what: str = "the Coiled token") -> None:
        if token:
            self.needles[token] = what

    def learn_sandbox(self, sb) -> None:
        self.learn_key(json.loads(sb.operator_key_path.read_text()), "the operator's private key")
        for token in sb.world.coiled.users:
            self.learn_token(token)

    def scan(self, where: str, text: str | None) -> None:
        if not text:
            return
        self.texts += 1
        self._seen.append((where, text))
        if "PRIVATE KEY" in text:
            self.leaks.append(f"a PEM private key marker in {where}")
        elif PEM_LINE.search(text):
            self.leaks.append(f"a PEM-like base64 line in {where}")

    def scan_state(self, where: str, dump: dict) -> None:
        """The sandbox keeps public keys only, and no token."""
        for k in dump.get("keys", {}).values():
            if "PRIVATE" in k.get("public_key", ""):
                self.leaks.append(f"a private key in the sandbox state ({where})")
        self.texts += 1
        self._seen.append((f"the sandbox state ({where})", json.dumps(dump).replace("\\n", "\n")))

    def check(self) -> list[str]:
        """Every leak: the markers seen so far, and every secret now known in every text seen."""
        found = list(self.leaks)
        for where, text in self._seen:
            found += [f"{what} in {where}" for needle, what in self.needles.items() if needle in text]
        return list(dict.fromkeys(found))

    def scan_home(self, sb, where: str) -> None:
        """Key files 0600 in 0700 directories; the journal and the dask config hold no secret."""
        home = sb.state_dir / "home"
        for f in sorted(home.rglob("*")) if home.exists() else []:
            if f.is_dir():
                continue
            self.files += 1
            mode = stat.S_IMODE(f.stat().st_mode)
            parent = stat.S_IMODE(f.parent.stat().st_mode)
            if mode != 0o600 or parent != 0o700:
                self.leaks.append(f"{f.relative_to(home)} has mode {mode:o} in a {parent:o} directory ({where})")
            if f.parent.parent.name == "keys" and f.suffix == ".json":
                try:
                    self.learn_key(json.loads(f.read_text()), "a Coiled account's private key")
                except ValueError:
                    pass
            else:
                self.scan(f"{f.relative_to(home)} ({where})", f.read_text(errors="replace"))
        dask = sb.state_dir / "dask" / "coiled.yaml"
        if dask.exists():
            text = dask.read_text()
            self.scan(f"coiled.yaml ({where})", text.replace(DEFAULT_TOKEN, ""))  # a token the user put there


# -- running the wizard ----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    messages: list[str] = field(default_factory=list)  # every UserError / CloudError message raised
    crash: str = ""  # a traceback that escaped, if any

    @property
    def doc(self) -> dict | None:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


@contextlib.contextmanager
def raised_messages():
    """Collects the message of every product exception created meanwhile (to scan them for secrets)."""
    from coiled_setup.cloud import CloudError
    from coiled_setup.errors import UserError

    seen: list[str] = []
    originals = {cls: cls.__init__ for cls in (UserError, CloudError)}

    def spy(cls):
        original = originals[cls]

        def init(self, message, *args, **kw):
            seen.append(str(message))
            original(self, message, *args, **kw)
        return init

    for cls in originals:
        cls.__init__ = spy(cls)
    try:
        yield seen
    finally:
        for cls, original in originals.items():
            cls.__init__ = original


@contextlib.contextmanager
def quick_backoff(scale: float = SLEEP_SCALE):
    """The back-off sleeps shortened (see the module docstring), through the retry policy every wait of the
    product sleeps with."""
    from dataclasses import replace

    from coiled_setup import retry

    with retry.use(replace(retry.current(), sleep=lambda seconds: time.sleep(seconds * scale))):
        yield


class Lab:
    """Sandboxes under one directory, the runs made against them, and the secrets ledger."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger()
        self.count = 0
        self._live: list[Sandbox] = []

    def sandbox(self, scen: dict | None = None, **config) -> Sandbox:
        self.count += 1
        sb = Sandbox(scen, Config(**config), state_dir=self.base / f"sb{self.count}").start()
        self._live.append(sb)
        self.ledger.learn_sandbox(sb)
        return sb

    def stop(self, sb) -> None:
        """Scans the sandbox's state and files for secrets, then stops it."""
        self.ledger.scan_home(sb, f"sandbox {sb.state_dir.name}")
        self.ledger.scan_state(sb.state_dir.name, state(sb))
        sb.stop()
        self._live.remove(sb)

    def close(self) -> None:
        for sb in list(self._live):
            sb.stop()
        self._live.clear()

    def env(self, sb, extra: dict | None = None) -> dict[str, str | None]:
        """What a user's shell would hold: the sandbox's variables, a private HOME, nothing of ours."""
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(USER_VARS)}
        home = self.base / "user-home"
        home.mkdir(exist_ok=True)
        env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), NO_COLOR="1", COLUMNS="200",
                   GRPC_VERBOSITY="ERROR", NO_GCE_CHECK="True", GCE_METADATA_IP="127.0.0.1:9",
                   GCE_METADATA_HOST="127.0.0.1:9")
        if sb is not None:
            env.update(sb.env)
        env.update(extra or {})
        return env

    def run(self, sb, *args, env: dict | None = None, what: str = "run") -> Outcome:
        """The CLI in this process; its outputs and exception messages are scanned for secrets."""
        from typer.testing import CliRunner

        from coiled_setup.cli import app

        with raised_messages() as seen, quick_backoff():
            r = CliRunner().invoke(app, list(args), env=self.env(sb, env))
        crash = ""
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            crash = "".join(traceback.format_exception(*r.exc_info))
        out = Outcome(r.exit_code, r.stdout, r.stderr, seen, crash)
        json_contract.check_output(out.stdout)
        for name, text in (("stdout", out.stdout), ("stderr", out.stderr), ("a traceback", crash)):
            self.ledger.scan(f"{name} of {what}", text)
        for m in seen:
            self.ledger.scan(f"an exception message of {what}", m)
        return out

    def spawn(self, sb, *args, env: dict | None = None, tag: str = "proc") -> subprocess.Popen:
        """The CLI as a real process (to be killed); its outputs go to files scanned by `reap`."""
        full = {k: v for k, v in os.environ.items() if not k.startswith(USER_VARS)}
        full.update({k: v for k, v in self.env(sb, env).items() if v is not None})
        out = open(self.base / f"{tag}.out", "w")
        err = open(self.base / f"{tag}.err", "w")
        proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", *args], env=full, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        proc.tag = tag  # type: ignore[attr-defined]
        out.close()
        err.close()
        return proc

    def reap(self, proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
        code = proc.wait(timeout=timeout)
        tag = proc.tag  # type: ignore[attr-defined]
        stdout = (self.base / f"{tag}.out").read_text()
        stderr = (self.base / f"{tag}.err").read_text()
        self.ledger.scan(f"stdout of {tag}", stdout)
        self.ledger.scan(f"stderr of {tag}", stderr)
        json_contract.check_output(stdout)
        return code, stdout, stderr


# -- what a finished run must leave ----------------------------------------------------------------------------------

def journal_path(sb) -> Path:
    return sb.state_dir / "home" / "state" / f"journal-{P}.json"


def key_file(sb) -> Path:
    return sb.state_dir / "home" / "keys" / P / "coiled.json"


def user_keys(dump: dict, email: str = SA) -> set[str]:
    return set(dump["service_accounts"].get(email, {}).get("user_keys", []))


def orphans(sb, dump: dict, before: set[str] = frozenset()) -> set[str]:
    """User-managed keys of the account that are neither the key file's, nor Coiled's, nor there before."""
    kept = set(before)
    if key_file(sb).exists():
        kept.add(json.loads(key_file(sb).read_text())["private_key_id"])
    creds = dump["coiled"]["workspaces"].get(WS, {}).get("credentials") or {}
    kept.add(creds.get("private_key_id"))
    return user_keys(dump) - kept


def journal_problems(sb, dump: dict, local_key: bool = True) -> list[str]:
    """After a converged run: the journal names the live key of the key file (or Coiled's), nothing pending."""
    try:
        j = json.loads(journal_path(sb).read_text())
    except (OSError, ValueError) as e:
        return [f"journal unreadable: {type(e).__name__}"]
    live = user_keys(dump)
    out = []
    if j.get("key_pending"):
        out.append("a key is still pending in the journal")
    if j.get("account") != SA:
        out.append(f"journal names account {j.get('account')}")
    if local_key:
        kid = json.loads(key_file(sb).read_text())["private_key_id"] if key_file(sb).exists() else None
        if j.get("key_id") != kid or j.get("key_file") != str(key_file(sb)):
            out.append("journal's key is not the key file's")
    else:
        kid = (dump["coiled"]["workspaces"][WS].get("credentials") or {}).get("private_key_id")
        if j.get("key_id") != kid or j.get("key_file") or key_file(sb).exists():
            out.append("journal's key is not Coiled's, or a key file was written")
    if kid not in live:
        out.append("the key in use is not live")
    if set(j.get("keys", [])) - live:
        out.append("journal lists keys that no longer exist")
    return out


def converged(sb, reference: dict, *, before: set[str] = frozenset(), dask: dict | None = None,
              local_key: bool = True) -> list[str]:
    """Problems of a finished setup compared with a fault-free run's normalised state."""
    dump = state(sb)
    problems = [f"state differs: {d}" for d in diff(reference, normalise(dump))]
    new = user_keys(dump) - set(before)
    if len(new) != 1:
        problems.append(f"{len(new)} new user-managed keys, not 1")
    if orphans(sb, dump, before):
        problems.append(f"{len(orphans(sb, dump, before))} orphan key(s)")
    problems += journal_problems(sb, dump, local_key)
    if dask is not None:
        f = sb.state_dir / "dask" / "coiled.yaml"
        if not f.exists() or yaml.safe_load(f.read_text()) != dask:
            problems.append("dask config differs")
    return problems


def dask_config(sb) -> dict | None:
    f = sb.state_dir / "dask" / "coiled.yaml"
    return yaml.safe_load(f.read_text()) if f.exists() else None


@dataclass
class Reference:
    state: dict
    dask: dict | None
    calls: int


def reference_run(lab: Lab, **config) -> Reference:
    """A fault-free run from the default scenario: what every other run must end in."""
    sb = lab.sandbox(**{**FAST, **config})
    out = lab.run(sb, *JSON_ARGS, what="the reference run")
    assert out.code == 0, out.stderr + out.crash
    ref = Reference(normalise(state(sb)), dask_config(sb), len(calls(sb)))
    lab.stop(sb)
    return ref


# == 1. transient faults =============================================================================================

@dataclass(frozen=True)
class Ratio:
    n: int
    of: int

    def __str__(self) -> str:
        return f"{self.n}/{self.of}"

    @property
    def all(self) -> bool:
        return self.n == self.of


@dataclass
class Figures:
    area: str
    values: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.area + ':':<11} " + ", ".join(f"{k} {v}" for k, v in self.values.items())


def run_faults(lab: Lab, runs: int = 50, rate: float = 0.2, seed: int = 1000, ref: Reference | None = None,
               delayed: int = 10, delay_s: float = 0.5) -> Figures:
    """`runs` seeded runs with `rate` of Google and Coiled calls failing transiently (a failed write may have
    been made, its answer lost), then `delayed` more where Google is also eventually consistent (`delay_s`)."""
    ref = ref or reference_run(lab)
    fig = Figures("faults")
    ok = same = orphan_keys = injected = conflicts = 0
    plan = [(seed + i, 0.0) for i in range(runs)] + [(seed + runs + i, delay_s) for i in range(delayed)]
    for n, (s, delay) in enumerate(plan):
        sb = lab.sandbox(fault_rate=rate, seed=s, propagation_delay_s=delay, **FAST)
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
            if problems:
                fig.problems.append(f"{label}: " + "; ".join(problems))
            else:
                same += 1
        lab.stop(sb)
    fig.values = {"runs exiting 0": Ratio(ok, len(plan)), "with a propagation delay": delayed,
                  "faults injected": injected, "conflicts retried": conflicts,
                  "same final state as without faults": Ratio(same, len(plan)), "orphan keys": orphan_keys}
    return fig


# == 2. a concurrent writer ==========================================================================================

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


def run_concurrent(lab: Lab, runs: int = 8, seed: int = 2000) -> Figures:
    """The wizard against a custom role that exists and a repository that exists, while one foreign writer per
    policy (project, repository) keeps changing it; latency gives each read-modify-write a window to lose."""
    from coiled_setup import role_templates
    from tests.helpers import clients

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
        key = _writer_key(sb)
        lab.ledger.learn_key(key, "the foreign writer's private key")
        c = clients(sb)
        read = {f"projects/{P}": c.projects, REPO: c.registry}
        v3 = {"requested_policy_version": 3}
        before = {t: _tuples(read[t].get_iam_policy(request={"resource": t, "options": v3})) for t in targets}
        writers = [PolicyWriter(sb, key, seed + 10 * i + n, [t], tag=f"w{n}") for n, t in enumerate(targets)]
        mark = len(calls(sb))
        for w in writers:
            w.start()
            w.started_writing.wait(10)
        out = lab.run(sb, *JSON_ARGS, what=f"concurrent run {i}")
        for w in writers:
            w.stopping.set()
        for w in writers:
            w.join(30)
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
            final = _tuples(read[t].get_iam_policy(request={"resource": t, "options": v3}))
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


# == 3. crashes and resumes ==========================================================================================

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


# == 4. bad input ====================================================================================================

_PEM: list[str] = []


def made_up_key(project: str = P, email: str = SA, **changes) -> dict:
    """A well-formed service-account key file with a real (never registered) RSA key."""
    if not _PEM:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _PEM.append(priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode())
    data = {
        "type": "service_account", "project_id": project, "private_key_id": "f" * 40, "private_key": _PEM[0],
        "client_email": email, "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def _file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@dataclass
class Case:
    name: str
    code: int
    needle: str = ""
    args: tuple = ()
    env: dict = field(default_factory=dict)
    scenario: dict | None = None
    files: object = None  # (directory, sandbox) -> {"args": (...), "env": {...}}
    fresh: bool = False  # a sandbox of its own (a scenario, or a run that may write)
    after: object = None  # (directory, sandbox) -> problems with what the run left behind
    base: tuple = ARGS  # the command before the case's arguments


def _key_case(name: str, needle: str, content, mode: int = 0o600, args: tuple = ()) -> Case:
    def files(d: Path, sb):
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        return {"args": ("--key-file", str(_file(d / "key.json", text, mode))) + args}
    return Case(name, 2, needle, files=files)


def _dask_case(name: str, code: int, needle: str, text: str, env: dict | None = None, after=None) -> Case:
    def files(d: Path, sb):
        _file(d / "dask" / "coiled.yaml", text.replace("SERVER", sb.coiled_url))
        given = {k: (v.replace("SERVER", sb.coiled_url) if v else v) for k, v in (env or {}).items()}
        return {"env": {"DASK_CONFIG": str(d / "dask"), "DASK_COILED__TOKEN": None, "DASK_COILED__SERVER": None,
                        **given}}
    return Case(name, code, needle, files=files, fresh=code != 2, after=after)


USER_DASK_CONFIG = f"""\
# the user's own settings
coiled:
  token: {DEFAULT_TOKEN}  # from coiled login
  server: SERVER
  other: kept
  backend-options:
    gpu-type: nvidia-tesla-t4
distributed:
  worker:
    memory:
      target: 0.8
"""


def _user_config_kept(d: Path, sb) -> list[str]:
    """The wizard set its backend options and kept everything of the user's: keys, sections and comments."""
    text = (d / "dask" / "coiled.yaml").read_text()
    data = yaml.safe_load(text)
    c = data.get("coiled") or {}
    problems = []
    if (c.get("token"), c.get("server"), c.get("other")) != (DEFAULT_TOKEN, sb.coiled_url, "kept"):
        problems.append(f"coiled.yaml lost the login or coiled.other: {sorted(c)}")
    if data.get("distributed") != {"worker": {"memory": {"target": 0.8}}}:
        problems.append("coiled.yaml lost its distributed: section")
    bo = c.get("backend-options") or {}
    if bo.get("gpu-type") != "nvidia-tesla-t4" or bo.get("region") != "us-east1" or "firewall" not in bo:
        problems.append(f"coiled.yaml's backend-options are not merged: {bo}")
    if "# the user's own settings" not in text or "# from coiled login" not in text:
        problems.append("coiled.yaml lost its comments")
    return problems


def _gcloud_case(name: str, code: int, needle: str, project: str) -> Case:
    def files(d: Path, sb):
        _file(d / "gcloud" / "active_config", "default\n")
        _file(d / "gcloud" / "configurations" / "config_default", f"[core]\nproject = {project}\naccount = a@b.c\n")
        return {"env": {"CLOUDSDK_CONFIG": str(d / "gcloud"), "GOOGLE_CLOUD_PROJECT": None}}
    return Case(name, code, needle, files=files, fresh=code != 2)


def operator_permission_cases() -> list[Case]:
    """The operator holding every permission the wizard needs but one, for each in turn; and all of them."""
    from coiled_setup.options import Options
    from coiled_setup.steps import operator_permissions

    perms = operator_permissions(Options(project=P, interactive=False))

    def with_role(permissions) -> dict:
        s = scenario(roles=[{"id": "operator_min", "title": "operator", "permissions": permissions}])
        s["operator"]["roles"] = [f"projects/{P}/roles/operator_min"]
        return s

    cases = [Case(f"operator lacks {p}", 3, p, scenario=with_role([q for q in perms if q != p]), fresh=True)
             for p in perms]
    cases.append(Case("operator holds exactly the permissions the wizard asks for", 0, scenario=with_role(perms),
                      fresh=True))
    return cases


def bad_input_cases() -> list[Case]:
    other_sa = f"someone-else@{P}.iam.gserviceaccount.com"
    two_workspaces = copy.deepcopy(DEFAULT_SCENARIO)
    two_workspaces["coiled"]["users"][0]["workspaces"] = ["team-a", "team-b"]
    disabled_operator = copy.deepcopy(DEFAULT_SCENARIO)
    cases = [
        # -- flags
        Case("--project not an id", 2, "--project", ("--project", "Bad_Project")),
        Case("--project ending with a hyphen", 2, "--project", ("--project", "coiled-demo-")),
        Case("--region without Artifact Registry", 2, "--region", ("--region", "europe-west1")),
        Case("--region unknown", 2, "--region", ("--region", "mars-north1", "--no-gar")),
        Case("--zone of another region", 2, "--zone", ("--zone", "us-central1-a")),
        Case("--zone unknown letter", 2, "--zone", ("--zone", "us-east1-z")),
        Case("--service-account too short", 2, "--service-account", ("--service-account", "ab")),
        Case("--service-account upper case", 2, "--service-account", ("--service-account", "Coiled_SA")),
        Case("--service-account of another project", 2, "belongs to project",
             ("--service-account", "coiled@other-project.iam.gserviceaccount.com")),
        Case("--service-account not a service account", 2, "not a service account email",
             ("--service-account", "someone@example.com")),
        Case("--role-id with dashes", 2, "--role-id", ("--role-id", "no-dashes")),
        Case("--firewall-cidr not an address", 2, "--firewall-cidr", ("--firewall-cidr", "10.0.0.300/8")),
        Case("--firewall-cidr with host bits (its network is used)", 0, args=("--firewall-cidr", "10.0.0.1/8"),
             fresh=True),
        Case("--firewall-cidr empty", 2, "--firewall-cidr is empty", ("--firewall-cidr", "")),
        Case("--project empty", 2, "--project is empty", ("--project", "")),
        Case("--zone not in the region", 2, "does not exist", ("--zone", "us-east1-a")),
        Case("--wait-timeout not a number", 2, "--wait-timeout", ("--wait-timeout", "nan")),
        Case("--wait-timeout infinite", 2, "--wait-timeout", ("--wait-timeout", "inf")),
        Case("--key-file not a key", 2, "not valid JSON", ("--key-file", "/etc/passwd")),
        Case("--key-file of the operator", 2, "the account running coiled-setup",
             files=lambda d, sb: {"args": ("--key-file", str(_file(d / "op.json", sb.operator_key_path.read_text())))}),
        Case("--key-file where no directory can be made", 2, "cannot be written",
             ("--key-file", "/proc/1/coiled/key.json")),
        Case("journal directory under a file", 2, "journal",
             files=lambda d, sb: {"env": {"COILED_SETUP_HOME": str(_file(d / "plain", "x") / "home")}}),
        Case("dask config directory under a file", 2, "dask config",
             files=lambda d, sb: {"env": {"DASK_CONFIG": str(_file(d / "plain", "x") / "dask")}}),
        Case("--firewall-cidr IPv6", 2, "IPv4", ("--firewall-cidr", "2001:db8::/32")),
        Case("--firewall-ports out of range", 2, "--firewall-ports", ("--firewall-ports", "22,99999")),
        Case("--firewall-ports not numbers", 2, "--firewall-ports", ("--firewall-ports", "ssh")),
        Case("--firewall-ports empty", 2, "--firewall-ports", ("--firewall-ports", ",")),
        Case("--instance-service-account not an email", 2, "--instance-service-account",
             ("--instance-service-account", "not-an-email")),
        Case("--instance-service-account is the Coiled account", 2, "must differ",
             ("--instance-service-account", SA)),
        Case("--instance-service-account that does not exist", 2, "does not exist",
             ("--instance-service-account", f"missing-account@{P}.iam.gserviceaccount.com")),
        Case("both instance account flags", 2, "either",
             ("--instance-service-account", other_sa, "--create-instance-service-account")),
        Case("the separate instance account to create is the Coiled account", 2, "Coiled service account itself",
             ("--service-account", "coiled-instance", "--create-instance-service-account")),
        Case("--no-instance-service-account with another instance flag", 2, "alone",
             ("--no-instance-service-account", "--create-instance-service-account")),
        # -- consent: a run that cannot ask applies nothing without --yes (fresh: there is a plan to refuse)
        Case("no terminal and no --yes", 2, "--yes", base=("gcp",), fresh=True),
        Case("--non-interactive without --yes", 2, "--yes", base=("gcp", "--non-interactive"), fresh=True),
        Case("--key-file with --no-local-key", 2, "either", ("--key-file", "/nonexistent/k.json", "--no-local-key")),
        Case("--key-file a directory", 2, "not a file", files=lambda d, sb: {"args": ("--key-file", str(d))}),
        Case("--key-file under a file", 2, "parent is not a directory",
             files=lambda d, sb: {"args": ("--key-file", str(_file(d / "plain", "x") / "key.json"))}),
        Case("--output unknown", 2, "--output", ("--output", "yaml")),
        Case("--wait-timeout zero", 2, "--wait-timeout", ("--wait-timeout", "0")),
        Case("--wait-timeout negative", 2, "--wait-timeout", ("--wait-timeout", "-5")),
        Case("--workspace not one of yours", 2, "workspace", ("--workspace", "elsewhere")),
        # -- environment
        Case("no project anywhere", 2, "No project given", env={"GOOGLE_CLOUD_PROJECT": None}),
        Case("GOOGLE_CLOUD_PROJECT not an id", 2, "not a valid project id",
             env={"GOOGLE_CLOUD_PROJECT": "Bad_Project"}),
        Case("CLOUDSDK_CORE_PROJECT names the project", 0,
             env={"GOOGLE_CLOUD_PROJECT": None, "CLOUDSDK_CORE_PROJECT": P}, fresh=True),
        _gcloud_case("gcloud's configuration names the project", 0, "", P),
        _gcloud_case("gcloud's configuration names an unknown project", 2, "does not exist", "nowhere-project"),
        Case("GOOGLE_APPLICATION_CREDENTIALS missing", 2, "/nonexistent/operator.json, which does not exist",
             env={"GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/operator.json"}),
        Case("GOOGLE_APPLICATION_CREDENTIALS not JSON", 2, "is not a credentials file",
             files=lambda d, sb: {"env": {"GOOGLE_APPLICATION_CREDENTIALS": str(_file(d / "adc.json", "not json"))}}),
        Case("no Google credentials at all", 2, "No Google credentials", env={"GOOGLE_APPLICATION_CREDENTIALS": None}),
        Case("operator key revoked", 2, "credentials",
             files=lambda d, sb: {"env": {"GOOGLE_APPLICATION_CREDENTIALS": str(_file(d / "adc.json", json.dumps(
                 {**json.loads(sb.operator_key_path.read_text()), "private_key_id": "0" * 40})))}}),
        Case("no Coiled token", 2, "No Coiled login", env={"DASK_COILED__TOKEN": None}),
        Case("Coiled token invalid", 2, "did not accept your token", env={"DASK_COILED__TOKEN": "0123-not-a-token"}),
        Case("DASK_COILED__WORKSPACE unknown", 2, "workspace", env={"DASK_COILED__WORKSPACE": "elsewhere"}),
        Case("Coiled unreachable", 1, "Coiled did not answer at http://127.0.0.1:9",
             env={"DASK_COILED__SERVER": "http://127.0.0.1:9"}),
        Case("DASK_COILED__SERVER not a URL", 2, "not an http(s) URL", env={"DASK_COILED__SERVER": "cloud.coiled.io"}),
        Case("--coiled-server another scheme", 2, "not an http(s) URL", ("--coiled-server", "ftp://127.0.0.1/")),
        Case("--coiled-server not Coiled (a web page)", 1, "other than JSON",
             files=lambda d, sb: {"args": ("--coiled-server", _web_page())}),
        Case("--coiled-server not HTTP/1 (a gRPC port)", 1, "Could not reach Coiled",
             files=lambda d, sb: {"args": ("--coiled-server", f"http://{sb.google_endpoint}")}),
        # -- the dask config file
        _dask_case("coiled.yaml holds the login", 0, "", USER_DASK_CONFIG, after=_user_config_kept),
        _dask_case("coiled.yaml token invalid", 2, "did not accept your token",
                   "coiled:\n  token: 0123-not-a-token\n  server: SERVER\n"),
        _dask_case("coiled.yaml workspace unknown", 2, "workspace",
                   f"coiled:\n  token: {DEFAULT_TOKEN}\n  server: SERVER\n  workspace: elsewhere\n"),
        _dask_case("coiled.yaml not YAML", 2, "coiled.yaml", "coiled: [token: {\n"),
        _dask_case("coiled.yaml not YAML, token in the environment", 2, "coiled.yaml", "coiled: [token: {\n",
                   env={"DASK_COILED__TOKEN": DEFAULT_TOKEN, "DASK_COILED__SERVER": "SERVER"}),
        _dask_case("coiled.yaml's coiled section not a mapping", 2, "coiled.yaml", "coiled:\n  - token\n"),
        # -- key files
        _key_case("key file not JSON", "not valid JSON", "this is not a key"),
        _key_case("key file a JSON list", "not a service account key file", "[1, 2]"),
        _key_case("key file missing fields", "lacks fields", made_up_key(client_email=None, token_uri=None)),
        _key_case("key file of another project", "belongs to project", made_up_key(project="other-project")),
        _key_case("key file truncated", "not valid JSON", json.dumps(made_up_key(), indent=2)[:900]),
        _key_case("key file with a truncated private key", "truncated",
                  made_up_key(private_key="-----BEGIN PRIV")),
        _key_case("key file of a user, not an account", "not a service account key",
                  made_up_key(type="authorized_user")),
        _key_case("key file group-readable", "readable by other users", made_up_key(), 0o640),
        _key_case("key file world-readable", "readable by other users", made_up_key(), 0o644),
        _key_case("key file of another account", "is a key of", made_up_key(email=other_sa),
                  args=("--service-account", "coiled")),
        # -- scenarios
        Case("unknown project", 2, "does not exist", ("--project", "unknown-project")),
        Case("project being deleted", 2, "scheduled for deletion", scenario=scenario(state="DELETE_REQUESTED"),
             fresh=True),
        Case("IAM API disabled", 1, "iam.googleapis.com", scenario=scenario(
            services=["cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com"]), fresh=True),
        Case("no billing", 1, "no billing account", scenario=scenario(billing=False), fresh=True),
        Case("org policy forbids keys", 1, "iam.disableServiceAccountKeyCreation",
             scenario=scenario(disable_key_creation=True), fresh=True),
        Case("10-key limit reached", 1, "10 user-managed keys",
             scenario=scenario(service_accounts=[{"id": "coiled", "keys": 10}]), fresh=True),
        Case("Coiled account disabled", 1, "disabled",
             scenario=scenario(service_accounts=[{"id": "coiled", "disabled": True}]), fresh=True),
        Case("several Coiled workspaces, none chosen", 2, "several", scenario=two_workspaces, fresh=True),
        Case("operator account disabled", 2, "credentials", scenario=disabled_operator, fresh=True,
             files=lambda d, sb: _disable_operator(sb)),
    ]
    return cases + operator_permission_cases()


def _web_page() -> str:
    """A local web server that answers every request with a page of HTML (not Coiled)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _disable_operator(sb) -> dict:
    with sb.world.lock:
        sb.world.accounts[sb.operator_email].disabled = True
    return {}


NOTICE = re.compile(r"^(Google|Coiled) is not answering at \S+ yet; retrying \(\d+ s so far\)…$")


def one_sentence(text: str) -> bool:
    """One sentence: ends with a full stop, and no other ends inside it (quotes, code and parentheses aside)."""
    body = re.sub(r"'[^']*'|`[^`]*`|\([^)]*\)", "", text.strip())
    return body.endswith(".") and not re.search(r"[.!?]\s+[A-Z]", body)


def check_case(lab: Lab, case: Case, shared) -> list[str]:
    sb = lab.sandbox(case.scenario, **FAST) if case.fresh else shared
    d = lab.base / "cases" / re.sub(r"[^a-z0-9]+", "-", case.name.lower())
    d.mkdir(parents=True, exist_ok=True)
    extra = case.files(d, sb) if case.files else {}
    mark = len(calls(sb))
    out = lab.run(sb, *case.base, *case.args, *extra.get("args", ()), env={**case.env, **extra.get("env", {})},
                  what=f"bad input case {case.name!r}")
    problems = []
    # Notices while Google or Coiled does not answer are not the error sentence.
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not NOTICE.match(ln)]
    if out.code != case.code:
        problems.append(f"exit {out.code}, not {case.code}: {out.stderr.strip()[:300]}")
    if out.crash or "Traceback" in out.stderr:
        problems.append(f"a traceback: {(out.crash or out.stderr)[-400:]}")
    if case.code != 0:
        if len(lines) != 1 or not lines[0].startswith("Error: ") or not one_sentence(lines[0][7:]):
            problems.append(f"not one sentence on stderr: {out.stderr.strip()[:400]!r}")
        elif case.needle and case.needle not in lines[0]:
            problems.append(f"{case.needle!r} not in {lines[0]!r}")
    if case.after is not None and out.code == case.code:
        problems += case.after(d, sb)
    if case.code in (2, 3):
        made = writes(sb, mark)
        if made:
            problems.append(f"{len(made)} write call(s): {[c['method'] for c in made][:5]}")
    if case.fresh:
        lab.stop(sb)
    return [f"{case.name}: {p}" for p in problems]


def run_bad_input(lab: Lab) -> Figures:
    fig = Figures("bad input")
    cases = bad_input_cases()
    shared = lab.sandbox(**FAST)
    passed = 0
    for case in cases:
        problems = check_case(lab, case, shared)
        fig.problems += problems
        passed += not problems
    lab.stop(shared)
    by_code = Counter(c.code for c in cases)
    fig.values = {"cases passed": Ratio(passed, len(cases)),
                  "by exit code": " ".join(f"{k}:{v}" for k, v in sorted(by_code.items())),
                  "writes on input errors": sum(1 for p in fig.problems if "write call" in p)}
    return fig


# == 5. secrets ======================================================================================================

def secrets_figures(lab: Lab) -> Figures:
    fig = Figures("secrets")
    fig.problems = lab.ledger.check()
    fig.values = {"texts scanned": lab.ledger.texts, "files checked": lab.ledger.files,
                  "secrets looked for": len(set(lab.ledger.needles.values())),
                  "secret leaks found": len(fig.problems)}
    return fig


# == 6. verify under faults ==========================================================================================

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


# == the figures =====================================================================================================

def main() -> int:
    import shutil
    import tempfile

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    base = Path(tempfile.mkdtemp(prefix="coiled-reliability-"))
    lab = Lab(base)
    t0 = time.monotonic()
    figures = []
    try:
        ref = reference_run(lab)
        for make in (lambda: run_faults(lab, ref=ref), lambda: run_concurrent(lab),
                     lambda: run_crashes(lab, ref=ref), lambda: run_bad_input(lab), lambda: run_verify(lab)):
            fig = make()
            figures.append(fig)
            print(fig.line(), flush=True)
        fig = secrets_figures(lab)
        figures.append(fig)
        print(fig.line())
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)
    problems = [f"{f.area}: {p}" for f in figures for p in f.problems]
    print(f"{'time:':<11} {time.monotonic() - t0:.0f} s, problems {len(problems)}")
    for p in problems:
        print("  " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
