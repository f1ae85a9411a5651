"""The JSON contract: every document of `--output json` the suite sees is checked against the schema that ships
in the package (src/coiled_setup/schemas/), so a document drifting from its schema fails the test that saw it."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


def schema(name: str) -> dict:
    return json.loads((resources.files("coiled_setup") / "schemas" / f"{name}.schema.json").read_text())


@cache
def validator(command: str | None):
    """One validator per command, built once per test process. A command without a schema is an error: a new
    command's documents need their schema before they ship."""
    from jsonschema import Draft202012Validator

    name = "common" if command is None else command
    try:
        s = schema(name)
    except FileNotFoundError:
        raise AssertionError(f"no JSON schema ships for the command {command!r}: "
                             f"add schemas/{name}.schema.json") from None
    Draft202012Validator.check_schema(s)
    return Draft202012Validator(s)


def problems(doc: dict) -> list[str]:
    errors = sorted(validator(doc.get("command")).iter_errors(doc), key=lambda e: list(map(str, e.path)))
    return [f"{'/'.join(map(str, e.path)) or '(document)'}: {e.message}" for e in errors]


def check(doc: dict) -> dict:
    found = problems(doc)
    assert not found, f"the {doc.get('command')} JSON document breaks its schema: " + "; ".join(found)
    return doc


def check_output(text: str) -> dict | None:
    """Checks stdout when it is a document of the CLI (a JSON object with a command field); answers it, or None."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "command" not in doc:
        return None
    return check(doc)
