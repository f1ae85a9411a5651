"""Which permissions exist, and which a project-level custom role may hold (data/permissions.json says whence)."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    text = resources.files("coiled_setup.sandbox").joinpath("data/permissions.json").read_text()
    d = json.loads(text)
    return {"services": tuple(d["services"]), "known": frozenset(d["permissions"]),
            "org_only": frozenset(d["not_valid_in_project_roles"])}


def valid_in_project_role(permission: str) -> bool:
    """False when Google would refuse the permission in a project-level custom role.

    Permissions of services the catalogue does not cover are accepted: the sandbox cannot know them."""
    d = _data()
    if permission in d["org_only"]:
        return False
    if permission.split(".", 1)[0] in d["services"]:
        return permission in d["known"]
    return True
