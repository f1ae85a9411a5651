"""Which layer retries a transient error, tested at that layer (the real CLI against the sandbox).

- A read (GetIamPolicy, ...) is retried by the Google adapter (`cloud._read`): a failed read is followed by
  the same read, nothing else.
- A policy write (SetIamPolicy) is retried by the read-modify-write loop of its step (`steps.policy.
  ensure_member`): a failed write is followed by one fresh read and the write again, in the same loop that
  waits out a just-created account ("does not exist") and conflicts. The engine's step-level retry
  (`Wizard._retrying`, which observes the step again and starts it over) must not be what recovers: it
  would spend one of its few attempts per fault while the loop is waiting for propagation.

The engine's retry also recovers a write error, so a run that merely converges says nothing about the
loop's own retry; the call record does: a step started over shows two successful reads in a row (its new
observation, then the loop's read) between two writes.
"""

from __future__ import annotations

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
        # Writes: after the first write attempt, each write is preceded by exactly one successful read,
        # and the run ends on a write or on the one read that found the binding made: never two reads
        # in a row, which is what the engine starting the step over looks like.
        ok_reads = t.replace("g", "")
        first = min((ok_reads.index(x) for x in "Str" if x in ok_reads), default=len(ok_reads))
        assert "GG" not in ok_reads[first:], f"{resource}: the step was started over: {t}"
        assert ok_reads.endswith(("S", "G")), f"{resource}: {t}"
    writes = project_trace.count("S") + project_trace.count("t") + project_trace.count("r")
    reads = project_trace.count("G")
    # One read per write attempt, plus the privilege check's read before planning (is Coiled's account an
    # owner?), the step's observation, and the closing read after a lost answer.
    assert reads == writes + (2 if project_trace.endswith("S") else 3), project_trace
