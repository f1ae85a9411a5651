"""`coiled-setup sandbox`: the local Google Cloud and Coiled, in the foreground."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from coiled_setup.errors import BadInput

MAX_PORT = 65534  # Coiled's side listens on PORT+1


def validate(port: int, latency_ms: float, fault_rate: float, propagation_delay_s: float,
             operation_s: float) -> None:
    if not 0 <= port <= MAX_PORT:
        raise BadInput(f"--port {port} is out of range: give a port from 1 to {MAX_PORT} (Coiled's side listens on "
                       "PORT+1), or 0 to pick free ports.")
    for flag, value in (("--latency-ms", latency_ms), ("--propagation-delay-s", propagation_delay_s),
                        ("--operation-s", operation_s)):
        if not (math.isfinite(value) and value >= 0):
            raise BadInput(f"{flag} {value} is not a duration: give a number of 0 or more.")
    if not (math.isfinite(fault_rate) and 0.0 <= fault_rate <= 1.0):
        raise BadInput(f"--fault-rate {fault_rate} must be between 0 and 1 (the share of calls that fail).")


def prepare_state_dir(state_dir: Path) -> None:
    """Creates the directory (0700) or checks the one given; BadInput when it cannot hold the sandbox's files."""
    flag = f"--state-dir {str(state_dir)!r}"
    if state_dir.exists() and not state_dir.is_dir():
        raise BadInput(f"{flag} is a file, not a directory: give a directory (it is created when missing).")
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise BadInput(f"{flag} cannot be created ({e.strerror or e}): give a directory you can write.") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} is not writable: give a directory you can write.")


def run(scenario: Path | None, port: int, latency_ms: float, fault_rate: float, seed: int,
        propagation_delay_s: float, operation_s: float, state_dir: Path | None) -> int:
    validate(port, latency_ms, fault_rate, propagation_delay_s, operation_s)
    if scenario is not None and not scenario.exists():
        raise BadInput(f"--scenario {str(scenario)!r} does not exist: give a YAML or JSON scenario file.")

    from coiled_setup.sandbox import Config, Sandbox
    from coiled_setup.sandbox import scenario as scenarios

    try:
        spec = scenarios.load(scenario)
    except ValueError as e:
        raise BadInput(f"--scenario {str(scenario)!r} is not a valid scenario: {e} (the format is described in "
                       "coiled_setup/sandbox/scenario.py).") from None
    if state_dir is not None:
        prepare_state_dir(state_dir)
    # New keys lag as accounts and bindings do: refused, and missing from the key list, for as long.
    config = Config(latency_ms=latency_ms, fault_rate=fault_rate, seed=seed,
                    propagation_delay_s=propagation_delay_s, operation_s=operation_s,
                    key_usable_s=propagation_delay_s, key_list_lag_s=propagation_delay_s)

    # Stop (and clean up) on Ctrl-C, kill and a closed terminal alike, from here on.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    # A directory of our own holds the operator's private key: it goes when the sandbox stops.
    own = Path(tempfile.mkdtemp(prefix="coiled-sandbox-")) if state_dir is None else None
    sb = None
    try:
        sb = Sandbox(spec, config, state_dir=own or state_dir, port=port)
        try:
            sb.start()
        except OSError as e:
            sb = None
            if e.errno == errno.EADDRINUSE:
                raise BadInput(f"Port {port} or {port + 1} (Coiled's side) is in use, perhaps by another sandbox: "
                               "choose another --port, or 0 for free ones.") from None
            raise BadInput(f"Cannot listen on port {port} or {port + 1} (Coiled's side): {e.strerror or e}; choose "
                           "another --port, or 0 for free ones.") from None
        if not stop.is_set():
            print(json.dumps(sb.describe()), flush=True)
            print("Sandbox ready; set the variables in 'env' to use it. Ctrl-C stops it"
                  + (" and removes its directory." if own else "."), file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if sb is not None:
            sb.stop()
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
    return 0
