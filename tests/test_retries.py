"""Which layer retries a transient error, tested at that layer (the real CLI against the sandbox).

One policy (coiled_setup.retry.Policy: attempts, delays, budget, clock and sleep) serves every layer; the
tests put in a quick sleep with `retry.use` rather than patching `time`.

- A read (GetIamPolicy, GetRole, ...) is retried by the Google adapter (`cloud.Google._read`) and by nothing
  above it: a failed read is followed by the same read, nothing else, and once the adapter gives up, the step
  (or verify's check) reports it. So a read failing on every call is made at most `Policy.attempts` times.
- A Coiled call is retried by the Coiled client (`coiled_api.Coiled.call`) alone, the same way.
- Writes are not repeated by the adapter (a key creation repeated blindly makes a second key; a policy write
  needs a fresh etag). A policy write (SetIamPolicy) is retried by the read-modify-write loop of its step
  (`steps.policy.ensure_member`): a failed write is followed by one fresh read and the write again, in the same
  loop that waits out a just-created account ("does not exist": nothing was written, so that write is tried
  again as it is, with the etag it holds) and conflicts. The engine's step-level retry
  (`engine.Engine._retrying`, which observes the step again and starts it over) must not be what recovers: it
  would spend one of its few attempts per fault while the loop is waiting for propagation. Other writes (a key
  creation) are retried by the engine, after a fresh observation.

The engine's retry also recovers a write error, so a run that merely converges says nothing about the
loop's own retry; the call record does: a step started over shows two successful reads in a row (its new
observation, then the loop's read) between two writes.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from coiled_setup import retry
from tests.helpers import calls, clients, http

P = "coiled-demo"
SA = f"coiled@{P}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{SA}"
ROLE = f"projects/{P}/roles/coiled"
REPO = f"projects/{P}/locations/us-east1/repositories/coiled"
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}

# Faults on the two policy methods only, so the seed alone decides which call fails: with seed 63 the
# project's first, third and fifth writes fail transiently (RESOURCE_EXHAUSTED, nothing written), the
# others are answered, and no read fails more than twice in a row.
FAULTS = dict(fault_rate=0.3, seed=63, fault_methods=("GetIamPolicy", "SetIamPolicy"))


def trace(record: list[dict], resource: str, caller: str) -> str:
    """The policy calls on `resource` as letters: G read, g failed read, S write, t transient write failure,
    r write refused while the account propagates ("does not exist")."""
    out = []
    for c in record:
        # A call failed before authentication is recorded without its caller.
        if c["resource"] != resource or c["caller"] not in (caller, None):
            continue
        if c["method"] == "GetIamPolicy":
            out.append("G" if c["code"] == "OK" else "g")
        elif c["method"] == "SetIamPolicy":
            out.append({"OK": "S", "INVALID_ARGUMENT": "r"}.get(c["code"], "t" if c["code"] in TRANSIENT else "?"))
    return "".join(out)


def bound(policy, role, member) -> bool:
    return any(b.role == role and member in b.members and not b.HasField("condition") for b in policy.bindings)


def test_policy_writes_are_retried_by_their_own_loop_under_faults_and_propagation(make_sandbox, cli):
    sb = make_sandbox(propagation_delay_s=5.0, operation_s=0.2, infra_s=0.2, **FAULTS)
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    record = calls(sb)
    http("POST", f"{sb.coiled_url}/_sandbox/config", {"fault_rate": 0.0})  # the checks below read without faults
    c = clients(sb)
    project = c.projects.get_iam_policy(request={"resource": f"projects/{P}",
                                                 "options": {"requested_policy_version": 3}})
    assert bound(project, ROLE, MEMBER)
    assert bound(c.registry.get_iam_policy(request={"resource": REPO}), "roles/artifactregistry.repoAdmin", MEMBER)

    project_trace = trace(record, f"projects/{P}", sb.operator_email)
    # The faults and the propagation both happened to the project's binding.
    assert project_trace.count("t") >= 1 and project_trace.count("r") >= 1, project_trace
    assert "?" not in project_trace, project_trace
    for resource in (f"projects/{P}", REPO):
        t = trace(record, resource, sb.operator_email)
        # Reads: a failed read is retried as a read (by the adapter).
        assert all(t[i + 1:i + 2] in ("g", "G") for i, x in enumerate(t) if x == "g"), f"{resource}: {t}"
        # Writes: after the first write attempt, each write that follows a failed one is preceded by exactly
        # one successful read (one refused while the account propagates by none: it is tried again with its
        # etag), and the run ends on a write or on the one read that found the binding made: never two reads
        # in a row, which is what the engine starting the step over looks like.
        ok_reads = t.replace("g", "")
        first = min((ok_reads.index(x) for x in "Str" if x in ok_reads), default=len(ok_reads))
        assert "GG" not in ok_reads[first:], f"{resource}: the step was started over: {t}"
        assert ok_reads.endswith(("S", "G")), f"{resource}: {t}"
    reads = project_trace.count("G")
    # One read after each failed write (a refused one is tried again without), plus the privilege check's read
    # before planning (is Coiled's account an owner?) and the step's observation, whose etag the first write uses:
    # one read when they ask while it is under way (they share it), two when one came after it had ended.
    assert "r" in project_trace and "rG" not in project_trace.replace("g", ""), project_trace
    assert reads - project_trace.count("t") in (1, 2), project_trace


# -- one layer per call: the same read is never retried again above the adapter ------------------------------------

USER_VARS = ("GOOGLE_", "CLOUDSDK_", "DASK_", "COILED_", "GCE_", "XDG_")


def run_quick(sb, home, *args):
    """The CLI in this process, under the default retry policy with its sleeps 50 times shorter."""
    from typer.testing import CliRunner

    from coiled_setup.cli import app

    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(USER_VARS)}
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), NO_COLOR="1", COLUMNS="200",
               GRPC_VERBOSITY="ERROR", NO_GCE_CHECK="True", GCE_METADATA_IP="127.0.0.1:9",
               GCE_METADATA_HOST="127.0.0.1:9", **sb.env)
    quick = replace(retry.Policy(), sleep=lambda seconds: time.sleep(seconds / 50))
    with retry.use(quick):
        return CliRunner().invoke(app, list(args), env=env)


def method_calls(sb, method: str, since: int) -> list[dict]:
    return [c for c in calls(sb, since) if c["method"] == method]


@pytest.fixture(scope="module")
def set_up(tmp_path_factory):
    """A project set up by a fault-free run (one sandbox for the tests below)."""
    from coiled_setup.sandbox import Config, Sandbox

    base = tmp_path_factory.mktemp("retry-layers")
    sb = Sandbox(None, Config(operation_s=0.05, infra_s=0.05), state_dir=base / "sandbox").start()
    home = base / "user-home"
    home.mkdir()
    r = run_quick(sb, home, "gcp", "--non-interactive", "--yes")
    assert r.exit_code == 0, r.stdout + r.stderr
    yield sb, home
    sb.stop()


def failing_every_call(sb, method: str) -> int:
    """`method` answers UNAVAILABLE from now on; answers where the call record stands."""
    since = len(calls(sb))
    http("POST", f"{sb.coiled_url}/_sandbox/config", {"fail_method": method, "fail_code": "UNAVAILABLE",
                                                       "fail_times": 10**6})
    return since


def healed(sb) -> None:
    http("POST", f"{sb.coiled_url}/_sandbox/config", {"fail_method": "", "fail_times": 0})


def test_verify_gives_its_verdict_after_one_layer_of_retries_of_a_failing_read(set_up):
    sb, home = set_up
    since = failing_every_call(sb, "GetRole")
    try:
        r = run_quick(sb, home, "verify")
    finally:
        healed(sb)
    tries = method_calls(sb, "GetRole", since)
    # Retried (by the adapter), and by nothing above it: 40 calls when verify's gathering retried it too.
    assert 1 < len(tries) <= retry.Policy().attempts == 8, len(tries)
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "Google kept answering UNAVAILABLE" in r.stdout, r.stdout


def test_gcp_stops_the_step_after_one_layer_of_retries_of_a_failing_read(set_up):
    sb, home = set_up
    since = failing_every_call(sb, "GetRole")
    try:
        r = run_quick(sb, home, "gcp", "--non-interactive", "--yes")
    finally:
        healed(sb)
    tries = method_calls(sb, "GetRole", since)
    # 80 calls when the engine started the observation over ten times, each retried by the adapter.
    assert 1 < len(tries) <= 10, len(tries)
    assert r.exit_code == 1, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["Error: Could not read what exists for 'Custom role': Google kept answering UNAVAILABLE "
                     "(Injected failure.): check your connection and run again; the run resumes where it stopped."], \
        r.stderr
    assert not [c for c in calls(sb, since) if c["write"] or c["mutating"]]


def test_a_key_creation_is_not_repeated_by_the_adapter_but_after_a_fresh_look(make_sandbox, tmp_path):
    sb = make_sandbox(operation_s=0.05, infra_s=0.05, fail_method="CreateServiceAccountKey",
                      fail_code="UNAVAILABLE", fail_times=1)
    home = tmp_path / "user-home"
    home.mkdir()
    r = run_quick(sb, home, "gcp", "--non-interactive", "--yes")
    assert r.exit_code == 0, r.stdout + r.stderr
    record = [c["method"] for c in calls(sb) if c["method"] in ("CreateServiceAccountKey", "ListServiceAccountKeys")]
    first = record.index("CreateServiceAccountKey")
    again = record.index("CreateServiceAccountKey", first + 1)
    # The failed creation is followed by a fresh list of the account's keys before the next one (the engine
    # observed the step again), not by the same creation at once.
    assert "ListServiceAccountKeys" in record[first + 1:again], record
    assert record.count("CreateServiceAccountKey") == 2, record
    keys = clients(sb).iam.list_service_account_keys(request={"name": f"projects/-/serviceAccounts/{SA}",
                                                              "key_types": [1]}).keys
    assert len(keys) == 1



def test_a_coiled_call_is_retried_by_the_coiled_client_alone(make_sandbox, tmp_path):
    route = "POST /api/v2/cloud-credentials/{ws}/gcp"
    sb = make_sandbox(operation_s=0.05, infra_s=0.05, fault_rate=1.0, fault_methods=(route,))
    home = tmp_path / "user-home"
    home.mkdir()
    r = run_quick(sb, home, "gcp", "--non-interactive", "--yes")
    tries = [c for c in calls(sb) if c["method"] == route]
    # Every answer a 429 or 5xx: the client's attempts, then the step fails. Were the engine to start the step
    # over as well, it would make up to 8 calls more per start, or find on observing again that a 502 had hidden
    # a write that was made, and pass.
    assert 1 < len(tries) <= retry.Policy().attempts, len(tries)
    assert r.exit_code == 1, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Coiled kept answering" in lines[0], r.stderr
