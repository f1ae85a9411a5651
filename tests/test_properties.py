"""Properties of `coiled-setup gcp` over generated inputs: whatever the flags, a run either converges to a state
that matches them (and a second run with the same flags changes nothing) or exits with its code and one sentence,
never a traceback, and an input error writes nothing.

Runs are in-process against sandboxes (the Lab of tests/reliability/lab.py). The examples are derandomised so CI is
repeatable; set COILED_SETUP_EXAMPLES=200 (and COILED_SETUP_RANDOM=1 for new draws) to search harder.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import reliability as R

EXAMPLES = int(os.environ.get("COILED_SETUP_EXAMPLES", "12"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("COILED_SETUP_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
P = R.P


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = R.Lab(tmp_path_factory.mktemp("properties"))
    yield lab
    lab.close()


def _mostly(valid, invalid):
    """Valid in 14 draws of 15, so that about half the runs get past validation and really run."""
    return st.integers(0, 14).flatmap(lambda i: invalid if i == 0 else valid)


def _cidrs():
    nets = st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=4), st.integers(0, 32))
    return _mostly(st.one_of(st.none(), st.sampled_from(["0.0.0.0/0", "203.0.113.0/24", "198.51.100.7/32"])),
                   st.one_of(nets, st.sampled_from(["10.1.2.3/24", "2001:db8::/32", "not-a-network", "",
                                                    "10.0.0.300/8"])))


def _ports():
    lists = st.lists(st.integers(-1, 70000), min_size=0, max_size=4).map(lambda ps: ",".join(map(str, ps)))
    return _mostly(st.one_of(st.none(), st.sampled_from(["22,8786,8787", "8786", "8786,8787,22"])),
                   st.one_of(lists, st.sampled_from(["22,22,8786", "ssh", ",", " ", ""])))


def _choice(valid: list, invalid: list):
    return _mostly(st.sampled_from(valid), st.sampled_from(invalid))


FLAGS = st.fixed_dictionaries({
    "--project": _choice([P], ["Bad_Project", "", "coiled-demo-", "unknown-project"]),
    "--region": _choice([None, "us-east1", "us-central1"], ["europe-west1", "mars-north1", ""]),
    "--zone": _mostly(st.sampled_from([None, "c", "b"]), st.one_of(st.sampled_from(["a", "d", "f", "z"]),
                                                                   st.text(max_size=6))),
    "--service-account": _choice([None, "coiled", "coiled-ops", f"coiled-x1@{P}.iam.gserviceaccount.com"],
                                 ["ab", "Coiled_SA", "someone@example.com", "", "coiled@other-project.iam."
                                  "gserviceaccount.com"]),
    "--role-id": _choice([None, "coiled", "coiled_ops"], ["no-dashes", "ab", ""]),
    "--firewall-cidr": _cidrs(),
    "--firewall-ports": _ports(),
    "--wait-timeout": _choice([None, "600", "120.5"], ["nan", "inf", "-inf", "0", "-5", "1e300", "x"]),
    "--output": _choice([None, "json", "text"], ["yaml", ""]),
    "--no-gar": st.booleans(),
    "--create-instance-service-account": st.booleans(),
})


def _args(flags: dict) -> list[str]:
    args = ["gcp", "--non-interactive", "--yes"]
    region = flags["--region"] or "us-east1"
    for name, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(name)
        elif name == "--zone" and len(value) == 1:
            args += [name, f"{region}-{value}"]  # a letter: a zone of the chosen region, real or not
        else:
            args += [name, value]
    return args


def _failure_problems(out: R.Outcome) -> list[str]:
    problems = []
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("Error: ")]
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines: {out.stderr[-600:]!r}")
    elif not R.one_sentence(errors[0][len("Error: "):]):
        problems.append(f"not one sentence: {errors[0]!r}")
    return problems


def _state_problems(sb, flags: dict) -> list[str]:
    """A finished run's sandbox holds what the flags asked for."""
    d = R.state(sb)
    account = flags["--service-account"] or "coiled"
    email = account if "@" in account else f"{account}@{P}.iam.gserviceaccount.com"
    role = f"projects/{P}/roles/{flags['--role-id'] or 'coiled'}"
    region = flags["--region"] or "us-east1"
    problems = []
    if email not in d["service_accounts"]:
        problems.append(f"no account {email}")
    if len(d["roles"].get(role, {}).get("permissions", [])) != 81:
        problems.append(f"role {role} lacks the template's 81 permissions")
    bound = [b for b in d["projects"][P]["policy"]["bindings"]
             if b["role"] == role and f"serviceAccount:{email}" in b["members"] and not b.get("condition")]
    if not bound:
        problems.append(f"{email} is not bound to {role} without a condition")
    repo = f"projects/{P}/locations/{region}/repositories/coiled"
    if not flags["--no-gar"] and repo not in d["repositories"]:
        problems.append(f"no repository {repo}")
    ws = d["coiled"]["workspaces"][R.WS]
    if (ws.get("credentials") or {}).get("client_email") != email:
        problems.append("Coiled does not hold the account's key")
    (ingress,) = ws["settings"]["scheduler_firewall"]["ingress"]
    want = ipaddress.ip_network(flags["--firewall-cidr"] or "0.0.0.0/0", strict=False)
    if ipaddress.ip_network(ingress["cidr"]) != want:
        problems.append(f"Coiled's firewall is {ingress['cidr']}, not {want}")
    ports = flags["--firewall-ports"]
    want_ports = {int(p) for p in ports.split(",")} if ports else {22, 8786, 8787}
    if set(ingress["ports"]) != want_ports or len(ingress["ports"]) != len(set(ingress["ports"])):
        problems.append(f"Coiled's firewall ports are {ingress['ports']}, not {sorted(want_ports)}")
    if not any(r["region"] == region and r.get("default") for r in ws["regions"]):
        problems.append(f"Coiled's default region is not {region}")
    return problems


@SETTINGS
@given(flags=FLAGS)
def test_any_flags_converge_or_fail_with_one_sentence(lab, flags):
    sb = lab.sandbox(**R.FAST)
    try:
        args = _args(flags)
        out = lab.run(sb, *args, what=f"flags {args}")
        assert not out.crash and "Traceback" not in out.stderr, out.crash or out.stderr
        assert out.code in (0, 1, 2, 3), (out.code, out.stderr)
        event(f"exit {out.code}")
        if flags["--output"] == "json" and out.code != 2:
            assert out.doc is not None and out.doc["exit_code"] == out.code, out.stdout[-500:]
        if out.code != 0:
            assert _failure_problems(out) == [], args
        if out.code in (2, 3):
            assert R.writes(sb) == [], args
        if out.code == 0:
            assert _state_problems(sb, flags) == [], args
            mark = len(R.calls(sb))
            again = lab.run(sb, *args, what=f"the re-run of {args}")
            assert again.code == 0, again.stderr
            assert R.writes(sb, mark) == [], f"a re-run with the same flags wrote: {args}"
    finally:
        lab.stop(sb)
