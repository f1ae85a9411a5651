"""The bundled role templates (templates/*.yaml inside the package)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

CONTROL_PLANE = "coiled-role.yaml"
INSTANCE = "coiled-instance-role.yaml"


@dataclass(frozen=True)
class RoleTemplate:
    title: str
    description: str
    stage: str
    permissions: tuple[str, ...]


@cache
def load(name: str = CONTROL_PLANE) -> RoleTemplate:
    import yaml

    text = resources.files("coiled_setup").joinpath("templates", name).read_text()
    data = yaml.safe_load(text)
    return RoleTemplate(
        title=data["title"],
        description=data["description"],
        stage=data.get("stage", "GA"),
        permissions=tuple(data["includedPermissions"]),
    )
