"""Shell completion: --show-completion and --install-completion, and the completions the shell then gets."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

BIN = str(Path(sys.executable).parent)
bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "DASK_", "COILED_"))}
    # coiled-setup on PATH, as the completion script calls it by name.
    env.update(HOME=str(home), PATH=BIN + os.pathsep + env.get("PATH", ""), NO_COLOR="1")
    return env


@bash
def test_bash_completes_commands_and_options_from_the_script_shown(tmp_path):
    """The script --show-completion prints under bash, sourced by bash, completes commands and options."""
    script = ('source <("$PY" -m coiled_setup --show-completion) || exit 9; complete -p coiled-setup; '
              'COMP_WORDS=(coiled-setup ver); COMP_CWORD=1; _coiled_setup_completion coiled-setup; '
              'echo "commands: ${COMPREPLY[*]}"; '
              'COMP_WORDS=(coiled-setup gcp --proj); COMP_CWORD=2; _coiled_setup_completion coiled-setup; '
              'echo "options: ${COMPREPLY[*]}"')
    proc = subprocess.run(["bash", "-c", script], env={**_env(tmp_path), "PY": sys.executable},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "complete -o default -F _coiled_setup_completion coiled-setup" in proc.stdout
    assert "commands: verify\n" in proc.stdout
    assert "options: --project\n" in proc.stdout


@bash
def test_install_completion_writes_the_script_and_sources_it_from_bashrc(tmp_path):
    proc = subprocess.run(["bash", "-c", '"$PY" -m coiled_setup --install-completion; exit $?'],
                          env={**_env(tmp_path), "PY": sys.executable}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / ".bash_completions" / "coiled-setup.sh"
    assert "_COILED_SETUP_COMPLETE=complete_bash" in script.read_text()
    assert str(script.relative_to(tmp_path)) in (tmp_path / ".bashrc").read_text()


@pytest.mark.parametrize("shell, marker", [("/usr/bin/zsh", "#compdef coiled-setup"),
                                           ("/usr/local/bin/fish", "complete --command coiled-setup"),
                                           ("/bin/bash", "complete -o default -F _coiled_setup_completion")])
def test_the_login_shell_decides_when_no_shell_runs_us(monkeypatch, shell, marker):
    from typer import _completion_shared

    from coiled_setup.cli import app

    monkeypatch.setattr(_completion_shared, "_get_shell_name", lambda: None)
    r = CliRunner().invoke(app, ["--show-completion"], env={"SHELL": shell}, prog_name="coiled-setup")
    assert r.exit_code == 0, r.output
    assert marker in r.stdout


def test_an_unknown_shell_is_one_sentence_and_exit_2(monkeypatch):
    from typer import _completion_shared

    from coiled_setup.cli import app

    monkeypatch.setattr(_completion_shared, "_get_shell_name", lambda: "tcsh")
    r = CliRunner().invoke(app, ["--install-completion"], env={"SHELL": "/bin/tcsh"}, prog_name="coiled-setup")
    assert r.exit_code == 2
    assert r.stdout == "" and r.stderr.count(".") == 1 and "not for tcsh" in r.stderr and "bash, zsh, fish" in r.stderr
