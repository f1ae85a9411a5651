"""Where the project and the Coiled login come from: flags, then environment, then config files."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
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
    path = base / "configurations" / f"config_{config}"
    if not path.is_file():
        return None  # no gcloud here: configparser is not even imported
    import configparser

    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return None
    return parser.get(section, name, fallback=None) or None


def project_from_environment() -> str | None:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT") or gcloud_project()


def dask_config_paths() -> list[str]:
    """Where dask looks for its YAML files, lowest priority first (dask.config.paths), plus the active conda or
    virtual environment's etc/dask: the user's `coiled` usually runs there, not in coiled-setup's own env."""
    import site

    paths = [os.getenv("DASK_ROOT_CONFIG", "/etc/dask"), os.path.join(sys.prefix, "etc", "dask"),
             *[os.path.join(prefix, "etc", "dask") for prefix in site.PREFIXES],
             *[os.path.join(os.environ[v], "etc", "dask")
               for v in ("CONDA_PREFIX", "VIRTUAL_ENV") if os.environ.get(v)],
             os.path.join(os.path.expanduser("~"), ".config", "dask")]
    if "DASK_CONFIG" in os.environ:
        paths.append(os.environ["DASK_CONFIG"])
    return list(reversed(list(dict.fromkeys(reversed(paths)))))  # a repeated path counts where it last appears


def _canonical(key: str, config: dict) -> str:
    """dask's rule: `a-b` and `a_b` are one key, spelled as it was first set."""
    if key in config:
        return key
    alt = key.replace("_", "-") if "_" in key else key.replace("-", "_")
    return alt if alt in config else key


def _merge(old: dict, new: dict) -> dict:
    for key, value in new.items():
        key = _canonical(key, old)
        if isinstance(value, dict):
            if not isinstance(old.get(key), dict):
                old[key] = {}
            _merge(old[key], value)
        else:
            old[key] = value
    return old


def _dask_value(text: str):
    """An environment variable's value, read as dask reads it: a Python literal, else null/true/false, else text."""
    import ast

    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return {"none": None, "null": None, "false": False, "true": True}.get(text.lower(), text)


def _dask_file(path: str) -> dict | None:
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh.read())
    except OSError:
        return None  # as dask: a file it may not read is passed over
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise BadInput(f"The dask config file {path} is not valid YAML{where}: fix it or move it aside, "
                       "then run again.") from None
    except UnicodeDecodeError:
        raise BadInput(f"The dask config file {path} is not text: fix it or move it aside, then run again.") from None
    if data is not None and not isinstance(data, dict):
        raise BadInput(f"The dask config file {path} is not a mapping: fix it or move it aside, then run again.")
    return data


def _dask_files() -> list[str]:
    files = []
    for path in dask_config_paths():
        if os.path.isdir(path):
            try:
                files += sorted(os.path.join(path, p) for p in os.listdir(path)
                                if os.path.splitext(p)[1].lower() in (".json", ".yaml", ".yml"))
            except OSError:
                pass
        elif os.path.exists(path):
            files.append(path)
    return files


def dask_config() -> dict:
    """The dask config as dask itself collects it: every .yaml/.yml/.json file of its directories (later ones
    win, nested keys merged) and then the DASK_* environment variables (`__` nests: DASK_COILED__TOKEN)."""
    result: dict = {}
    for f in _dask_files():
        data = _dask_file(f)
        if data:
            _merge(result, data)
    env: dict = {}
    for name, value in os.environ.items():
        if name.startswith("DASK_") and name != "DASK_INTERNAL_INHERIT_CONFIG":
            *parents, leaf = name[5:].lower().split("__")
            node = env
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
            node[leaf] = _dask_value(value)
    return _merge(result, env)


def _get(section: dict, key: str):
    return section.get(_canonical(key, section))


def dask_coiled_config() -> dict:
    """The `coiled:` section of the dask config (see dask_config), or {}; BadInput when a file of it cannot be
    understood (dask itself refuses to start then)."""
    section = _get(dask_config(), "coiled")
    if section is None:
        return {}
    if not isinstance(section, dict):
        where = next((f for f in reversed(_dask_files()) if not isinstance(_get(_dask_file(f) or {}, "coiled") or {},
                                                                          dict)), None)
        raise BadInput(f"The dask config file {where} has a `coiled:` that is not a mapping: fix it or move it "
                       "aside, then run again." if where else
                       "DASK_COILED is set, which hides the `coiled:` mapping of your dask config: unset it.")
    return section


def coiled_login(server_flag: str | None, workspace_flag: str | None) -> tuple[str | None, str, str | None]:
    """(token, server, workspace): flags first, then the dask config as Coiled's client reads it (its files and
    the DASK_COILED__* variables)."""
    cfg = dask_coiled_config()
    token = _get(cfg, "token")
    server = server_flag or _get(cfg, "server") or DEFAULT_COILED_SERVER
    workspace = workspace_flag or _get(cfg, "workspace") or _get(cfg, "account")
    return (str(token).strip() if token else None), str(server), (str(workspace) if workspace else None)


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
        opts = _get(dask_coiled_config(), "backend-options")
    except BadInput:
        return {}
    return opts if isinstance(opts, dict) else {}
