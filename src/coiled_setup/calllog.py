"""A line per Google and Coiled call (service, method, resource, outcome, time), for --verbose and --log-file.

Only names and outcomes are written, never a request or answer body: a key or token never reaches a line.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_verbose = False
_file = None  # an open file (append, 0600)
path: Path | None = None


def configure(verbose: bool = False, log_file: Path | None = None, command: str = "") -> None:
    """Where call lines go from now on; `log_file` is created (0600) or appended to."""
    global _verbose, _file, path
    close()
    _verbose = verbose
    if log_file is not None:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(log_file, 0o600)  # an existing file too: it lists the project's resources
        _file = os.fdopen(fd, "a", buffering=1)
        path = Path(log_file)
        from coiled_setup import __version__

        _write(f"{_stamp()} coiled-setup {__version__} {command} started")


def close() -> None:
    global _file, path, _verbose
    if _file is not None:
        _file.close()
    _file, path, _verbose = None, None, False


def active() -> bool:
    return _verbose or _file is not None


def _stamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _write(line: str) -> None:
    with _lock:
        if _file is not None:
            _file.write(line + "\n")


def record(service: str, method: str, resource: str, outcome: str, seconds: float) -> None:
    if not active():
        return
    text = f"{service} {method} {resource} {outcome} {seconds * 1000:.0f} ms".replace("  ", " ")
    _write(f"{_stamp()} {text}")
    if _verbose and sys.stderr is not None:
        with _lock:  # calls made together: one whole line each
            sys.stderr.write(f"· {text}\n")
            sys.stderr.flush()


def logged(service: str, method: str, fn):
    """`fn` (a method of a client) with a line per call: its first argument names the resource."""
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        if not active():
            return fn(self, *args, **kwargs)
        resource = args[0] if args and isinstance(args[0], str) else ""
        started = time.monotonic()
        try:
            answer = fn(self, *args, **kwargs)
        except Exception as e:
            record(service, method, resource, getattr(e, "code", "") or type(e).__name__, time.monotonic() - started)
            raise
        record(service, method, resource, "OK", time.monotonic() - started)
        return answer

    return call


def pointer(sentence: str) -> str:
    """A failure sentence, naming the log file when one is written."""
    if path is None:
        return sentence
    return f"{sentence.rstrip().rstrip('.')} (every call is logged in {path})."
