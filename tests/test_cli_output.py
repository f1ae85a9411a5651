"""What the CLI prints: one JSON document on every exit with --output json, help, terminal manners, wording."""

import json
import os
import re
import sys

import pexpect
import pytest

from coiled_setup import __version__

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
    doc = json.loads(out)
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
    doc = json.loads(out.read_text())
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


def test_gcp_help_shows_the_defaults_people_must_know(cli):
    flat = " ".join(cli(None, "gcp", "--help", env={"COLUMNS": "80"}, check=0).stdout.split())
    for default in ("[default: 0.0.0.0/0]", "[default: coiled]", "[default: us-east1]", "[default: 22,8786,8787]",
                    "[default: REGION-c]"):
        assert default in flat
