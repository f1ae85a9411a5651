"""What the CLI prints: one JSON document on every exit with --output json, help, terminal manners, wording."""

import json
import os
import re
import sys

import pexpect
import pytest

from coiled_setup import __version__
from tests import json_contract

P = "coiled-demo"
ENTER = "\r"


def document(proc) -> dict:
    """stdout holds exactly one JSON document (json.loads refuses anything before or after it)."""
    doc = json.loads(proc.stdout)
    assert doc["schema_version"] == 1 and doc["tool_version"] == __version__, doc
    assert doc["exit_code"] == proc.returncode
    assert "Traceback" not in proc.stderr
    return doc


# -- --output json: one document on every exit -------------------------------------------------------------

@pytest.mark.parametrize("args, word", [
    (["gcp", "--output", "json", "--bogus"], "--bogus"),
    (["gcp", "--output=json", "--wait-timeout", "soon"], "--wait-timeout"),
    (["gcp", "--no-upload", "--output", "json", "extra"], "extra"),
    (["verify", "--bogus", "--output", "json"], "--bogus"),
    (["verify", "--output=json", "--key-file"], "--key-file"),
])
def test_usage_errors_give_one_json_document(cli, args, word):
    proc = cli(None, *args, check=2)
    doc = document(proc)
    assert word in doc["error"]
    assert doc["command"] == args[0]
    assert word in proc.stderr  # people still read the reason


def test_usage_errors_without_json_stay_text(cli):
    proc = cli(None, "gcp", "--bogus", check=2)
    assert proc.stdout == "" and "--bogus" in proc.stderr


@pytest.mark.parametrize("args, word", [
    (["gcp", "--project", "My_Project"], "--project"),  # raised inside the run
    (["gcp", "--project", P, "--firewall-ports", "ssh"], "--firewall-ports"),  # raised before the run starts
    (["verify", "--project", "My_Project"], "--project"),
])
def test_bad_input_gives_one_json_document(cli, args, word):
    proc = cli(None, *args, "--output", "json", "--non-interactive", check=2) if args[0] == "gcp" else \
        cli(None, *args, "--output", "json", check=2)
    doc = document(proc)
    assert word in doc["error"]


def test_success_and_verify_give_versioned_documents(sandbox, cli):
    done = document(cli(sandbox, "gcp", "--non-interactive", "--yes", "--output", "json", check=0))
    assert done["command"] == "gcp" and done["error"] is None and done["steps"]
    checked = document(cli(sandbox, "verify", "--output", "json", check=0))
    assert checked["command"] == "verify" and checked["summary"]["passed"] is True


def test_an_unexpected_failure_still_gives_one_json_document(monkeypatch, capsys):
    """A bug is a traceback on stderr, and still one document on stdout."""
    from coiled_setup import cli, report
    from coiled_setup.commands import gcp

    def broken(self):
        raise RuntimeError("planted")

    monkeypatch.setattr(gcp.Wizard, "execute", broken)
    monkeypatch.setattr(report, "_printed", False)
    monkeypatch.setattr(sys, "argv", ["coiled-setup", "gcp", "--project", P, "--output", "json",
                                      "--non-interactive"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    out, err = capsys.readouterr()
    doc = json_contract.check(json.loads(out))
    assert exit.value.code == 1 and doc["exit_code"] == 1
    assert "planted" in doc["error"] and "RuntimeError" in err


def test_json_in_a_terminal_never_prompts_and_keeps_stdout_clean(sandbox, tmp_path):
    """A terminal on stdin, stdout to a file: a prompt would wait for an answer that never comes."""
    import pty
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sandbox.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", TERM="xterm-256color")
    controller, terminal = pty.openpty()
    out = tmp_path / "out.json"
    try:
        with out.open("w") as stdout:
            proc = subprocess.run([sys.executable, "-m", "coiled_setup", "gcp", "--output", "json", "--dry-run"],
                                  env=env, stdin=terminal, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                  timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0, proc.stderr
    doc = json_contract.check(json.loads(out.read_text()))
    assert doc["schema_version"] == 1 and doc["exit_code"] == 0 and doc["steps"]


# -- --help ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["gcp", "verify", "sandbox"])
def test_help_shows_every_option_whole_and_its_default_at_80_columns(cli, command):
    import typer.main

    from coiled_setup.cli import app

    proc = cli(None, command, "--help", env={"COLUMNS": "80", "TERM": "xterm-256color"}, check=0)
    text = proc.stdout
    assert "\x1b" not in text and max(len(line) for line in text.splitlines()) <= 80
    tokens = set(re.split(r"[\s,/\[\]]+", text))
    params = typer.main.get_command(app).commands[command].params
    for name in [n for p in params for n in (*p.opts, *p.secondary_opts)]:
        assert name in tokens, f"{name} is not shown whole"
    assert "<bool>" not in text
    flat = " ".join(text.split())
    for p in params:
        if p.default not in (None, False) and not p.is_flag:
            assert f"[default: {p.default}]" in flat, f"{p.opts[0]} does not show its default"


def test_the_command_list_is_not_cut_at_80_columns(cli):
    text = cli(None, "--help", env={"COLUMNS": "80"}, check=0).stdout
    assert not re.search(r"\w\.\.\.$", text, re.M) and max(len(line) for line in text.splitlines()) <= 80


def test_gcp_help_shows_the_defaults_people_must_know(cli):
    flat = " ".join(cli(None, "gcp", "--help", env={"COLUMNS": "80"}, check=0).stdout.split())
    for default in ("[default: 0.0.0.0/0]", "[default: coiled]", "[default: us-east1]", "[default: 22,8786,8787]",
                    "[default: REGION-c]"):
        assert default in flat


# -- wording -------------------------------------------------------------------------------------------------

SOURCE = __import__("pathlib").Path(__file__).resolve().parents[1] / "src" / "coiled_setup"


def test_counts_are_worded_through_one_helper():
    """`{n} permissions` says "1 permissions" one day: counts go through wording.count()."""
    bad = re.compile(r"\{[^{}]+\} (permissions|keys|checks|ports|accounts|warnings|bindings|steps)\b"
                     r"|\b(permission|key|check|port|account|warning|binding|step)\(s\)")
    found = [f"{path.relative_to(SOURCE)}:{i}: {line.strip()}"
             for path in SOURCE.rglob("*.py") if "sandbox" not in path.parts
             for i, line in enumerate(path.read_text().splitlines(), 1) if bad.search(line)]
    assert found == []


def test_count():
    from coiled_setup.wording import count

    assert (count(1, "permission"), count(81, "permission"), count(0, "key")) == \
        ("1 permission", "81 permissions", "0 keys")


def test_listing():
    from coiled_setup.wording import listing

    assert [listing([]), listing(["'A'"]), listing(["'A'", "'B'"]), listing(x for x in ["'A'", "'B and C'", "'D'"])] \
        == ["", "'A'", "'A' and 'B'", "'A', 'B and C' and 'D'"]


def test_the_plan_counts_permissions_as_verify_does(sandbox, cli):
    plan = document(cli(sandbox, "gcp", "--non-interactive", "--dry-run", "--create-instance-service-account",
                        "--output", "json", check=0))
    detail = {s["step"]: s["detail"] for s in plan["steps"]}
    assert detail["instance_role"].endswith("with 1 permission")
    assert detail["confirm"] == ("check, as the account itself, the role's 81 permissions in the project and "
                                 "2 on the registry repository")
    cli(sandbox, "gcp", "--non-interactive", "--yes", check=0)
    checks = {c["name"]: c["detail"] for c in document(cli(sandbox, "verify", "--output", "json", check=0))["checks"]}
    assert "all 81 permissions held" in checks["effective_permissions"]


# -- remedies and credentials ---------------------------------------------------------------------------------

def test_verify_sandbox_remedies_say_sandbox(cli, tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    early = document(cli(None, "verify", "--sandbox", "--output", "json", env=env, check=2))
    assert "coiled-setup gcp --sandbox" in early["error"]
    cli(None, "gcp", "--non-interactive", "--yes", "--sandbox", env=env, check=0)
    checked = document(cli(None, "verify", "--sandbox", "--output", "json", env=env, check=0))
    remedies = [c["remedy"] for c in checked["checks"] if "coiled-setup gcp" in c["remedy"]]
    assert remedies  # the open firewall's warning, at least
    assert all("coiled-setup gcp --sandbox" in r for r in remedies), remedies


def test_commands_named_in_messages_go_through_one_helper():
    """A remedy naming `coiled-setup gcp` literally would lose --sandbox in a rehearsal: remedies.command() adds it."""
    literal = re.compile(r"coiled-setup (gcp|verify|rotate-key|teardown|quotas|review)\b")
    found = [f"{path.relative_to(SOURCE)}:{i}: {line.strip()}"
             for path in SOURCE.rglob("*.py") if "sandbox" not in path.parts and path.name != "cli.py"
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if literal.search(line) and not line.lstrip().startswith(('"""', "#"))]
    assert found == []


@pytest.mark.parametrize("content, says", [(None, "which does not exist"), ("not json", "not a credentials file"),
                                           ('{"type": "nonsense"}', "not a credentials file")])
def test_a_bad_credentials_variable_names_the_file(sandbox, cli, tmp_path, content, says):
    path = tmp_path / "creds.json"
    if content is not None:
        path.write_text(content)
    bad = {"GOOGLE_APPLICATION_CREDENTIALS": str(path)}
    cli(sandbox, "gcp", "--non-interactive", "--yes", "--no-upload", check=0)  # a key file for verify
    for command in (["gcp", "--non-interactive", "--no-upload"], ["verify", "--no-coiled"]):
        doc = document(cli(sandbox, *command, "--output", "json", env=bad, check=2))
        assert f"GOOGLE_APPLICATION_CREDENTIALS names {path}, {says}" in doc["error"] or \
            (str(path) in doc["error"] and says in doc["error"]), doc["error"]


# -- terminal manners ------------------------------------------------------------------------------------------

@pytest.fixture
def outside_sandbox(tmp_path):
    """A sandbox in its own process: no gRPC threads in this one when a pseudo-terminal forks."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", "sandbox", "--state-dir", str(tmp_path / "sb")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "GRPC_VERBOSITY": "ERROR"})
    try:
        yield json.loads(proc.stdout.readline())["env"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def terminal(tmp_path, outside_sandbox):
    def spawn(*args, env=None):
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("GOOGLE_", "DASK_", "COILED_")) and k not in ("NO_COLOR", "TERM")}
        full.update(outside_sandbox, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR", COLUMNS="160",
                    TERM="xterm-256color")
        full.update(env or {})
        child = pexpect.spawn(sys.executable, ["-m", "coiled_setup", *args], env=full, encoding="utf-8",
                              timeout=60, dimensions=(50, 160))
        child.logfile_read = open(tmp_path / "screen.log", "a")
        return child

    return spawn


def test_ctrl_c_at_a_prompt_says_so_once(terminal):
    child = terminal("gcp", "--dry-run")
    child.expect("Service account for Coiled")
    child.sendintr()
    child.expect(pexpect.EOF)
    after = child.before
    child.close()
    assert child.exitstatus == 130
    assert after.count("Interrupted") == 1 and "Cancelled" not in after, after


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_color_and_dumb_terminals_get_no_escape_sequences(terminal, tmp_path, env):
    """Questions are asked line by line; Enter takes each default."""
    child = terminal("gcp", "--dry-run", env=env)
    asked = []
    while child.expect([r"\[[^\]\n]*\]: ", pexpect.EOF]) == 0:
        asked.append(child.before.strip().splitlines()[-1] if child.before.strip() else child.after)
        child.sendline("")
    child.close()
    screen = (tmp_path / "screen.log").read_text()
    assert child.exitstatus == 0, screen
    assert len(asked) >= 3 and "Dry run" in screen
    assert "\x1b" not in screen, sorted(set(re.findall(r"\x1b\[?[0-9;?]*.", screen)))


def test_a_wrong_answer_in_a_plain_terminal_is_asked_again(terminal, tmp_path):
    child = terminal("gcp", "--dry-run", env={"TERM": "dumb"})
    child.expect("Service account for Coiled")
    child.expect(r"\]: ")
    child.sendline("99")
    child.expect("Service account for Coiled|Choose")  # asked again
    child.expect(r"\]: ")
    child.sendline("1")
    child.expect(r"least-privilege")  # the instance account: a choice of its own
    child.expect(r"\]: ")
    child.sendline("maybe")
    child.expect(r"Choose a number")  # asked again
    child.expect(r"\]: ")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130


def test_the_spinner_stops_before_an_error_is_printed():
    import io
    import time

    from rich.console import Console

    from coiled_setup.ui import Ui

    ui = Ui(interactive=False)
    ui.console = Console(file=io.StringIO(), force_terminal=True, width=80)
    ui.begin("Custom role")
    time.sleep(0.3)
    ui.error("planted failure")
    drawn = ui.console.file.getvalue()
    time.sleep(0.3)
    assert ui.console.file.getvalue() == drawn, "the spinner went on drawing after the error"
    assert drawn.endswith("\x1b[2K") or "\r\x1b[2K" in drawn[-20:], repr(drawn[-40:])  # its line was cleared


def test_text_with_colons_is_printed_as_written_not_as_emoji(capsys):
    """Names and Google's messages hold colons (`user:a`, `:smile:` in a description): rich's emoji codes would
    replace them, and loading rich's emoji table costs about 1 MiB of a run's memory."""
    from coiled_setup.ui import Ui

    ui = Ui(interactive=False)
    ui.info("role description :smile: and :thumbs_up:")
    ui.summary([("Custom role", "ok", "title :rocket:")])
    out = capsys.readouterr().out
    assert ":smile:" in out and ":thumbs_up:" in out and ":rocket:" in out, out


def test_each_run_in_one_process_prints_its_document(sandbox):
    """The CLI may run several times in one process (as the reliability suite runs it): one document each."""
    from typer.testing import CliRunner

    from coiled_setup.cli import app

    env = {**sandbox.env, "HOME": str(sandbox.state_dir / "home")}
    for expected in (0, 0, 2):
        args = ["gcp", "--non-interactive", "--yes", "--no-upload", "--output", "json"]
        r = CliRunner().invoke(app, args + (["--region", "mars"] if expected else []), env=env)
        assert r.exit_code == expected
        assert json_contract.check(json.loads(r.stdout))["exit_code"] == expected


def test_the_questions_accept_what_the_flags_accept_and_offer_no_instance_account_for_coiled(terminal, tmp_path):
    """The network question takes 10.1.2.3/24 as the flag does (its network, said); the Coiled account question
    does not offer the least-privilege account cluster instances use."""
    setup = terminal("gcp", "--non-interactive", "--yes", "--create-instance-service-account",
                     "--firewall-cidr", "203.0.113.0/24")
    setup.expect(pexpect.EOF)
    setup.close()
    assert setup.exitstatus == 0, (tmp_path / "screen.log").read_text()[-2000:]
    child = terminal("gcp", "--dry-run", env={"TERM": "dumb"})
    child.expect("Service account for Coiled")
    child.expect(r"\]: ")
    offered = child.before
    assert "coiled@" in offered and "coiled-instance@" not in offered, offered
    child.sendline("")
    child.expect(r"\]: ")  # the instance account: kept
    child.sendline("")
    child.expect(r"CIDR.*\]: ")
    child.sendline("10.1.2.3/24")
    i = child.expect([r"not a network", pexpect.EOF])
    child.close()
    screen = (tmp_path / "screen.log").read_text()
    assert i == 1 and child.exitstatus == 0, screen[-2000:]
    assert "10.1.2.0/24" in screen.split("Service account for Coiled")[-1]


def test_a_closed_stderr_keeps_the_exit_code(sandbox):
    """Started with stderr closed (`2>&-`), the program still exits with its own code."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sandbox.env)
    for args, code in ((["--help"], 0), (["gcp", "--non-interactive", "--yes", "--region", "mars-1"], 2)):
        proc = subprocess.run([sys.executable, "-m", "coiled_setup", *args], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2), timeout=60)
        assert proc.returncode == code, args


def test_verbose_lines_of_calls_made_together_stay_whole(sandbox, cli):
    cli(sandbox, "gcp", "--non-interactive", "--yes", check=0)
    err = cli(sandbox, "verify", "--verbose", check=0).stderr
    lines = [line for line in err.splitlines() if "· " in line]
    assert len(lines) >= 10 and all(line.count("· ") == 1 and line.startswith("· ") for line in lines), err


def test_a_reader_that_goes_away_does_not_stop_the_run(sandbox, tmp_path):
    """`coiled-setup gcp ... | head -1`: once the pipe is closed the output goes quiet, and the setup still ends
    (the journal records its settings), exit 0."""
    import json as json_
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sandbox.env, HOME=str(tmp_path), GRPC_VERBOSITY="ERROR")
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", "gcp", "--non-interactive", "--yes", "--verbose"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader is gone, as `| head -1` leaves
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0
    journal = json_.loads((sandbox.state_dir / "home" / "state" / f"journal-{P}.json").read_text())
    assert journal.get("settings"), "the run stopped before recording its settings"
