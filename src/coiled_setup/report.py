"""The one JSON document `--output json` prints on every exit of a command, usage errors included."""

from __future__ import annotations

import json
import sys

from coiled_setup import __version__

# Bump when a field changes meaning or disappears; adding a field does not bump it.
SCHEMA_VERSION = 1

# Every document of a command has these fields, so a consumer reads one shape whatever the exit.
FIELDS = {
    "gcp": {"project": None, "workspace": None, "service_account": None, "key_file": None, "steps": [],
            "conflicts_retried": 0},
    "rotate-key": {"project": None, "workspace": None, "service_account": None, "key_file": None, "steps": [],
                   "conflicts_retried": 0},
    "teardown": {"project": None, "workspace": None, "service_account": None, "key_file": None, "steps": [],
                 "conflicts_retried": 0},
    "quotas": {"project": None, "region": None, "regions": [], "console_url": None, "quotas": None, "readings": [],
               "requests": []},
    "verify": {"project": None, "service_account": None, "key_file": None, "workspace": None, "checks": [],
               "summary": None},
    "review": {"project": None, "source": None, "note": None, "generated": None, "settings": None, "roles": [],
               "permissions": [], "resources": [], "apis": [], "key": None, "org_policies": []},
}

_printed = False


def reset() -> None:
    """A new command starts (the CLI may run several times in one process, as the tests do)."""
    global _printed
    _printed = False


def emit(command: str | None, exit_code: int, error: str | None, **fields) -> None:
    """Prints the document once; later calls in the same process are ignored."""
    global _printed
    if _printed:
        return
    _printed = True
    doc = {"schema_version": SCHEMA_VERSION, "tool_version": __version__, "command": command,
           "exit_code": exit_code, "error": error}
    doc.update(FIELDS.get(command or "", {}))
    doc.update(fields)
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def printed() -> bool:
    return _printed


def unexpected(e: BaseException) -> str:
    return f"Unexpected error (a bug in coiled-setup; please report it with the traceback): {type(e).__name__}: {e}"


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for --output json (the last --output wins, as when parsed)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--output" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--output="):
            value = arg.split("=", 1)[1]
    return value == "json"


def command_of(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in FIELDS else None
    return None
