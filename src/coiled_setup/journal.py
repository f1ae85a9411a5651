"""What coiled-setup created in a project, so a re-run can resume and clean up. Never holds a secret."""

from __future__ import annotations

import json
import time
from pathlib import Path

from coiled_setup import paths
from coiled_setup.errors import UserError


class JournalError(UserError):
    """The journal could not be written; `reason` is the clause for a longer sentence."""

    def __init__(self, path: Path, e: OSError):
        self.reason = f"could not write the journal {path} ({e.strerror or e})"
        super().__init__(f"C{self.reason[1:]}: make its directory writable or set COILED_SETUP_HOME to a writable "
                         "directory, then run again.")


class Journal:
    def __init__(self, project: str, path: Path | None = None):
        self.path = path or paths.state_dir() / f"journal-{project}.json"
        self.data: dict = {"project": project, "created": {}, "keys": []}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict):
                    self.data.update(loaded)
            except ValueError:
                pass  # a torn journal is treated as empty; observation finds the truth

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def set(self, **values) -> None:
        self.data.update(values)
        self.data["updated"] = time.time()
        try:
            paths.write_json_private(self.path, self.data)
        except OSError as e:
            raise JournalError(self.path, e) from None

    def created(self, kind: str, name: str) -> None:
        self.data.setdefault("created", {})[kind] = name
        self.set()

    def forget(self, kind: str) -> None:
        """What was created is gone again (teardown)."""
        if kind in self.data.get("created", {}):
            del self.data["created"][kind]
            self.set()

    def our_keys(self) -> list[str]:
        """Key ids this tool created, oldest first."""
        return list(self.data.get("keys", []))

    def add_key(self, key_id: str) -> None:
        keys = self.our_keys()
        if key_id not in keys:
            keys.append(key_id)
        self.set(keys=keys)

    def drop_key(self, key_id: str) -> None:
        self.set(keys=[k for k in self.our_keys() if k != key_id])

    # -- what the last finished run set up, for `verify` (settings only, never a secret) --------------------
    def record_settings(self, **settings) -> None:
        self.set(settings={**settings, "recorded": time.time()})

    def settings(self) -> dict:
        s = self.data.get("settings")
        return s if isinstance(s, dict) else {}
