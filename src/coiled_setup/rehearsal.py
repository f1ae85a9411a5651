"""The rehearsal sandbox, started inside the command itself (`--sandbox`)."""

from __future__ import annotations

import os
import shutil

from coiled_setup import paths
from coiled_setup.errors import BadInput
from coiled_setup.remedies import SANDBOX_VAR


def start(fresh: bool = False):
    """Starts the rehearsal sandbox in this process, resuming its saved world, and points the environment at it."""
    from coiled_setup.sandbox import Config, Sandbox

    where = paths.state_dir() / "sandbox"
    if fresh:
        shutil.rmtree(where, ignore_errors=True)
    cannot = (f"The sandbox's directory {where} cannot be written, {{}}: set COILED_SETUP_HOME (or XDG_STATE_HOME) "
              "to a writable directory, then run again.")
    why = paths.unwritable(where / "world.json")
    if why:
        raise BadInput(cannot.format(why))
    # Google-like waits, short enough for a rehearsal.
    try:
        sb = Sandbox(config=Config(propagation_delay_s=2.0, operation_s=1.0, infra_s=1.0), state_dir=where,
                     persist=True).start()
    except OSError as e:
        raise BadInput(cannot.format(e.strerror or e)) from None
    os.environ.update(sb.env)
    os.environ[SANDBOX_VAR] = str(where)
    return sb

