"""Running the wizard: sandboxes under one directory, in-process and real-process runs, each scanned
for secrets; and the fault-free reference run every other run must end in."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from coiled_setup.sandbox import Config, Sandbox
from tests import json_contract
from tests.helpers import calls, state
from tests.reliability.common import (
    FAST,
    JSON_ARGS,
    SLEEP_SCALE,
    USER_VARS,
    dask_config,
    normalise,
)
from tests.reliability.leaks import Ledger

# -- running the wizard ----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    messages: list[str] = field(default_factory=list)  # every UserError / CloudError message raised
    crash: str = ""  # a traceback that escaped, if any

    @property
    def doc(self) -> dict | None:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


@contextlib.contextmanager
def raised_messages():
    """Collects the message of every product exception created meanwhile (to scan them for secrets)."""
    from coiled_setup.cloud import CloudError
    from coiled_setup.errors import UserError

    seen: list[str] = []
    originals = {cls: cls.__init__ for cls in (UserError, CloudError)}

    def spy(cls):
        original = originals[cls]

        def init(self, message, *args, **kw):
            seen.append(str(message))
            original(self, message, *args, **kw)
        return init

    for cls in originals:
        cls.__init__ = spy(cls)
    try:
        yield seen
    finally:
        for cls, original in originals.items():
            cls.__init__ = original


@contextlib.contextmanager
def quick_backoff(scale: float = SLEEP_SCALE):
    """The back-off sleeps shortened (see the package docstring), through the retry policy every wait of the
    product sleeps with."""
    from dataclasses import replace

    from coiled_setup import retry

    with retry.use(replace(retry.current(), sleep=lambda seconds: time.sleep(seconds * scale))):
        yield


class Lab:
    """Sandboxes under one directory, the runs made against them, and the secrets ledger."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger()
        self.count = 0
        self._live: list[Sandbox] = []

    def sandbox(self, scen: dict | None = None, **config) -> Sandbox:
        self.count += 1
        sb = Sandbox(scen, Config(**config), state_dir=self.base / f"sb{self.count}").start()
        self._live.append(sb)
        self.ledger.learn_sandbox(sb)
        return sb

    def stop(self, sb) -> None:
        """Scans the sandbox's state and files for secrets, then stops it."""
        self.ledger.scan_home(sb, f"sandbox {sb.state_dir.name}")
        self.ledger.scan_state(sb.state_dir.name, state(sb))
        sb.stop()
        self._live.remove(sb)

    def close(self) -> None:
        for sb in list(self._live):
            sb.stop()
        self._live.clear()

    def env(self, sb, extra: dict | None = None) -> dict[str, str | None]:
        """What a user's shell would hold: the sandbox's variables, a private HOME, nothing of ours."""
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(USER_VARS)}
        home = self.base / "user-home"
        home.mkdir(exist_ok=True)
        env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), NO_COLOR="1", COLUMNS="200",
                   GRPC_VERBOSITY="ERROR", NO_GCE_CHECK="True", GCE_METADATA_IP="127.0.0.1:9",
                   GCE_METADATA_HOST="127.0.0.1:9")
        if sb is not None:
            env.update(sb.env)
        env.update(extra or {})
        return env

    def run(self, sb, *args, env: dict | None = None, what: str = "run") -> Outcome:
        """The CLI in this process; its outputs and exception messages are scanned for secrets."""
        from typer.testing import CliRunner

        from coiled_setup.cli import app

        with raised_messages() as seen, quick_backoff():
            r = CliRunner().invoke(app, list(args), env=self.env(sb, env))
        crash = ""
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            crash = "".join(traceback.format_exception(*r.exc_info))
        out = Outcome(r.exit_code, r.stdout, r.stderr, seen, crash)
        json_contract.check_output(out.stdout)
        for name, text in (("stdout", out.stdout), ("stderr", out.stderr), ("a traceback", crash)):
            self.ledger.scan(f"{name} of {what}", text)
        for m in seen:
            self.ledger.scan(f"an exception message of {what}", m)
        return out

    def spawn(self, sb, *args, env: dict | None = None, tag: str = "proc") -> subprocess.Popen:
        """The CLI as a real process (to be killed); its outputs go to files scanned by `reap`."""
        full = {k: v for k, v in os.environ.items() if not k.startswith(USER_VARS)}
        full.update({k: v for k, v in self.env(sb, env).items() if v is not None})
        out = open(self.base / f"{tag}.out", "w")
        err = open(self.base / f"{tag}.err", "w")
        proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", *args], env=full, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        proc.tag = tag  # type: ignore[attr-defined]
        out.close()
        err.close()
        return proc

    def reap(self, proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
        code = proc.wait(timeout=timeout)
        tag = proc.tag  # type: ignore[attr-defined]
        stdout = (self.base / f"{tag}.out").read_text()
        stderr = (self.base / f"{tag}.err").read_text()
        self.ledger.scan(f"stdout of {tag}", stdout)
        self.ledger.scan(f"stderr of {tag}", stderr)
        json_contract.check_output(stdout)
        return code, stdout, stderr



@dataclass
class Reference:
    state: dict
    dask: dict | None
    calls: int


def reference_run(lab: Lab, **config) -> Reference:
    """A fault-free run from the default scenario: what every other run must end in."""
    sb = lab.sandbox(**{**FAST, **config})
    out = lab.run(sb, *JSON_ARGS, what="the reference run")
    assert out.code == 0, out.stderr + out.crash
    ref = Reference(normalise(state(sb)), dask_config(sb), len(calls(sb)))
    lab.stop(sb)
    return ref
