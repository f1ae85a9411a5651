"""The benchmark runs to the end in its quick mode and prints every figure; timings are not asserted here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = [
    "startup.help.wall", "startup.help.peak", "startup.gcp_help.wall", "startup.gcp_help.peak",
    "round_trips.fresh", "round_trips.rerun", "round_trips.verify",
    "critical_path.fresh", "critical_path.rerun", "critical_path.verify",
    "verify.wall",
    "wait.binding", "wait.enable_operation", "wait.repository_operation", "wait.permissions",
    "wait.coiled_global", "wait.coiled_region",
]


def test_quick_benchmark_prints_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for name in FIGURES:
        line = next((x for x in lines if x.startswith(name + " ")), None)
        assert line is not None, f"no line for {name}:\n{proc.stdout}"
        # A figure has a ratio and a target; verify's are allowed to be missing when the command is.
        assert ("x  " in line and ("target" in line or "no target" in line)) or "verify: not available" in line, line
    assert "targets met" in lines[-1]
