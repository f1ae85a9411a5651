"""What every area shares: the names of the default scenario, the sandbox as a test sees it,
the state a finished run must leave, and the figures an area reports."""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coiled_setup.sandbox.scenario import DEFAULT_PROJECT, DEFAULT_SCENARIO
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



# -- figures ---------------------------------------------------------------------------------------------------

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
