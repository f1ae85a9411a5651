import os
import signal

import pytest

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# The tests fork (pexpect, subprocess) while the in-process sandbox serves gRPC: with gRPC's fork support on,
# its poller thread restarts in the child, whose fds the child closes before exec, and the child can die there
# ("epoll_wait error: Bad file descriptor") before it runs the CLI.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# The tests press Ctrl-C in the CLIs they start. A suite started in the background of a shell ignores SIGINT, and
# its children would inherit that and never hear Ctrl-C; a handler of our own is reset to the default at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def make_sandbox(tmp_path):
    """Starts sandboxes (scenario dict or path, Config fields as keywords); stops them after the test."""
    from coiled_setup.sandbox import Config, Sandbox

    started = []

    def make(scenario=None, **config):
        sb = Sandbox(scenario, Config(**config), state_dir=tmp_path / f"sandbox{len(started)}").start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def sandbox(make_sandbox):
    return make_sandbox()


def cli_runner(home):
    """Runs the real `coiled-setup` in a subprocess against a sandbox, with `home` as the user's home."""
    import subprocess
    import sys

    from tests import json_contract

    home.mkdir(exist_ok=True)

    def run(sb, *args, env=None, timeout=120, check=None):
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("GOOGLE_", "CLOUDSDK_", "DASK_", "COILED_"))}
        full.update({"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud"), "GRPC_VERBOSITY": "ERROR",
                     "NO_COLOR": "1", "COLUMNS": "200"})
        if sb is not None:
            full.update(sb.env)
        full.update(env or {})
        full = {k: v for k, v in full.items() if v is not None}  # None: the variable is unset
        proc = subprocess.run([sys.executable, "-m", "coiled_setup", *args], env=full, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check is not None:
            assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        json_contract.check_output(proc.stdout)
        return proc

    return run


@pytest.fixture
def cli(tmp_path):
    """Runs the real `coiled-setup` in a subprocess against a sandbox, isolated from the user's files."""
    return cli_runner(tmp_path / "user-home")


@pytest.fixture(scope="module")
def module_cli(tmp_path_factory):
    """`cli` for module-scoped fixtures (one home for the module)."""
    return cli_runner(tmp_path_factory.mktemp("user-home"))
