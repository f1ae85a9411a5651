"""The files a run writes on this machine: the key file, the journal (and the project lock beside it) and the dask
config `coiled.yaml`.

Regressions these tests guard: a file that cannot be written found out only after Google and Coiled were
changed (a traceback, an orphan key); a key whose private half could not be stored left on Google; an existing
directory (the working directory, /tmp) chmodded to 0700; two concurrent runs each making a key; the user's
coiled.yaml overwritten instead of merged (login, other sections, other backend options, comments lost), its
symlink replaced by a plain file, or its mode changed; a resumed run for another account writing its key into the
first account's key file; a --key-file replaced without the plan saying so.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from coiled_setup.lock import ProjectLock
from coiled_setup.sandbox.scenario import DEFAULT_TOKEN
from tests.helpers import calls, clients, state
from tests.test_inputs import one_sentence_error

P = "coiled-demo"
SA = f"coiled@{P}.iam.gserviceaccount.com"
ARGS = ("gcp", "--non-interactive", "--yes")
WRITE = "--write-dask-config"  # the dask config is written only when asked
FAST = dict(propagation_delay_s=0, operation_s=0.05, infra_s=0.05)


def writes(sb, since=0) -> list[dict]:
    return [c for c in calls(sb, since) if c["write"] or c["mutating"]]


def user_keys(sb) -> list[str]:
    c = clients(sb)
    resp = c.iam.list_service_account_keys(request={"name": f"projects/-/serviceAccounts/{SA}", "key_types": [1]})
    return [k.name.rsplit("/", 1)[1] for k in resp.keys]


def a_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory\n")
    return path


# -- every file the run writes, unwritable in turn: refused before any write ---------------------------------

def _key_under_a_file(tmp: Path) -> dict:
    return {"args": ("--key-file", str(a_file(tmp / "plain.txt") / "keys" / "key.json")), "names": "plain.txt"}


def _key_in_proc(tmp: Path) -> dict:
    return {"args": ("--key-file", "/proc/1/coiled/key.json"), "names": "/proc/1"}


def _journal_under_a_file(tmp: Path) -> dict:
    home = a_file(tmp / "home-file") / "coiled-setup"
    return {"env": {"COILED_SETUP_HOME": str(home)}, "names": "journal"}


def _state_home_under_a_file(tmp: Path) -> dict:
    return {"env": {"COILED_SETUP_HOME": "", "XDG_CONFIG_HOME": str(tmp / "config"),
                    "XDG_STATE_HOME": str(a_file(tmp / "state-file") / "state")}, "names": "journal"}


def _dask_config_under_a_file(tmp: Path) -> dict:
    return {"env": {"DASK_CONFIG": str(a_file(tmp / "dask-file") / "dask")}, "names": "dask config",
            "args": ("--write-dask-config",)}


def _dask_config_in_proc(tmp: Path) -> dict:
    return {"env": {"DASK_CONFIG": "/proc/1/dask"}, "names": "dask config", "args": ("--write-dask-config",)}


@pytest.mark.parametrize("make", [_key_under_a_file, _key_in_proc, _journal_under_a_file, _state_home_under_a_file,
                                  _dask_config_under_a_file, _dask_config_in_proc])
def test_an_unwritable_local_file_is_refused_before_any_write(make_sandbox, cli, tmp_path, make):
    sb = make_sandbox()
    given = make(tmp_path)
    mark = len(calls(sb))
    out = cli(sb, *ARGS, *given.get("args", ()), env=given.get("env"), check=2)
    line = one_sentence_error(out.stderr)
    assert "cannot be written" in line and given["names"] in line, line
    assert writes(sb, mark) == [], "a write to Google or Coiled before the local files were checked"


@pytest.fixture
def immutable():
    """chattr +i on paths (even root cannot write them), undone at teardown; skips where chattr cannot."""
    import shutil

    made = []

    def make(path: Path) -> Path:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@pytest.mark.parametrize("what", ["key directory", "state directory", "coiled.yaml"])
def test_an_immutable_place_is_refused_before_any_write(make_sandbox, cli, tmp_path, immutable, what):
    sb = make_sandbox()
    args = []
    if what == "key directory":
        keys = tmp_path / "keys"
        keys.mkdir()
        immutable(keys)
        args = ["--key-file", str(keys / "key.json")]
    elif what == "state directory":
        state_dir = sb.state_dir / "home" / "state"
        state_dir.mkdir(parents=True)
        immutable(state_dir)
    else:
        f = sb.state_dir / "dask" / "coiled.yaml"
        f.parent.mkdir(parents=True)
        f.write_text("coiled:\n  user: ann\n")
        immutable(f)
        args = ["--write-dask-config"]
    mark = len(calls(sb))
    out = cli(sb, *ARGS, *args, check=2)
    assert "cannot be written" in one_sentence_error(out.stderr)
    assert writes(sb, mark) == []


def test_a_key_file_that_cannot_be_stored_after_all_is_deleted_on_google(make_sandbox, tmp_path):
    """The check passed, then the directory became a file while Google made the key: one sentence, no orphan."""
    sb = make_sandbox(hold_method="CreateServiceAccountKey", hold_s=3, **FAST)
    keys = tmp_path / "keys"
    keys.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_", "CLOUDSDK_"))}
    env.update(sb.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", *ARGS, "--key-file", str(keys / "key.json")],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not any(x["method"] == "CreateServiceAccountKey" and x["code"] == "OK" for x in calls(sb)):
        assert time.monotonic() < deadline and proc.poll() is None, "the wizard never created a key"
        time.sleep(0.01)
    keys.rmdir()
    a_file(keys)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    line = one_sentence_error(err)
    assert "Could not write the key file" in line and "deleted on Google" in line
    assert user_keys(sb) == []
    assert not state(sb)["coiled"]["workspaces"]["demo"]["credentials"]  # nothing was uploaded


# -- directories: created private, existing ones left alone -----------------------------------------------------

def test_only_directories_the_run_creates_are_made_private(make_sandbox, cli, tmp_path):
    sb = make_sandbox(**FAST)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    out = cli(sb, *ARGS, "--key-file", str(shared / "key.json"), check=0)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "key.json").stat().st_mode) == 0o600
    assert "readable by other users" in out.stdout and str(shared) in out.stdout

    sb2 = make_sandbox(**FAST)
    tmp_path.chmod(0o751)
    new = tmp_path / "new1" / "new2"
    cli(sb2, *ARGS, "--key-file", str(new / "key.json"), check=0)
    assert stat.S_IMODE(new.stat().st_mode) == 0o700 and stat.S_IMODE(new.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o751  # the existing parent is left alone
    assert stat.S_IMODE((new / "key.json").stat().st_mode) == 0o600


# -- one run at a time per project -------------------------------------------------------------------------------

def _lock(sb) -> ProjectLock:
    return ProjectLock(P, sb.state_dir / "home" / "state" / f"lock-{P}")


def test_a_run_while_another_holds_the_project_says_who_and_writes_nothing(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    with _lock(sb):
        mark = len(calls(sb))
        out = cli(sb, *ARGS, check=4)
        line = one_sentence_error(out.stderr)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in line and "UTC" in line
        assert writes(sb, mark) == []
        cli(sb, *ARGS, "--dry-run", check=0)  # a dry run changes nothing: it needs no lock
    cli(sb, *ARGS, check=0)


def test_two_concurrent_runs_make_one_key(make_sandbox, tmp_path):
    sb = make_sandbox(propagation_delay_s=2.0, operation_s=0.05, infra_s=0.05)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_", "CLOUDSDK_"))}
    env.update(sb.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", NO_COLOR="1")
    procs = [subprocess.Popen([sys.executable, "-m", "coiled_setup", *ARGS], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 4], outs
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 4)
    assert "Another coiled-setup run" in one_sentence_error(refused)
    (kid,) = user_keys(sb)
    assert state(sb)["coiled"]["workspaces"]["demo"]["credentials"]["private_key_id"] == kid


# -- the dask config: merged, comments kept, written through a symlink ---------------------------------------------

USER_CONFIG = """\
# my dask settings
coiled:
  token: {token}   # from coiled login
  server: {server}
  user: ann
  backend-options:
    # GPUs for the image team
    gpu-type: nvidia-tesla-t4
    zone: us-east1-b
distributed:
  worker:
    memory:
      target: 0.8  # spill early
"""


def _login_only_in_the_file(sb) -> dict:
    return {"DASK_COILED__TOKEN": None, "DASK_COILED__SERVER": None}


def test_the_users_coiled_yaml_is_merged_not_overwritten(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    f = sb.state_dir / "dask" / "coiled.yaml"
    f.parent.mkdir(parents=True)
    f.write_text(USER_CONFIG.format(token=DEFAULT_TOKEN, server=sb.coiled_url))
    f.chmod(0o640)
    out = cli(sb, *ARGS, WRITE, env=_login_only_in_the_file(sb), check=0)  # the login came from the file
    assert "still holds zone" in out.stdout and "older coiled clients" in out.stdout

    text = f.read_text()
    data = yaml.safe_load(text)
    assert data["distributed"] == {"worker": {"memory": {"target": 0.8}}}
    c = data["coiled"]
    assert (c["token"], c["server"], c["user"]) == (DEFAULT_TOKEN, sb.coiled_url, "ann")
    # The current names; `zone`, which current clients ignore, is the user's to remove (and named in the output).
    assert c["backend-options"] == {
        "gpu-type": "nvidia-tesla-t4", "zone": "us-east1-b", "region_name": "us-east1", "zone_name": "us-east1-c",
        "spot": True, "ingress": [{"ports": [22, 8786, 8787], "cidr": "0.0.0.0/0"}]}
    for comment in ("# my dask settings", "# from coiled login", "# GPUs for the image team", "# spill early"):
        assert comment in text
    assert stat.S_IMODE(f.stat().st_mode) == 0o640

    again = cli(sb, *ARGS, WRITE, env=_login_only_in_the_file(sb), check=0)
    assert "Nothing to change" in again.stdout
    assert f.read_text() == text


def test_a_symlinked_coiled_yaml_is_written_through_the_link(make_sandbox, cli, tmp_path):
    sb = make_sandbox(**FAST)
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "coiled.yaml"
    real.write_text("# kept in git\ncoiled:\n  user: ann\n")
    real.chmod(0o644)
    link = sb.state_dir / "dask" / "coiled.yaml"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    cli(sb, *ARGS, WRITE, check=0)
    assert link.is_symlink() and link.resolve() == real
    assert real.read_text().startswith("# kept in git\ncoiled:\n  user: ann\n  backend-options:\n")
    assert yaml.safe_load(real.read_text())["coiled"]["backend-options"]["region_name"] == "us-east1"
    assert stat.S_IMODE(real.stat().st_mode) == 0o644
    assert sorted(p.name for p in dotfiles.iterdir()) == ["coiled.yaml"]  # no temporary file left


def test_a_coiled_yaml_whose_layout_cannot_be_edited_keeps_its_comments_and_says_what_to_add(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    f = sb.state_dir / "dask" / "coiled.yaml"
    f.parent.mkdir(parents=True)
    original = "coiled: {user: ann}  # flow style, with a comment\n"
    f.write_text(original)
    out = cli(sb, *ARGS, WRITE, check=0)
    assert f.read_text() == original
    assert "left as it is" in out.stdout and '"region_name": "us-east1"' in out.stdout


def test_a_coiled_yaml_without_comments_in_flow_style_is_rewritten_whole(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    f = sb.state_dir / "dask" / "coiled.yaml"
    f.parent.mkdir(parents=True)
    f.write_text("coiled: {user: ann}\nother: [1, 2]\n")
    cli(sb, *ARGS, WRITE, check=0)
    data = yaml.safe_load(f.read_text())
    assert data["other"] == [1, 2] and data["coiled"]["user"] == "ann"
    assert data["coiled"]["backend-options"]["zone_name"] == "us-east1-c"
    assert json.dumps(data)  # plain data, nothing YAML-specific


# -- a resumed run never touches another account's key file -------------------------------------------------------

def _account_keys(sb, email: str) -> list[str]:
    c = clients(sb)
    resp = c.iam.list_service_account_keys(request={"name": f"projects/-/serviceAccounts/{email}", "key_types": [1]})
    return [k.name.rsplit("/", 1)[1] for k in resp.keys]


def test_resuming_a_run_killed_at_the_key_keeps_the_other_accounts_key_file(make_sandbox, cli, tmp_path):
    """A run for a second account killed while Google makes its key, then run again: the first account's key file
    is left byte for byte, the second account's key goes to its own file, and no key is stranded."""
    sb = make_sandbox(**FAST)
    cli(sb, *ARGS, "--service-account", "coiled-clean2", check=0)
    keys = sb.state_dir / "home" / "keys" / P
    clean = keys / "coiled-clean2.json"
    before = clean.read_bytes()

    sb.world.config.hold_method, sb.world.config.hold_s = "CreateServiceAccountKey", 15
    mark = len(calls(sb))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_", "CLOUDSDK_"))}
    env.update(sb.env, HOME=str(tmp_path / "user-home"), GRPC_VERBOSITY="ERROR", NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", *ARGS, "--service-account", "coiled-kill2"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(x["method"] == "CreateServiceAccountKey" and x["code"] == "OK" for x in calls(sb, mark)):
        assert time.monotonic() < deadline and proc.poll() is None, "the run never created a key"
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    sb.world.config.hold_method, sb.world.config.hold_s = "", 0
    sb.world.stopping.set()
    time.sleep(0.05)
    sb.world.stopping.clear()
    journal_file = sb.state_dir / "home" / "state" / f"journal-{P}.json"
    journal = json.loads(journal_file.read_text())
    # The killed run recorded its account: the first account's key file no longer goes with it.
    assert journal["account"].startswith("coiled-kill2@") and journal.get("key_file") is None

    cli(sb, *ARGS, "--service-account", "coiled-kill2", check=0)
    assert clean.read_bytes() == before
    kill = json.loads((keys / "coiled-kill2.json").read_text())
    assert kill["client_email"] == f"coiled-kill2@{P}.iam.gserviceaccount.com"
    assert _account_keys(sb, kill["client_email"]) == [kill["private_key_id"]]  # the killed run's key was deleted
    journal = json.loads(journal_file.read_text())
    assert journal["key_file"] == str(keys / "coiled-kill2.json") and journal["key_id"] == kill["private_key_id"]


def test_a_recorded_key_file_holding_another_accounts_key_is_not_this_accounts_file(make_sandbox, cli):
    """A journal (from an older version) that pairs another account's key file with this account: that file is left
    alone and this account's key goes to its own."""
    sb = make_sandbox(**FAST)
    cli(sb, *ARGS, "--service-account", "coiled-clean2", check=0)
    keys = sb.state_dir / "home" / "keys" / P
    before = (keys / "coiled-clean2.json").read_bytes()
    journal_file = sb.state_dir / "home" / "state" / f"journal-{P}.json"
    journal = json.loads(journal_file.read_text())
    journal["account"] = f"coiled-kill2@{P}.iam.gserviceaccount.com"
    journal_file.write_text(json.dumps(journal))

    cli(sb, *ARGS, "--service-account", "coiled-kill2", check=0)
    assert (keys / "coiled-clean2.json").read_bytes() == before
    assert json.loads((keys / "coiled-kill2.json").read_text())["client_email"] == journal["account"]


def test_a_key_file_whose_key_is_gone_is_named_as_replaced_in_the_plan(make_sandbox, cli, tmp_path):
    sb = make_sandbox(**FAST)
    path = tmp_path / "mine" / "key.json"
    cli(sb, *ARGS, "--key-file", str(path), check=0)
    old = json.loads(path.read_text())["private_key_id"]
    clients(sb).iam.delete_service_account_key(request={"name": f"projects/{P}/serviceAccounts/{SA}/keys/{old}"})

    out = cli(sb, *ARGS, "--key-file", str(path), "--dry-run", "--output", "json", check=0)
    (detail,) = [s["detail"] for s in json.loads(out.stdout)["steps"] if s["step"] == "account"]
    assert detail == f"create a key for {SA}, replacing {path} (its key no longer exists on Google)"
    cli(sb, *ARGS, "--key-file", str(path), check=0)
    assert json.loads(path.read_text())["private_key_id"] == user_keys(sb)[0] != old


@pytest.mark.parametrize("where", ["home is /dev/null", "state home under a file"])
@pytest.mark.parametrize("output", ["text", "json"])
def test_a_rehearsal_whose_state_directory_cannot_be_made_is_one_sentence(cli, tmp_path, monkeypatch, where, output):
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    if where == "home is /dev/null":
        env, place = {"HOME": "/dev/null"}, "/dev/null/.local/state/coiled-setup/sandbox"
    else:
        (tmp_path / "a-file").write_text("x")
        env, place = {"XDG_STATE_HOME": str(tmp_path / "a-file")}, str(tmp_path / "a-file" / "coiled-setup")
    out = cli(None, "gcp", "--sandbox", "--yes", "--output", output, env=env, check=2)
    assert "Traceback" not in out.stderr
    line = one_sentence_error(out.stderr)
    assert place in line and "COILED_SETUP_HOME" in line and "XDG_STATE_HOME" in line
    if output == "json":
        doc = json.loads(out.stdout)  # exactly one document
        assert doc["exit_code"] == 2 and place in doc["error"]
    else:
        assert out.stdout == ""
