"""Where the project and the Coiled login come from: flags, then environment, then config files."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from coiled_setup import paths
from coiled_setup.errors import BadInput

DEFAULT_COILED_SERVER = "https://cloud.coiled.io"


def gcloud_project() -> str | None:
    """The project of gcloud's active configuration, read from its files (gcloud itself never runs)."""
    base = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    name = os.environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME")
    if not name:
        try:
            name = (base / "active_config").read_text().strip() or "default"
        except OSError:
            name = "default"
    parser = configparser.ConfigParser()
    try:
        parser.read(base / "configurations" / f"config_{name}")
    except configparser.Error:
        return None
    return parser.get("core", "project", fallback=None) or None


def project_from_environment() -> str | None:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT") or gcloud_project()


def dask_coiled_config() -> dict:
    """The `coiled:` section of the dask config file, or {}; BadInput when the file cannot be understood
    (it is later rewritten with the backend options, so a file read as empty would lose the user's keys)."""
    f = paths.dask_config_file()
    if not f.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise BadInput(f"The dask config file {f} is not valid YAML{where}: fix it or move it aside, "
                       "then run again.") from None
    except (OSError, UnicodeDecodeError):
        raise BadInput(f"The dask config file {f} cannot be read: check its permissions.") from None
    section = (data.get("coiled") or {}) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise BadInput(f"The dask config file {f} is not a mapping with a `coiled:` mapping inside: fix it or "
                       "move it aside, then run again.")
    return section


def coiled_login(server_flag: str | None, workspace_flag: str | None) -> tuple[str | None, str, str | None]:
    """(token, server, workspace) from flags, DASK_COILED__* variables, then coiled.yaml."""
    cfg = dask_coiled_config()
    token = os.environ.get("DASK_COILED__TOKEN") or cfg.get("token")
    server = server_flag or os.environ.get("DASK_COILED__SERVER") or cfg.get("server") or DEFAULT_COILED_SERVER
    workspace = (workspace_flag or os.environ.get("DASK_COILED__WORKSPACE") or cfg.get("workspace")
                 or cfg.get("account"))
    return (str(token) if token else None), str(server), workspace


def write_backend_options(options: dict) -> Path:
    """Sets coiled.backend-options in the dask config file, keeping every other key."""
    import yaml

    f = paths.dask_config_file()
    data: dict = {}
    if f.exists():
        try:
            data = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError:
            data = {}
    if not isinstance(data, dict):
        data = {}
    section = data.setdefault("coiled", {})
    if not isinstance(section, dict):
        section = data["coiled"] = {}
    current = section.get("backend-options")
    merged = dict(current) if isinstance(current, dict) else {}
    merged.update(options)
    section["backend-options"] = merged
    # The file may hold the Coiled token: keep it private.
    paths.write_private(f, yaml.safe_dump(data, sort_keys=False))
    return f


def backend_options_in_config() -> dict:
    try:
        opts = dask_coiled_config().get("backend-options")
    except BadInput:
        return {}
    return opts if isinstance(opts, dict) else {}
