"""Inputs refused before the first change, and inputs read the way the user meant them.

Regressions these tests guard: --wait-timeout nan/inf accepted (a crash after APIs were enabled); zones that
do not exist in the region accepted; "" flags silently replaced by defaults; duplicate ports sent twice;
10.1.2.3/24 refused instead of read as 10.1.2.0/24; chmod advice for a file that is not a key; the operator's
own key, or a key of an owner/IAM-admin account, handed to Coiled without --allow-privileged-key.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO
from tests.helpers import calls, state

P = "coiled-demo"
ARGS = ("gcp", "--non-interactive", "--yes")
FAST = dict(propagation_delay_s=0, operation_s=0.05, infra_s=0.05)


def writes(sb, since=0) -> list[dict]:
    return [c for c in calls(sb, since) if c["write"] or c["mutating"]]


def one_sentence_error(stderr: str) -> str:
    """The single `Error: …` line, which must be one sentence."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    body = re.sub(r"'[^']*'|`[^`]*`|\([^)]*\)", "", lines[0][7:].strip())
    assert body.endswith(".") and not re.search(r"[.!?]\s+[A-Z]", body), lines[0]
    return lines[0]


def refused(cli, sb, *args, needle: str, code: int = 2, env=None) -> str:
    mark = len(calls(sb))
    out = cli(sb, *args, env=env, check=code)
    line = one_sentence_error(out.stderr)
    assert needle in line, line
    assert writes(sb, mark) == []
    return line


@pytest.mark.parametrize("args, needle", [
    (("--wait-timeout", "nan"), "--wait-timeout"),
    (("--wait-timeout", "inf"), "--wait-timeout"),
    (("--wait-timeout", "1e12"), "--wait-timeout"),
    (("--zone", "us-east1-a"), "us-east1-b, us-east1-c, us-east1-d"),
    (("--region", "us-central1", "--zone", "us-central1-d"), "us-central1-f"),
    (("--project", ""), "--project is empty"),
    (("--firewall-cidr", ""), "--firewall-cidr is empty"),
    (("--service-account", ""), "--service-account is empty"),
    (("--workspace", " "), "--workspace is empty"),
    (("--key-file", "/etc/passwd"), "not valid JSON"),
    (("--key-file", ""), "--key-file is empty"),
    (("--region", ""), "--region is empty"),
    (("--role-id", ""), "--role-id is empty"),
    (("--firewall-ports", ""), "--firewall-ports is empty"),
])
def test_bad_flag_is_refused_before_any_write(sandbox, cli, args, needle):
    line = refused(cli, sandbox, *ARGS, *args, needle=needle)
    assert "chmod" not in line


def test_a_readable_file_that_holds_no_private_key_gets_no_chmod_advice(sandbox, cli, tmp_path):
    other = tmp_path / "notes.json"
    other.write_text(json.dumps({"type": "service_account", "note": "no key here"}))
    other.chmod(0o644)
    line = refused(cli, sandbox, *ARGS, "--key-file", str(other), needle="lacks fields")
    assert "chmod" not in line


def test_verify_refuses_an_empty_project(sandbox, cli):
    refused(cli, sandbox, "verify", "--project", "", needle="--project is empty")


def test_host_bits_mean_the_network_and_duplicate_ports_are_sent_once(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    out = cli(sb, *ARGS, "--firewall-cidr", "10.1.2.3/24", "--firewall-ports", "22,8786,22,8787,8786", check=0)
    assert "10.1.2.0/24" in out.stdout  # the warning names the network used
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["settings"]["scheduler_firewall"] == {"ingress": [{"ports": [22, 8786, 8787], "cidr": "10.1.2.0/24"}]}


# -- keys too powerful for Coiled ------------------------------------------------------------------------------

def _operator_key_file(sb, tmp_path):
    path = tmp_path / "operator-copy.json"
    path.write_text(sb.operator_key_path.read_text())
    path.chmod(0o600)
    return path


def test_the_operators_own_key_is_refused(sandbox, cli, tmp_path):
    key = _operator_key_file(sandbox, tmp_path)
    line = refused(cli, sandbox, *ARGS, "--key-file", str(key), needle="the account running coiled-setup")
    assert "--allow-privileged-key" in line


def test_an_account_holding_an_iam_admin_role_is_refused(make_sandbox, cli):
    s = copy.deepcopy(DEFAULT_SCENARIO)
    admin = f"admin-robot@{P}.iam.gserviceaccount.com"
    s["projects"][0]["service_accounts"] = [{"id": "admin-robot"}]
    s["projects"][0]["bindings"].append({"role": "roles/iam.securityAdmin", "members": [f"serviceAccount:{admin}"]})
    sb = make_sandbox(s)
    refused(cli, sb, *ARGS, "--service-account", admin, needle="roles/iam.securityAdmin")


def test_allow_privileged_key_lets_it_through_and_verify_fails_its_key_check(make_sandbox, cli, tmp_path):
    sb = make_sandbox(**FAST)
    key = _operator_key_file(sb, tmp_path)
    cli(sb, *ARGS, "--key-file", str(key), "--allow-privileged-key", check=0)
    creds = state(sb)["coiled"]["workspaces"]["demo"]["credentials"]
    assert creds["client_email"] == json.loads(key.read_text())["client_email"]

    out = cli(sb, "verify", "--key-file", str(key), "--output", "json", check=1)
    doc = json.loads(out.stdout)
    check = next(c for c in doc["checks"] if c["name"] == "key_file")
    assert check["status"] == "failed" and "the account running verify" in check["detail"]
    assert "coiled-setup gcp --project coiled-demo" in check["remedy"] and "--key-file" not in check["remedy"]


def test_a_bare_address_is_one_host_said_and_port_order_is_no_change(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    out = cli(sb, *ARGS, "--firewall-cidr", "10.0.0.7", check=0)
    assert "10.0.0.7/32" in out.stdout and "that one address only" in out.stdout
    ws = state(sb)["coiled"]["workspaces"]["demo"]
    assert ws["settings"]["scheduler_firewall"] == {"ingress": [{"ports": [22, 8786, 8787], "cidr": "10.0.0.7/32"}]}
    mark = len(writes(sb))
    again = cli(sb, *ARGS, "--firewall-cidr", "10.0.0.7/32", "--firewall-ports", "8787,22,8786", check=0)
    assert "Nothing to change" in again.stdout, again.stdout
    assert writes(sb)[mark:] == []


def test_a_privileged_coiled_account_is_refused_with_a_remedy_that_works(make_sandbox, cli):
    from tests.helpers import clients

    sb = make_sandbox(**FAST)
    two = f"coiled-two@{P}.iam.gserviceaccount.com"
    cli(sb, *ARGS, "--service-account", "coiled-two", check=0)
    c = clients(sb)
    pol = c.projects.get_iam_policy(request={"resource": f"projects/{P}", "options": {"requested_policy_version": 3}})
    pol.bindings.add(role="roles/editor", members=[f"serviceAccount:{two}"])
    c.projects.set_iam_policy(request={"resource": f"projects/{P}", "policy": pol})

    # A re-run without flags keeps the account Coiled holds: the sentence names the flag that changes it.
    line = refused(cli, sb, *ARGS, needle="roles/editor")
    assert "--service-account coiled " in line and "leave out" not in line

    out = cli(sb, "verify", "--output", "json", check=1)
    key_check = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "key_file")
    assert key_check["status"] == "failed" and "--service-account coiled" in key_check["remedy"]

    # The remedy named works.
    cli(sb, *ARGS, "--service-account", "coiled", check=0)
    creds = state(sb)["coiled"]["workspaces"]["demo"]["credentials"]
    assert creds["client_email"] == f"coiled@{P}.iam.gserviceaccount.com"


def _corrupt_key_file(sb, tmp_path):
    """A key of a fresh account, every field present and mode 0600, whose private key PEM is damaged."""
    from tests.helpers import clients

    c = clients(sb)
    sa = c.iam.create_service_account(name=f"projects/{P}", account_id="coiled")
    data = json.loads(c.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{sa.email}").private_key_data)
    lines = data["private_key"].splitlines()
    lines[5] = lines[5][:30] + lines[5][31:]  # one character lost: the base64 no longer decodes
    data["private_key"] = "\n".join(lines) + "\n"
    path = tmp_path / "corrupt.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path, lines[5]


def test_a_key_file_whose_private_key_cannot_be_read_is_one_sentence(sandbox, cli, tmp_path):
    sb = sandbox
    path, body = _corrupt_key_file(sb, tmp_path)
    line = refused(cli, sb, *ARGS, "--key-file", str(path), needle="private key")
    assert str(path) in line and "replace" in line and body not in line

    out = cli(sb, "verify", "--key-file", str(path), "--output", "json", check=1)
    assert "Traceback" not in out.stderr and body not in out.stdout + out.stderr
    assert "PRIVATE KEY" not in out.stdout + out.stderr
    key_check = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "key_file")
    assert key_check["status"] == "failed" and "private key" in key_check["detail"]
    assert "replace" in key_check["detail"]


@pytest.mark.parametrize("flag, value", [
    ("--role-id", "x"),
    ("--region", "mars-central1"),
    ("--instance-service-account", "someone@example.com"),
])
def test_gcp_and_verify_refuse_the_same_input_with_the_same_sentence(cli, sandbox, flag, value):
    """One rule per input: verify does not restate the wizard's validation in other words."""
    said = {cmd: one_sentence_error(cli(sandbox, cmd, "--project", P, flag, value, check=2).stderr)
            for cmd in ("gcp", "verify")}
    assert said["gcp"] == said["verify"]
    assert value in said["gcp"]


def test_a_key_file_read_then_used_loads_its_private_key_once(sandbox, tmp_path, monkeypatch):
    """Loading an RSA key checks it (about 35 ms of CPU): the key file's checks and the calls made with it share
    one load, and the credentials made from it are accepted by Google."""
    from google.auth import crypt

    from coiled_setup import keyfile
    from coiled_setup.cloud import Google
    from tests.helpers import clients

    c = clients(sandbox)
    sa = c.iam.create_service_account(name=f"projects/{P}", account_id="coiled-once")
    data = json.loads(c.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{sa.email}").private_key_data)
    path = tmp_path / "key.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    loads = []
    real = crypt.RSASigner.from_string.__func__
    monkeypatch.setattr(crypt.RSASigner, "from_string",
                        classmethod(lambda cls, *a, **k: loads.append(1) or real(cls, *a, **k)))
    monkeypatch.setenv("COILED_SETUP_GOOGLE_ENDPOINT", sandbox.google_endpoint)
    read = keyfile.read(path)
    g = Google.from_key(keyfile.read(path))
    try:
        g.authenticate()
    finally:
        g.close()
    assert read == data and len(loads) == 1
