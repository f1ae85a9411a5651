"""One run at a time per project: two concurrent runs would each create a key, and the local file would no
longer match what Coiled holds. A lock file beside the journal, held with flock while the run may write."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from coiled_setup import paths
from coiled_setup.errors import LOCKED, BadInput, UserError


def lock_path(project: str) -> Path:
    return paths.state_dir() / f"lock-{project}"


class ProjectLock:
    """Held from `acquire` to `release` (or the process's end: the kernel drops it even after a crash)."""

    def __init__(self, project: str, path: Path | None = None):
        self.project = project
        self.path = path or lock_path(project)
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            paths.private_dir(self.path.parent)
            # Never replaced nor removed: a second run must lock the very same file.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise BadInput(f"The lock file {self.path} cannot be written ({e.strerror or e}): set COILED_SETUP_HOME "
                           "(or XDG_STATE_HOME) to a writable directory, then run again.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"Another coiled-setup run{holder} is changing project {self.project}: wait for it to "
                            f"finish, then run again (the lock is {self.path}).", LOCKED) from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _holder(fd: int) -> str:
    """` (pid 123 on host, since 20:41:03 UTC)`, or "" when the holder has not written itself yet."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = datetime.fromtimestamp(float(info["since"]), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f" (pid {int(info['pid'])} on {info['host']}, since {since})"
    except (ValueError, KeyError, TypeError, OSError):
        return ""
