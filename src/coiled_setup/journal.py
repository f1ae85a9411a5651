"""What coiled-setup created in a project, so a re-run can resume and clean up. Never holds a secret."""

from __future__ import annotations

import json
import threading
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


# Google refuses a new key for a minute or more and lists it only after a while: a key this tool made less than this
# long ago, which Google has not accepted yet, counts as live although Google's key list does not show it.
FRESH_KEY_S = 300.0


class Journal:
    def __init__(self, project: str, path: Path | None = None):
        self.path = path or paths.state_dir() / f"journal-{project}.json"
        self.data: dict = {"project": project, "created": {}, "keys": []}
        self._lock = threading.RLock()  # the registry regions record their repositories concurrently
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
        with self._lock:  # steps applied together write it from their own threads
            self.data.update(values)
            self.data["updated"] = time.time()
            try:
                paths.write_json_private(self.path, self.data)
            except OSError as e:
                raise JournalError(self.path, e) from None

    def created(self, kind: str, name) -> None:
        with self._lock:
            self.data.setdefault("created", {})[kind] = name
            (self.data.get("creating") or {}).pop(kind, None)
            self.set()

    # A creation asked of Google is recorded first: when its answer is lost (a retry, or a run killed meanwhile)
    # and the thing is found there later, it is still known as made here.
    def creating(self, kind: str, name: str) -> None:
        with self._lock:
            self.data.setdefault("creating", {})[kind] = name
            self.set()

    def settle_creation(self, kind: str, name: str, exists: bool) -> None:
        """What became of a creation recorded by `creating`: made here when `name` exists, else never made."""
        with self._lock:
            if (self.data.get("creating") or {}).get(kind) != name:
                return
            if exists:
                self.created(kind, name)
            else:
                del self.data["creating"][kind]
                self.set()

    def forget(self, kind: str) -> None:
        """What was created is gone again (teardown)."""
        if kind in self.data.get("created", {}):
            del self.data["created"][kind]
            self.set()

    # -- the repositories this tool created (one per registry region); older journals hold one name -------
    def created_repositories(self) -> list[str]:
        made = (self.data.get("created") or {}).get("repository")
        if isinstance(made, str):
            return [made]
        return [r for r in made if isinstance(r, str)] if isinstance(made, list) else []

    def created_repository(self, name: str) -> None:
        with self._lock:
            if name not in self.created_repositories():
                self._repositories([*self.created_repositories(), name])

    def forget_repository(self, name: str) -> None:
        with self._lock:
            self._repositories([r for r in self.created_repositories() if r != name])

    def _repositories(self, names: list[str]) -> None:
        # One name stays a string, as journals always held it; several are a list.
        if not names:
            self.forget("repository")
        else:
            self.created("repository", names[0] if len(names) == 1 else names)

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

    def fresh_key(self, email: str) -> str | None:
        """The id of the key of `email` this tool made less than FRESH_KEY_S ago and Google has not accepted yet.

        Once accepted, a key missing from Google's list was deleted: Google lists a key before it accepts it (its
        samples list a new key after 5 s; acceptance can take a minute or more)."""
        kid, made = self.data.get("key_id"), self.data.get("key_created")
        if (self.data.get("account") != email or not kid or kid not in self.our_keys()
                or self.data.get("key_accepted") == kid
                or isinstance(made, bool) or not isinstance(made, (int, float))):
            return None
        return kid if 0 <= time.time() - made < FRESH_KEY_S else None

    # -- what the last finished run set up, for `verify` (settings only, never a secret) --------------------
    def record_settings(self, **settings) -> None:
        self.set(settings={**settings, "recorded": time.time()})

    def settings(self) -> dict:
        s = self.data.get("settings")
        return s if isinstance(s, dict) else {}
