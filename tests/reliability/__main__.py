"""`python -m tests.reliability`: one line of figures per area."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.reliability.bad_input import run_bad_input
from tests.reliability.concurrency import run_concurrent
from tests.reliability.crashes import run_crashes
from tests.reliability.faults import run_faults
from tests.reliability.lab import Lab, reference_run
from tests.reliability.leaks import secrets_figures
from tests.reliability.lifecycle import (
    run_lifecycle_crashes,
    run_lifecycle_faults,
    run_teardown_concurrent,
    teardown_reference,
)
from tests.reliability.verify import run_verify


def main() -> int:
    import shutil
    import tempfile

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    base = Path(tempfile.mkdtemp(prefix="coiled-reliability-"))
    lab = Lab(base)
    t0 = time.monotonic()
    figures = []
    try:
        ref = reference_run(lab)
        gone = teardown_reference(lab)
        for make in (lambda: run_faults(lab, ref=ref), lambda: run_concurrent(lab),
                     lambda: run_crashes(lab, ref=ref), lambda: run_bad_input(lab), lambda: run_verify(lab),
                     lambda: run_lifecycle_faults(lab, ref=gone), lambda: run_lifecycle_crashes(lab, ref=gone),
                     lambda: run_teardown_concurrent(lab)):
            fig = make()
            figures.append(fig)
            print(fig.line(), flush=True)
        fig = secrets_figures(lab)
        figures.append(fig)
        print(fig.line())
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)
    problems = [f"{f.area}: {p}" for f in figures for p in f.problems]
    print(f"{'time:':<11} {time.monotonic() - t0:.0f} s, problems {len(problems)}")
    for p in problems:
        print("  " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
