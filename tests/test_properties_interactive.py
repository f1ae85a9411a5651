"""Properties of the interactive wizard over generated answer sequences, typed at its real prompts in a terminal
(line-by-line questions, TERM=dumb): whatever is answered, a run ends with its code and no traceback, an error is
one sentence, and after a run that applied its plan, a re-run answering Enter at every prompt changes nothing.

Derandomised for CI; COILED_SETUP_EXAMPLES=50 COILED_SETUP_RANDOM=1 searches harder.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pexpect
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import reliability as R
from tests.helpers import calls

EXAMPLES = int(os.environ.get("COILED_SETUP_EXAMPLES", "3"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("COILED_SETUP_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROMPT = r"\]: "
MAX_PROMPTS = 40  # a run that keeps asking past this is a loop, not a wizard

# What a person might type: choices, Enter, yes/no, networks good and bad, names good and bad.
ANSWERS = st.lists(st.one_of(
    st.just(""),
    st.sampled_from(["1", "2", "3", "4", "9", "0"]),
    st.sampled_from(["y", "n", "yes", "maybe"]),
    st.sampled_from(["203.0.113.0/24", "10.1.2.3/24", "0.0.0.0/0", "::/0", "not-a-net"]),
    st.sampled_from(["coiled-ops", "Bad_Name", "ab", "coiled"]),
), max_size=14)


def _sandbox(base):
    """A sandbox in its own process (no gRPC threads here when the terminal forks), and its environment."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", "sandbox", "--state-dir", str(base / "sb"),
                             "--operation-s", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "GRPC_VERBOSITY": "ERROR"})
    info = json.loads(proc.stdout.readline())
    return proc, info


def _run(info, home, answers: list[str]) -> tuple[int, str, int]:
    """(exit code, screen, prompts answered): the wizard in a terminal, fed `answers` then Enter."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE_", "DASK_", "COILED_", "CLOUDSDK_")) and k not in ("NO_COLOR", "TERM")}
    env.update(info["env"], HOME=str(home), GRPC_VERBOSITY="ERROR", COLUMNS="160", TERM="dumb")
    child = pexpect.spawn(sys.executable, ["-m", "coiled_setup", "gcp", "--wait-timeout", "30"], env=env,
                          encoding="utf-8", timeout=90, dimensions=(50, 160))
    screen, asked = [], 0
    while True:
        i = child.expect([PROMPT, pexpect.EOF])
        screen.append(child.before + (child.after if i == 0 else ""))
        if i == 1:
            break
        asked += 1
        assert asked <= MAX_PROMPTS, "".join(screen)[-3000:]
        child.sendline(answers[asked - 1] if asked <= len(answers) else "")
    child.close()
    return child.exitstatus, "".join(screen), asked


@SETTINGS
@given(answers=ANSWERS)
def test_any_answers_end_cleanly_and_an_enter_rerun_changes_nothing(tmp_path_factory, answers):
    base = tmp_path_factory.mktemp("answers")
    proc, info = _sandbox(base)
    try:
        code, screen, _ = _run(info, base / "home", answers)
        assert "Traceback" not in screen, screen[-3000:]
        assert code in (0, 1, 2, 3), (code, screen[-2000:])
        errors = [ln for ln in screen.splitlines() if ln.startswith("Error: ")]
        if code != 0:
            assert len(errors) == 1 and R.one_sentence(errors[0][len("Error: "):]), screen[-2000:]
        applied = code == 0 and re.search(r"Summary", screen)
        event(f"exit {code}" + (", applied" if applied else ""))
        if applied:
            sb = type("SB", (), {"coiled_url": info["coiled_url"]})
            mark = len(calls(sb))
            again, screen2, asked = _run(info, base / "home", [])
            assert again == 0, screen2[-3000:]
            made = R.writes(sb, mark)
            assert made == [], f"Enter at all {asked} prompts of a re-run wrote {[c['method'] for c in made]}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
