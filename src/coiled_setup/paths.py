"""Where coiled-setup keeps key files and its journal, and how it writes secrets."""

from __future__ import annotations

import json
import os
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
    """The journal lives here: $COILED_SETUP_HOME/state, else $XDG_STATE_HOME/coiled-setup, else ~/.local/state/coiled-setup."""
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
    """Creates `path` (and missing parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_private(path: Path, text: str) -> None:
    """Writes atomically with mode 0600 in a 0700 directory; the file is never readable by others."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o600)
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


def write_json_private(path: Path, data) -> None:
    write_private(path, json.dumps(data, indent=2) + "\n")
