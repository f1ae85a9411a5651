"""`coiled-setup sandbox`: the local Google Cloud and Coiled, in the foreground."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from coiled_setup.errors import BadInput


def run(scenario: Path | None, port: int, latency_ms: float, fault_rate: float, seed: int,
        propagation_delay_s: float, operation_s: float, state_dir: Path | None) -> int:
    from coiled_setup.sandbox import Config, Sandbox

    if not 0.0 <= fault_rate <= 1.0:
        raise BadInput(f"--fault-rate {fault_rate} must be between 0 and 1.")
    if scenario is not None and not scenario.is_file():
        raise BadInput(f"--scenario {str(scenario)!r} does not exist: give a YAML or JSON scenario file.")
    config = Config(latency_ms=latency_ms, fault_rate=fault_rate, seed=seed,
                    propagation_delay_s=propagation_delay_s, operation_s=operation_s)
    try:
        sb = Sandbox(scenario, config, state_dir=state_dir, port=port)
    except (ValueError, KeyError, OSError) as e:
        raise BadInput(f"--scenario {str(scenario)!r} cannot be used: {e}") from None
    try:
        sb.start()
    except OSError as e:
        raise BadInput(f"Cannot listen on port {port} (or {port + 1}): {e.strerror or e}; choose another --port.") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps(sb.describe()), flush=True)
    print("Sandbox ready; set the variables in 'env' to use it. Ctrl-C stops it.", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sb.stop()
    return 0
