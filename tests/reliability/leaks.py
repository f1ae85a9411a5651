"""5. secrets: every secret a run could leak, and every text and file checked for it."""

from __future__ import annotations

import json
import re
import stat
from typing import TYPE_CHECKING

from coiled_setup.sandbox.scenario import DEFAULT_TOKEN
from tests.reliability.common import Figures

if TYPE_CHECKING:
    from tests.reliability.lab import Lab


# -- secrets ---------------------------------------------------------------------------------------------------------

PEM_LINE = re.compile(r"[A-Za-z0-9+/]{64}")


class Ledger:
    """Every secret a run could leak (private keys, Coiled tokens), and every text and file checked for them."""

    def __init__(self):
        self.needles: dict[str, str] = {}
        self.texts = 0
        self.files = 0
        self.leaks: list[str] = []
        self._seen: list[tuple[str, str]] = []  # rechecked at the end, for keys learned after a text was seen

    def learn_key(self, keyfile: dict, what: str) -> None:
        body = [ln for ln in str(keyfile.get("private_key", "")).splitlines() if ln and not ln.startswith("-----")]
        for ln in body[:2] + body[-3:-1]:
            if len(ln) >= 40:
                self.needles[ln] = what

    def learn_token(self, token: str, what: str = "the Coiled token") -> None:
        if token:
            self.needles[token] = what

    def learn_sandbox(self, sb) -> None:
        self.learn_key(json.loads(sb.operator_key_path.read_text()), "the operator's private key")
        for token in sb.world.coiled.users:
            self.learn_token(token)

    def scan(self, where: str, text: str | None) -> None:
        if not text:
            return
        self.texts += 1
        self._seen.append((where, text))
        if "PRIVATE KEY" in text:
            self.leaks.append(f"a PEM private key marker in {where}")
        elif PEM_LINE.search(text):
            self.leaks.append(f"a PEM-like base64 line in {where}")

    def scan_state(self, where: str, dump: dict) -> None:
        """The sandbox keeps public keys only, and no token."""
        for k in dump.get("keys", {}).values():
            if "PRIVATE" in k.get("public_key", ""):
                self.leaks.append(f"a private key in the sandbox state ({where})")
        self.texts += 1
        self._seen.append((f"the sandbox state ({where})", json.dumps(dump).replace("\\n", "\n")))

    def check(self) -> list[str]:
        """Every leak: the markers seen so far, and every secret now known in every text seen."""
        found = list(self.leaks)
        for where, text in self._seen:
            found += [f"{what} in {where}" for needle, what in self.needles.items() if needle in text]
        return list(dict.fromkeys(found))

    def scan_home(self, sb, where: str) -> None:
        """Key files 0600 in 0700 directories; the journal and the dask config hold no secret."""
        home = sb.state_dir / "home"
        for f in sorted(home.rglob("*")) if home.exists() else []:
            if f.is_dir():
                continue
            self.files += 1
            mode = stat.S_IMODE(f.stat().st_mode)
            parent = stat.S_IMODE(f.parent.stat().st_mode)
            if mode != 0o600 or parent != 0o700:
                self.leaks.append(f"{f.relative_to(home)} has mode {mode:o} in a {parent:o} directory ({where})")
            if f.parent.parent.name == "keys" and f.suffix == ".json":
                try:
                    self.learn_key(json.loads(f.read_text()), "a Coiled account's private key")
                except ValueError:
                    pass
            else:
                self.scan(f"{f.relative_to(home)} ({where})", f.read_text(errors="replace"))
        dask = sb.state_dir / "dask" / "coiled.yaml"
        if dask.exists():
            text = dask.read_text()
            self.scan(f"coiled.yaml ({where})", text.replace(DEFAULT_TOKEN, ""))  # a token the user put there


def secrets_figures(lab: Lab) -> Figures:
    fig = Figures("secrets")
    fig.problems = lab.ledger.check()
    fig.values = {"texts scanned": lab.ledger.texts, "files checked": lab.ledger.files,
                  "secrets looked for": len(set(lab.ledger.needles.values())),
                  "secret leaks found": len(fig.problems)}
    return fig
