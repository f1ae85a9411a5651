"""Where the project and the Coiled login come from: flags, then environment, then config files."""

from __future__ import annotations

import configparser
import json
import os
import re
import stat
from pathlib import Path

from coiled_setup import paths
from coiled_setup.errors import BadInput, UserError

DEFAULT_COILED_SERVER = "https://cloud.coiled.io"


def gcloud_project() -> str | None:
    """The project of gcloud's active configuration, read from its files (gcloud itself never runs)."""
    return gcloud_property("core", "project")


def gcloud_property(section: str, name: str) -> str | None:
    """A property of gcloud's active configuration, read from its files (gcloud itself never runs)."""
    base = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    config = os.environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME")
    if not config:
        try:
            config = (base / "active_config").read_text().strip() or "default"
        except OSError:
            config = "default"
    parser = configparser.ConfigParser()
    try:
        parser.read(base / "configurations" / f"config_{config}")
    except configparser.Error:
        return None
    return parser.get(section, name, fallback=None) or None


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


def write_backend_options(options: dict, warn=None) -> Path:
    """Sets coiled.backend-options in the dask config file, keeping every other key, its comments and layout.

    The file is changed by a minimal text edit (only the keys set here are rewritten), checked by reading
    the result back. When its layout defeats that edit (flow style, say), the file is rewritten whole only
    if it has no comments; otherwise it is left as it is and `warn` says what to add by hand. A symlink is
    written through (the dotfiles repository keeps the file), atomically, and the file keeps its mode."""
    import copy

    import yaml

    f = paths.dask_config_file()
    target = Path(os.path.realpath(f))
    try:
        text = target.read_text() if target.exists() else ""
        data = yaml.safe_load(text) if text.strip() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UserError(f"The dask config file {f} could not be read back to add the backend options: fix it, "
                        "then run again.") from None
    data = {} if data is None else data
    if not isinstance(data, dict) or not isinstance(data.get("coiled") or {}, dict):
        raise UserError(f"The dask config file {f} is not a mapping with a `coiled:` mapping inside: fix it, then "
                        "run again.")
    expected = copy.deepcopy(data)
    section = expected.get("coiled") or {}
    expected["coiled"] = section
    current = section.get("backend-options")
    merged = dict(current) if isinstance(current, dict) else {}
    merged.update(options)
    section["backend-options"] = merged

    new = _edited(text, options, merged)
    if new is None or _load(new) != expected:
        if "#" in text:
            if warn:
                warn(f"{f} was left as it is (coiled-setup keeps its comments but cannot edit its layout): add "
                     f"under coiled: backend-options: {json.dumps(merged)}")
            return f
        new = yaml.safe_dump(expected, sort_keys=False)
    try:
        st = target.stat()
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o600, None  # it may hold the Coiled token: private
    try:
        paths.write_atomic(target, new, mode, owner)
    except OSError as e:
        raise UserError(f"Could not write the dask config file {f} ({e.strerror or e}): add the backend options "
                        f"under coiled: backend-options: {json.dumps(merged)} by hand.") from None
    return f


def _load(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """The index after the last line nested deeper than `indent` following line `start` (trailing blank
    and comment lines stay outside: they belong to what follows)."""
    end = start + 1
    for i in range(start + 1, len(lines)):
        if _content(lines[i]):
            if _indent(lines[i]) <= indent:
                break
            end = i + 1
    return end


def _find_key(lines: list[str], start: int, end: int, indent: int, key: str, block: bool = True) -> int | None:
    """The line in [start, end) that holds `key:` at exactly `indent`, or None; with `block`, -1 when the
    key's value is inline rather than a nested block."""
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}\s*:(.*)$")
    for i in range(start, end):
        m = pattern.match(lines[i].rstrip("\n"))
        if m:
            rest = m.group(1).strip()
            return i if not block or not rest or rest.startswith("#") else -1
    return None


def _dump(values: dict, indent: int) -> list[str]:
    import yaml

    text = yaml.safe_dump(values, sort_keys=False, default_flow_style=False)
    return [" " * indent + ln + "\n" for ln in text.splitlines()]


def _edited(text: str, options: dict, merged: dict) -> str | None:
    """`text` with coiled.backend-options set to `merged`, touching only the keys in `options`; None when
    the file's layout is not the plain block style this edit understands."""
    if "\t" in text:
        return None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    top = _find_key(lines, 0, len(lines), 0, "coiled")
    if top == -1:
        return None
    if top is None:
        return "".join(lines + ["coiled:\n", "  backend-options:\n"] + _dump(merged, 4))
    end = _block_end(lines, top, 0)
    children = [ln for ln in lines[top + 1:end] if _content(ln)]
    ci = _indent(children[0]) if children else 2
    bo = _find_key(lines, top + 1, end, ci, "backend-options")
    if bo == -1:
        return None
    if bo is None:
        lines[end:end] = [" " * ci + "backend-options:\n"] + _dump(merged, ci + 2)
        return "".join(lines)
    bend = _block_end(lines, bo, ci)
    grand = [ln for ln in lines[bo + 1:bend] if _content(ln)]
    gi = _indent(grand[0]) if grand else ci + 2
    for key, value in options.items():
        at = _find_key(lines, bo + 1, bend, gi, key, block=False)
        new = _dump({key: value}, gi)
        if at is None:
            lines[bend:bend] = new
        else:
            lines[at:_block_end(lines, at, gi)] = new
        bend = _block_end(lines, bo, ci)
    return "".join(lines)


def backend_options_in_config() -> dict:
    try:
        opts = dask_coiled_config().get("backend-options")
    except BadInput:
        return {}
    return opts if isinstance(opts, dict) else {}
