"""Reliability and security of `coiled-setup gcp` (and `verify`): transient faults, a concurrent policy writer,
crashes and resumes, bad input, and secrets, each scenario measured.

    python -m tests.reliability            # one line of figures per area

One module per area (faults, concurrency, crashes, bad_input, leaks for the secrets, verify), on top of `common`
(names, sandbox helpers, the state a finished run must leave, the figures) and `lab` (running the wizard).
tests/test_reliability.py runs the same scenario runners and asserts on what they report; the names below are
what the tests reach through `from tests import reliability as R`. Every run talks to a sandbox on 127.0.0.1 and
is seeded. Wizard runs happen in this process (typer's CliRunner, with the environment a user would have),
except where a real process has to die (SIGKILL, SIGINT).

In-process runs scale the back-off sleeps of the product by SLEEP_SCALE (through the sleep of its retry
policy, coiled_setup.retry): the sandbox answers at once, so the waits only cost time; the calls made, their
order and the retry budgets are unchanged.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # as under pytest (conftest.py): gRPC's own info lines are noise

from tests.helpers import calls, state  # noqa: E402
from tests.reliability.bad_input import (
    NOTICE,
    Case,
    bad_input_cases,
    check_case,
    made_up_key,
    one_sentence,
    operator_permission_cases,
    run_bad_input,
)
from tests.reliability.common import (
    ALL_SERVICES,
    ARGS,
    FAST,
    JSON_ARGS,
    MEMBER,
    REPO,
    REPO_ROLE,
    RESUME_HINT,
    ROLE,
    SA,
    SLEEP_SCALE,
    USER_VARS,
    WS,
    Figures,
    P,
    Ratio,
    configure,
    converged,
    dask_config,
    diff,
    journal_path,
    journal_problems,
    key_file,
    normalise,
    orphans,
    scenario,
    user_keys,
    writes,
)
from tests.reliability.concurrency import PolicyWriter, run_concurrent
from tests.reliability.crashes import INTERRUPTS, crash_once, interrupt_once, kill_points, process_calls, run_crashes
from tests.reliability.faults import run_faults
from tests.reliability.lab import Lab, Outcome, Reference, quick_backoff, raised_messages, reference_run
from tests.reliability.leaks import Ledger, secrets_figures
from tests.reliability.lifecycle import (
    run_lifecycle_crashes,
    run_lifecycle_faults,
    run_teardown_concurrent,
    teardown_reference,
)
from tests.reliability.verify import has_verify, run_verify

__all__ = [
    "ALL_SERVICES", "ARGS", "FAST", "INTERRUPTS", "JSON_ARGS", "MEMBER", "NOTICE", "P", "REPO", "REPO_ROLE",
    "RESUME_HINT", "ROLE", "run_lifecycle_crashes", "run_lifecycle_faults", "run_teardown_concurrent",
    "teardown_reference", "SA", "SLEEP_SCALE", "USER_VARS", "WS", "Case", "Figures", "Lab", "Ledger", "Outcome",
    "PolicyWriter", "Ratio", "Reference", "bad_input_cases", "calls", "check_case", "configure", "converged",
    "crash_once", "dask_config", "diff", "has_verify", "interrupt_once", "journal_path", "journal_problems",
    "key_file", "kill_points", "made_up_key", "normalise", "one_sentence", "operator_permission_cases", "orphans",
    "process_calls", "quick_backoff", "raised_messages", "reference_run", "run_bad_input", "run_concurrent",
    "run_crashes", "run_faults", "run_verify", "scenario", "secrets_figures", "state", "user_keys", "writes",
]
