"""Saving a sandbox's world between runs, so a rehearsal can be repeated and verified.

The world is written by the one serializer (`snapshot`): everything pending counts as settled once saved;
access tokens are not kept, callers authenticate again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from coiled_setup.sandbox import snapshot
from coiled_setup.sandbox.world import Config, World

# 2: the world in snapshot's full form; a file of another format is not resumed.
FORMAT = 2


def save(world: World, path: Path, ports: tuple[int, int]) -> None:
    data = {"format": FORMAT, "ports": list(ports), "token_uri": world.token_uri,
            "world": snapshot.to_dict(world, full=True)}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def load(path: Path, config: Config) -> tuple[World, tuple[int, int]] | None:
    """The saved world and the ports it used, or None when there is nothing usable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    w = World(config)
    w.token_uri = data["token_uri"]
    snapshot.load(w, data["world"])
    return w, tuple(data["ports"])
