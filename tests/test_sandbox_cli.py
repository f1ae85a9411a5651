"""`coiled-setup sandbox`: bad input is one sentence and exit 2; no private key is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coiled_setup.sandbox import scenario as scenarios


def sandbox_cmd(*args, timeout=60):
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "coiled_setup", "sandbox", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def one_sentence(proc, needle: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert needle in lines[0], lines[0]
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--port", "65535"], "--port"),
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--latency-ms", "-50"], "--latency-ms"),
    (["--latency-ms", "inf"], "--latency-ms"),
    (["--fault-rate", "-0.1"], "--fault-rate"),
    (["--fault-rate", "1.5"], "--fault-rate"),
    (["--fault-rate", "nan"], "--fault-rate"),
    (["--propagation-delay-s", "-1"], "--propagation-delay-s"),
    (["--propagation-delay-s", "nan"], "--propagation-delay-s"),
    (["--operation-s", "-0.5"], "--operation-s"),
])
def test_bad_numbers_are_refused(args, needle):
    one_sentence(sandbox_cmd(*args), needle)


def test_state_dir_that_is_a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    line = one_sentence(sandbox_cmd("--state-dir", str(f)), "--state-dir")
    assert "port" not in line


def test_state_dir_that_cannot_be_created(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    line = one_sentence(sandbox_cmd("--state-dir", str(f / "below")), "--state-dir")
    assert "port" not in line


MALFORMED = {
    "yaml syntax": "projects: [\n  - id: a\n",
    "json syntax": '{"projects": [',
    "not a mapping": "- a\n- b\n",
    "projects not a list": "projects: coiled-demo\n",
    "project without id": "projects:\n  - number: '1'\n",
    "project id not text": "projects:\n  - id: [1, 2]\n",
    "account not a mapping": "projects:\n  - id: p\n    service_accounts: [coiled]\n",
    "keys not a number": "projects:\n  - id: p\n    service_accounts:\n      - {id: coiled, keys: many}\n",
    "members not a list": "projects:\n  - id: p\n    bindings:\n      - {role: roles/viewer, members: user:a@b.c}\n",
    "binding without role": "projects:\n  - id: p\n    bindings:\n      - {members: [user:a@b.c]}\n",
    "unknown state": "projects:\n  - id: p\n    state: GONE\n",
    "billing not a boolean": "projects:\n  - id: p\n    billing: sometimes\n",
    "unknown key": "projects:\n  - id: p\n    servics: [iam.googleapis.com]\n",
    "operator roles not a list": "projects:\n  - id: p\noperator: {id: op, roles: roles/owner}\n",
    "coiled user without token": "projects:\n  - id: p\ncoiled:\n  users:\n    - {username: u, workspaces: [w]}\n",
    "repository without location": "projects:\n  - id: p\n    repositories:\n      - {id: coiled}\n",
    "role permissions not a list": "projects:\n  - id: p\n    roles:\n      - {id: r, permissions: 5}\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_scenario(tmp_path, name):
    f = tmp_path / "scenario.yaml"
    f.write_text(MALFORMED[name])
    one_sentence(sandbox_cmd("--scenario", str(f), "--state-dir", str(tmp_path / "state")), "--scenario")
    assert not (tmp_path / "state" / "operator-key.json").exists()


def test_scenario_that_is_not_text_or_a_directory(tmp_path):
    f = tmp_path / "scenario.yaml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    one_sentence(sandbox_cmd("--scenario", str(f)), "--scenario")
    one_sentence(sandbox_cmd("--scenario", str(tmp_path)), "--scenario")


def test_the_default_and_documented_scenarios_are_valid():
    scenarios.validate(scenarios.DEFAULT_SCENARIO)
    doc = scenarios.__doc__.split("A scenario is YAML or JSON:", 1)[1]
    import yaml

    text = "\n".join(line.split("#", 1)[0].rstrip() for line in doc.splitlines())
    text = text.replace("[...]", "[]").replace(", ...]", "]").replace("token: ...", "token: t")
    scenarios.validate(yaml.safe_load(text))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_temporary_directory_with_the_operator_key_is_removed_on_stop(sig):
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", "sandbox"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        key = Path(info["env"]["GOOGLE_APPLICATION_CREDENTIALS"])
        assert key.exists()
    finally:
        proc.send_signal(sig)
        code = proc.wait(timeout=15)
    assert code in (0, 130), proc.stderr.read()
    assert not key.exists() and not key.parent.exists()


def test_a_state_dir_given_is_kept(tmp_path):
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", "sandbox", "--state-dir", str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    assert Path(info["env"]["GOOGLE_APPLICATION_CREDENTIALS"]).exists()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("taken", ["google", "coiled"])
def test_a_port_another_sandbox_listens_on_is_refused(sandbox, taken):
    """gRPC shares a port with SO_REUSEPORT by default: two sandboxes would split the calls between them."""
    google = int(sandbox.google_endpoint.rsplit(":", 1)[1])
    coiled = int(sandbox.coiled_url.rsplit(":", 1)[1])
    port = google if taken == "google" else coiled - 1  # Coiled's side listens on PORT+1
    other = port + 1 if taken == "google" else port
    if not _free(other):
        pytest.skip(f"port {other} is taken by something else")
    line = one_sentence(sandbox_cmd("--port", str(port), timeout=30), "--port")
    assert "in use" in line and str(google if taken == "google" else coiled) in line
