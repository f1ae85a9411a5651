"""Where coiled-setup keeps key files and its journal, and how it writes secrets."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

HOME_VAR = "COILED_SETUP_HOME"


def config_dir() -> Path:
    """Key files live here: $COILED_SETUP_HOME, else $XDG_CONFIG_HOME/coiled-setup, else ~/.config/coiled-setup."""
    if os.environ.get(HOME_VAR):
        return Path(os.environ[HOME_VAR])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "coiled-setup"


def state_dir() -> Path:
    """The journal lives here: $COILED_SETUP_HOME/state, else $XDG_STATE_HOME/coiled-setup, else
    ~/.local/state/coiled-setup."""
    if os.environ.get(HOME_VAR):
        return Path(os.environ[HOME_VAR]) / "state"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "coiled-setup"


def default_key_path(project: str, account_id: str) -> Path:
    return config_dir() / "keys" / project / f"{account_id}.json"


def dask_config_file() -> Path:
    base = os.environ.get("DASK_CONFIG") or str(Path.home() / ".config" / "dask")
    return Path(base) / "coiled.yaml"


def private_dir(path: Path) -> None:
    """Creates `path` and its missing parents, each readable by the owner only; directories that already
    exist are left as they are (the user's working directory or /tmp must not be locked)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, so left alone
        os.chmod(d, 0o700)  # mkdir's mode is cut by the umask


def readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def write_atomic(path: Path, text: str, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Writes `text` to `path` at once (a temporary file renamed over it), with `mode` (and `owner`, when
    permitted); missing directories are created private."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, *owner)
            except PermissionError:
                pass
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_private(path: Path, text: str) -> None:
    """Writes atomically with mode 0600; the file is never readable by others."""
    write_atomic(path, text, 0o600)


def write_json_private(path: Path, data) -> None:
    write_private(path, json.dumps(data, indent=2) + "\n")


def unwritable(path: Path) -> str | None:
    """Why `path` could not be written the way write_atomic writes it, or None; changes nothing.

    Probed by creating (and removing) a temporary file in the nearest directory that exists, since
    os.access says yes to root even on a read-only or immutable directory; an existing file must also
    open for writing (an immutable one does not)."""
    target = Path(os.path.realpath(path))
    if target.is_dir():
        return f"{target} is a directory"
    d = target.parent
    while not d.exists() and d.parent != d:
        d = d.parent
    if not d.is_dir():
        return f"{d} is not a directory"
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        why = f" ({e.strerror})" if e.strerror and e.errno != errno.ENOENT else ""
        return f"no file can be created in {d}{why}"
    if target.exists():
        try:
            os.close(os.open(target, os.O_WRONLY))
        except OSError as e:
            return f"{target} cannot be opened for writing ({e.strerror or e})"
    return None
