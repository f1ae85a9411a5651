"""Re-runs off the happy path: an API still propagating, Google or Coiled not answering."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests import json_contract
from tests.helpers import calls, clients, wait_until

P = "coiled-demo"
AR = "artifactregistry.googleapis.com"
REPO = f"projects/{P}/locations/us-east1/repositories/coiled"
BASE_SERVICES = ["iam.googleapis.com", "cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com",
                 "compute.googleapis.com", "logging.googleapis.com"]


def scenario(**changes) -> dict:
    s = copy.deepcopy(DEFAULT_SCENARIO)
    s["projects"][0].update(changes)
    return s


def enable_and_wait_done(sb, service: str) -> None:
    """Enables an API through the real client until Google calls it ENABLED (it is not usable yet)."""
    c = clients(sb)
    op = c.usage.enable_service(request={"name": f"projects/{P}/services/{service}"})
    op.result(timeout=30)


def test_rerun_while_a_just_enabled_api_still_propagates_converges(make_sandbox, cli):
    # ENABLED on Google, yet every Artifact Registry call still answers SERVICE_DISABLED for a while:
    # the state a first run leaves when it is interrupted (or fails) right after enabling the APIs.
    sb = make_sandbox(scenario(services=BASE_SERVICES), propagation_delay_s=8, operation_s=0.2, infra_s=0.2)
    enable_and_wait_done(sb, AR)
    c = clients(sb)
    assert c.usage.get_service(request={"name": f"projects/{P}/services/{AR}"}).state.name == "ENABLED"
    # Still propagating when the run first calls the registry, however slowly the run starts; then it settles.
    sb.world.config.propagation_delay_s = 3600

    def settle_after_the_first_refusal():
        if wait_until(lambda: any(x["service"] == "artifactregistry" and x["code"] == "PERMISSION_DENIED"
                                  for x in calls(sb)), timeout=120):
            sb.world.config.propagation_delay_s = 8

    settler = threading.Thread(target=settle_after_the_first_refusal, daemon=True)
    settler.start()
    proc = cli(sb, "gcp", "--non-interactive", "--yes", "--output", "json", timeout=180)
    settler.join(timeout=5)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    reg = next(s for s in doc["steps"] if s["step"] == "registry")
    assert reg["action"] == "create" and reg["result"] == "ok"
    refused = [x for x in calls(sb) if x["service"] == "artifactregistry" and x["code"] == "PERMISSION_DENIED"]
    assert refused, "the registry should have answered SERVICE_DISABLED at first"
    assert c.registry.get_repository(name=REPO).format_.name == "DOCKER"
    # And converged: a re-run changes nothing.
    before = len(calls(sb))
    again = cli(sb, "gcp", "--non-interactive", "--yes", "--output", "json", check=0)
    assert all(s["action"] in ("nothing", "check") for s in json.loads(again.stdout)["steps"])
    assert not [x for x in calls(sb, since=before) if x["write"]]


def test_rerun_after_a_first_run_interrupted_right_after_enabling_converges(make_sandbox, cli, tmp_path):
    sb = make_sandbox(scenario(services=BASE_SERVICES), propagation_delay_s=6, operation_s=0.2, infra_s=0.2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(tmp_path / "user-home"), GRPC_VERBOSITY="ERROR")
    first = subprocess.Popen([sys.executable, "-m", "coiled_setup", "gcp", "--non-interactive", "--yes"], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: any(x["method"] == "CreateServiceAccount" for x in calls(sb)), timeout=60)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    proc = cli(sb, "gcp", "--non-interactive", "--yes", "--output", "json", env={"HOME": str(tmp_path / "user-home")},
               timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 0
    assert clients(sb).registry.get_repository(name=REPO).format_.name == "DOCKER"


def test_an_unexpected_refusal_while_observing_is_one_sentence_with_its_code(make_sandbox, cli):
    sb = make_sandbox(scenario(services=BASE_SERVICES + [AR]), fail_method="GetRepository",
                      fail_code="FAILED_PRECONDITION", fail_times=1000)
    proc = cli(sb, "gcp", "--non-interactive", "--yes", "--output", "json", check=1)
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert "Artifact Registry" in line and "FAILED_PRECONDITION" in line
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 1 and "FAILED_PRECONDITION" in doc["error"]
    assert not [x for x in calls(sb) if x["write"]]


# -- Google or Coiled not answering ------------------------------------------------------------------------

def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_google_and_coiled_not_answering_are_told_early_and_given_up_on_in_30_s(make_sandbox, tmp_path):
    sb = make_sandbox()
    dead_google = f"127.0.0.1:{closed_port()}"
    dead_coiled = f"http://127.0.0.1:{closed_port()}"
    runs = {
        "gcp-google": ({"COILED_SETUP_GOOGLE_ENDPOINT": dead_google},
                       ["gcp", "--non-interactive", "--yes", "--output", "json"]),
        "verify-google": ({"COILED_SETUP_GOOGLE_ENDPOINT": dead_google},
                          ["verify", "--key-file", str(sb.operator_key_path)]),
        "gcp-coiled": ({"DASK_COILED__SERVER": dead_coiled}, ["gcp", "--non-interactive", "--yes"]),
        "verify-coiled": ({"DASK_COILED__SERVER": dead_coiled},
                          ["verify", "--key-file", str(sb.operator_key_path), "--output", "json"]),
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_", "CLOUDSDK_"))}
    started, procs, lines = time.monotonic(), {}, {}
    for name, (extra, args) in runs.items():
        env = {**base, **sb.env, **extra, "HOME": str(tmp_path / name), "GRPC_VERBOSITY": "ERROR", "NO_COLOR": "1"}
        procs[name] = subprocess.Popen([sys.executable, "-m", "coiled_setup", *args], env=env, text=True,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines[name] = []

    def read(name):
        for line in procs[name].stderr:
            lines[name].append((time.monotonic() - started, line.rstrip()))

    # And one that loses Google in the middle of a run, right after creating the account.
    mid = make_sandbox(operation_s=0.1, infra_s=0.1)
    env = {**base, **mid.env, "HOME": str(tmp_path / "mid"), "GRPC_VERBOSITY": "ERROR", "NO_COLOR": "1"}
    procs["gcp-mid-run"] = subprocess.Popen([sys.executable, "-m", "coiled_setup", "gcp", "--non-interactive", "--yes",
                                             "--output", "json"], env=env, text=True, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines["gcp-mid-run"] = []
    readers = [threading.Thread(target=read, args=(n,), daemon=True) for n in procs]
    for r in readers:
        r.start()
    assert wait_until(lambda: any(x["method"] == "CreateServiceAccount" for x in calls(mid)), timeout=60)
    mid._grpc.stop(grace=None)
    runs["gcp-mid-run"] = ({}, ["--output"])
    outs = {}
    try:
        for name, p in procs.items():
            outs[name] = p.stdout.read()
            p.wait(timeout=60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for r in readers:
        r.join(timeout=5)
    for name, p in procs.items():
        who, where = ("Google", dead_google) if name.endswith("google") else ("Coiled", dead_coiled)
        if name == "gcp-mid-run":
            who, where = "Google", mid.google_endpoint
        said = lines[name]
        assert p.returncode == 1, (name, said, outs[name])
        json_contract.check_output(outs[name])
        text = "\n".join(t for _, t in said)
        assert "Traceback" not in text, text
        # Told early: the first notice comes after about a second of silence.
        notices = [(t, s) for t, s in said if s.startswith(f"{who} is not answering at {where} yet; retrying (")]
        assert notices and "(1 s so far)" in notices[0][1], f"{name}:\n" + "\n".join(f"{t:6.2f} {s}" for t, s in said)
        assert len(notices) >= 4, (name, said)  # and kept telling
        # The "so far" each notice gives keeps time with the clock (a slow start-up under load is not counted).
        so_far = [int(re.search(r"\((\d+) s so far\)", s).group(1)) for _, s in notices]
        assert abs((so_far[-1] - so_far[0]) - (notices[-1][0] - notices[0][0])) < 5, (name, notices)
        assert said[-1][0] - notices[0][0] < 35, (name, said)  # given up on in 30 s
        if name == "verify-coiled":
            # Verify checks everything else; what Coiled holds fails, naming the endpoint and what to check.
            doc = json.loads(outs[name])
            coiled = next(c for c in doc["checks"] if c["name"] == "coiled_credentials")
            assert coiled["status"] == "failed" and where in coiled["detail"] and "proxy" in coiled["detail"]
            assert next(c for c in doc["checks"] if c["name"] == "custom_role")["status"] != "skipped"
            continue
        # One sentence naming the endpoint and what to check.
        errors = [s for _, s in said if s.startswith("Error:")]
        assert len(errors) == 1 and where in errors[0] and "proxy" in errors[0], (name, said)
        if "--output" in runs[name][1]:
            doc = json.loads(outs[name])
            assert doc["exit_code"] == 1 and where in doc["error"]
    # Nothing was written to Google or Coiled.
    assert not [x for x in calls(sb) if x["write"]]
    # The step that was running when Google went away (which one depends on the machine's speed) is named.
    assert re.match(r"Step '(Service account and key|Custom role|Project IAM binding|Artifact Registry)' failed",
                    json.loads(outs["gcp-mid-run"])["error"])
