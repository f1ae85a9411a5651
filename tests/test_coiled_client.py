"""Coiled as its own client sees it: the workspace chosen, the login found, confirmations, the workspace's
settings as the place the defaults live. The real CLI against one sandbox (users told apart by token)."""

from __future__ import annotations

import copy
import json

import pytest

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO, DEFAULT_TOKEN
from tests.helpers import calls, http, state

MARKED = DEFAULT_TOKEN  # workspaces demo and team; Coiled marks team as the default
UNMARKED = "unmarked-1111-token"  # the same username, the same workspaces, no default marked
NARROW = "203.0.113.0/24"


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    from coiled_setup.sandbox import Config, Sandbox

    scenario = copy.deepcopy(DEFAULT_SCENARIO)
    scenario["coiled"]["users"] = [
        {"token": MARKED, "username": "demo", "workspaces": ["demo", "team"], "default": "team"},
        {"token": UNMARKED, "username": "demo", "workspaces": ["demo", "team"]},
    ]
    box = Sandbox(scenario, Config(propagation_delay_s=0, operation_s=0.05, infra_s=0.05),
                  state_dir=tmp_path_factory.mktemp("coiled-client")).start()
    yield box
    box.stop()


def planned_workspace(cli, sb, *args, env=None, code=0):
    out = cli(sb, "gcp", "--dry-run", "--output", "json", *args, env=env, check=code)
    return json.loads(out.stdout)


# -- the default workspace ----------------------------------------------------------------------------------


def test_the_workspace_coiled_marks_as_default_is_chosen(sb, cli):
    assert planned_workspace(cli, sb)["workspace"] == "team"


def test_the_flag_and_the_environment_come_before_the_mark(sb, cli):
    assert planned_workspace(cli, sb, "--workspace", "demo")["workspace"] == "demo"
    assert planned_workspace(cli, sb, env={"DASK_COILED__WORKSPACE": "demo"})["workspace"] == "demo"


def test_without_a_mark_several_workspaces_are_not_guessed(sb, cli):
    # Not the one named like the user: Coiled's own client only falls back to it, and warns it is a guess.
    doc = planned_workspace(cli, sb, env={"DASK_COILED__TOKEN": UNMARKED}, code=2)
    assert "demo, team" in doc["error"] and "--workspace" in doc["error"]


# -- confirmations ------------------------------------------------------------------------------------------

CREDS_ROUTE = "POST /api/v2/cloud-credentials/{ws}/gcp"
QUESTION = "Workspace demo has 2 running clusters that use the old credentials; replace them"


def configure(sb, **values):
    status, body = http("POST", f"{sb.coiled_url}/_sandbox/config", values)
    assert status == 200, body


def coiled_calls(sb, route, since=0):
    return [c["code"] for c in calls(sb, since) if c["method"] == route]


@pytest.fixture
def asks(sb):
    configure(sb, coiled_confirm={CREDS_ROUTE: QUESTION + "?"})
    yield
    configure(sb, coiled_confirm={}, coiled_retry={})


def test_a_confirmation_is_asked_and_the_answer_decides(sb, asks):
    from coiled_setup.coiled_api import Coiled, CoiledError

    c = Coiled(sb.coiled_url, MARKED, "demo")
    questions = []
    c.confirm = lambda detail: questions.append(detail) or False
    since = len(calls(sb))
    with pytest.raises(CoiledError, match="not confirmed"):
        c.store_credentials({"type": "service_account"}, None)
    assert questions == [QUESTION + "?"] and coiled_calls(sb, CREDS_ROUTE, since) == [409]
    c.confirm = lambda detail: True
    with pytest.raises(CoiledError, match="400"):  # repeated with ?confirm=1: now the body itself is judged
        c.store_credentials({"type": "service_account"}, None)
    assert coiled_calls(sb, CREDS_ROUTE, since) == [409, 409, 400]


def test_a_retry_is_waited_out(sb, monkeypatch):
    from coiled_setup import coiled_api

    monkeypatch.setattr(coiled_api, "ACTION_RETRY_S", 0.0)
    configure(sb, coiled_retry={"PATCH /api/v2/setup/account/{ws}/gcp/settings": 2})
    try:
        c = coiled_api.Coiled(sb.coiled_url, MARKED, "demo")
        assert c.settings({"auto_setup": None})["auto_setup"] is None
    finally:
        configure(sb, coiled_retry={})


def test_a_run_without_a_terminal_says_the_question(asks):
    from coiled_setup.commands.common import confirmer
    from coiled_setup.errors import BadInput

    with pytest.raises(BadInput) as e:
        confirmer(interactive=False, yes=False, ui=None)(QUESTION + "?")
    assert e.value.message.count(QUESTION) == 1 and "--yes" in e.value.message


def test_yes_confirms_and_says_so(sb, cli, asks):
    since = len(calls(sb))
    out = cli(sb, "gcp", "--non-interactive", "--yes", "--workspace", "demo", "--firewall-cidr", NARROW, check=0)
    assert f"Coiled asked: {QUESTION}? Confirmed (--yes)." in out.stderr
    assert coiled_calls(sb, CREDS_ROUTE, since) == [409, 201]
    assert state(sb)["coiled"]["workspaces"]["demo"]["credentials"]["client_email"].startswith("coiled@")


# -- the Coiled login, found where dask finds it ------------------------------------------------------------


def without_login_env(home) -> dict:
    """No DASK_COILED__TOKEN: the login must come from dask's files (the system directory under `home`)."""
    return {"DASK_COILED__TOKEN": None, "DASK_ROOT_CONFIG": str(home / "etc-dask")}


def put(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_login_in_any_file_of_dasks_directories_is_found(sb, cli, tmp_path):
    home = tmp_path / "user-home"  # the cli fixture's HOME
    # Lowest first: the system directory, then ~/.config/dask (any file name), then DASK_CONFIG.
    put(home / "etc-dask" / "coiled.yaml", f"coiled:\n  token: {UNMARKED}\n  workspace: team\n")
    put(home / ".config" / "dask" / "login.yml", f"coiled:\n  token: {MARKED}\n")
    put(sb.state_dir / "dask" / "z.json", json.dumps({"coiled": {"workspace": "demo"}}))
    try:
        assert planned_workspace(cli, sb, env=without_login_env(home))["workspace"] == "demo"
        # Environment variables win over files, their values read as dask reads them (a quoted literal here).
        env = {**without_login_env(home), "DASK_COILED__WORKSPACE": "'team'"}
        assert planned_workspace(cli, sb, env=env)["workspace"] == "team"
    finally:
        (sb.state_dir / "dask" / "z.json").unlink()


def test_a_malformed_file_among_them_is_named(sb, cli, tmp_path):
    home = tmp_path / "user-home"
    put(home / ".config" / "dask" / "coiled.yaml", f"coiled:\n  token: {MARKED}\n")
    put(home / ".config" / "dask" / "distributed.yaml", "distributed: [unclosed\n")
    doc = planned_workspace(cli, sb, env=without_login_env(home), code=2)
    assert "distributed.yaml is not valid YAML" in doc["error"]


def test_an_empty_token_variable_hides_the_files_token_as_in_dask(sb, cli, tmp_path):
    put(tmp_path / "user-home" / ".config" / "dask" / "coiled.yaml", f"coiled:\n  token: {MARKED}\n")
    doc = planned_workspace(cli, sb, env={"DASK_COILED__TOKEN": ""}, code=2)
    assert "DASK_COILED__TOKEN is set but empty" in doc["error"]


# -- the workspace's settings: where the defaults are set, read back and verified ---------------------------

FIREWALL = {"ingress": [{"ports": [22, 8786, 8787], "cidr": NARROW}]}
TEAM = "/api/v2/setup/account/team/gcp"


def verdicts(cli, sb, *args, code):
    doc = json.loads(cli(sb, "verify", "--workspace", "team", "--output", "json", *args, check=code).stdout)
    return {c["name"]: c for c in doc["checks"]}


def test_the_defaults_live_in_the_workspace_and_verify_compares_them(sb, cli):
    out = cli(sb, "gcp", "--non-interactive", "--yes", "--firewall-cidr", NARROW, check=0)
    team = state(sb)["coiled"]["workspaces"]["team"]
    assert team["settings"]["scheduler_firewall"] == FIREWALL
    assert [(r["region"], r["default"]) for r in team["regions"]] == [("us-east1", True)]
    assert team["registry"] == {"type": "gar"} and team["credentials"]["client_email"].startswith("coiled@")
    assert not (sb.state_dir / "dask" / "coiled.yaml").exists(), "the dask config was written unasked"
    assert 'coiled.Cluster(..., spot_policy="spot_with_fallback")' in out.stdout

    checks = verdicts(cli, sb, code=0)
    assert checks["coiled_backend"]["status"] == "ok" and checks["firewall"]["status"] == "ok"
    assert "workspace's settings" in checks["firewall"]["detail"]

    # Changed on Coiled's side: verify sees it in the workspace's own settings and regions.
    wide = {"ingress": [{"ports": [22, 8786, 8787], "cidr": "0.0.0.0/0"}]}
    assert http("PATCH", sb.coiled_url + TEAM + "/settings", {"scheduler_firewall": wide}, token=MARKED)[0] == 200
    assert http("POST", sb.coiled_url + TEAM + "/regions", {"default": True, "region": "us-central1"},
                token=MARKED)[0] == 201
    checks = verdicts(cli, sb, "--region", "us-east1", code=1)
    assert checks["firewall"]["status"] == "failed" and NARROW in checks["firewall"]["detail"]
    assert "default region is us-central1, not us-east1" in checks["coiled_backend"]["detail"]

    # A re-run sets them back; the dask config, asked for, gets the names current clients accept.
    cli(sb, "gcp", "--non-interactive", "--yes", "--region", "us-east1", "--firewall-cidr", NARROW,
        "--write-dask-config", "--no-preemptible", check=0)
    assert state(sb)["coiled"]["workspaces"]["team"]["settings"]["scheduler_firewall"] == FIREWALL
    assert verdicts(cli, sb, code=0)["coiled_backend"]["status"] == "ok"
    import yaml

    written = yaml.safe_load((sb.state_dir / "dask" / "coiled.yaml").read_text())
    assert written == {"coiled": {"backend-options": {
        "region_name": "us-east1", "zone_name": "us-east1-c", "spot": False, "ingress": FIREWALL["ingress"]}}}
    (sb.state_dir / "dask" / "coiled.yaml").unlink()


# -- in a terminal ------------------------------------------------------------------------------------------


def spawn(sb, tmp_path, *args, token=MARKED):
    import os
    import sys

    import pexpect

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", COLUMNS="160", DASK_COILED__TOKEN=token)
    child = pexpect.spawn(sys.executable, ["-m", "coiled_setup", "gcp", *args], env=env, encoding="utf-8",
                          timeout=60, dimensions=(50, 160))
    child.logfile_read = open(tmp_path / "screen.log", "a")
    return child


def test_without_a_mark_a_terminal_asks_which_workspace(sb, tmp_path):
    import pexpect

    child = spawn(sb, tmp_path, "--dry-run", "--firewall-cidr", NARROW, token=UNMARKED)
    child.expect("Coiled workspace")
    child.send("\x1b[B\r")  # the second: team
    for question in ("Service account for Coiled", "least-privilege"):
        child.expect(question)
        child.send("\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "workspace team" in (tmp_path / "screen.log").read_text()


def test_a_terminal_asks_coiled_question_and_a_no_stops_the_request(sb, tmp_path, asks):
    import pexpect

    since = len(calls(sb))
    child = spawn(sb, tmp_path, "--workspace", "demo", "--firewall-cidr", NARROW, "--service-account", "coiled-tty")
    for question in ("least-privilege", "Apply this plan"):
        child.expect(question)
        child.send("\r")
    child.expect(f"Coiled asks: {QUESTION}\\? Go on\\?")
    child.send("n")  # declined: the request is not repeated, the step fails
    child.expect("'Coiled backend' failed. What now")
    child.send("\r")  # Retry: asked again
    child.expect(f"Coiled asks: {QUESTION}\\? Go on\\?")
    child.send("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert coiled_calls(sb, CREDS_ROUTE, since) == [409, 409, 201]
    creds = state(sb)["coiled"]["workspaces"]["demo"]["credentials"]
    assert creds["client_email"].startswith("coiled-tty@")


def test_the_region_is_asked_for_as_coiled_setup_gcp_asks(sb, cli):
    """The regions POST carries the subnets Coiled's own setup sends (managed ones for workers and schedulers)."""
    cli(sb, "gcp", "--non-interactive", "--yes", "--workspace", "demo", "--firewall-cidr", NARROW, check=0)
    regions = state(sb)["coiled"]["workspaces"]["demo"]["regions"]
    assert [r["subnets"] for r in regions if r["default"]] == [
        [{"link": None, "name": None, "for_workers": True, "for_schedulers": True}]]


# -- connections ------------------------------------------------------------------------------------------------

def test_coiled_calls_share_connections(make_sandbox, cli):
    """A run keeps its connections to Coiled open between calls (over TLS each new one costs round trips): calls
    made together take a connection each, and the calls after them use those again."""
    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    before_conns = sb.world.http_connections
    cli(sb, "gcp", "--non-interactive", "--yes", check=0)
    coiled = [x for x in calls(sb) if x["service"] == "coiled"]
    made = sb.world.http_connections - before_conns  # the token route's included
    assert len(coiled) >= 10 and made <= len(coiled) // 2, (made, [x["method"] for x in coiled])


def test_a_netrc_login_does_not_replace_the_token(sb, cli, tmp_path):
    """requests would put a ~/.netrc login for the host in place of an Authorization header; not of the token."""
    host = sb.coiled_url.split("//", 1)[1].split(":")[0]
    netrc = tmp_path / "user-home" / ".netrc"
    netrc.parent.mkdir(exist_ok=True)
    netrc.write_text(f"machine {host} login someone password not-the-token\n")
    netrc.chmod(0o600)
    doc = planned_workspace(cli, sb, "--workspace", "demo")
    assert doc["exit_code"] == 0, doc
