"""Re-runs off the happy path: an API still propagating, Google or Coiled not answering."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
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
    proc = cli(sb, "gcp", "--non-interactive", "--output", "json", timeout=180)
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
    again = cli(sb, "gcp", "--non-interactive", "--output", "json", check=0)
    assert all(s["action"] in ("nothing", "check") for s in json.loads(again.stdout)["steps"])
    assert not [x for x in calls(sb, since=before) if x["write"]]


def test_rerun_after_a_first_run_interrupted_right_after_enabling_converges(make_sandbox, cli, tmp_path):
    sb = make_sandbox(scenario(services=BASE_SERVICES), propagation_delay_s=6, operation_s=0.2, infra_s=0.2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(tmp_path / "user-home"), GRPC_VERBOSITY="ERROR")
    first = subprocess.Popen([sys.executable, "-m", "coiled_setup", "gcp", "--non-interactive"], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: any(x["method"] == "CreateServiceAccount" for x in calls(sb)), timeout=60)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    proc = cli(sb, "gcp", "--non-interactive", "--output", "json", env={"HOME": str(tmp_path / "user-home")},
               timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 0
    assert clients(sb).registry.get_repository(name=REPO).format_.name == "DOCKER"


def test_an_unexpected_refusal_while_observing_is_one_sentence_with_its_code(make_sandbox, cli):
    sb = make_sandbox(scenario(services=BASE_SERVICES + [AR]), fail_method="GetRepository",
                      fail_code="FAILED_PRECONDITION", fail_times=1000)
    proc = cli(sb, "gcp", "--non-interactive", "--output", "json", check=1)
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert "Artifact Registry" in line and "FAILED_PRECONDITION" in line
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 1 and "FAILED_PRECONDITION" in doc["error"]
    assert not [x for x in calls(sb) if x["write"]]
