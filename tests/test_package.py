"""The package itself: templates, wheel contents, start-up, the sandbox command."""

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coiled_setup import role_templates

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "seed" / "gcp-backend.rst"


def seed_role() -> dict:
    """The role YAML block of the seed document, parsed independently of the product."""
    import yaml

    text = SEED.read_text()
    block = text.split("Save the below YAML")[1].split(".. code-block:: yaml")[1].split("Then, use the")[0]
    lines = [line for line in block.splitlines() if line.strip()]
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    return yaml.safe_load("\n".join(line[indent:] for line in lines))


@pytest.mark.skipif(not SEED.exists(), reason="the seed document sits beside the repository")
def test_bundled_role_equals_the_seed():
    seed = seed_role()
    t = role_templates.load()
    assert (t.title, t.description, t.stage) == (seed["title"], seed["description"], seed["stage"])
    assert list(t.permissions) == seed["includedPermissions"]
    assert len(t.permissions) == 81


def test_instance_role_is_least_privilege():
    t = role_templates.load(role_templates.INSTANCE)
    assert list(t.permissions) == ["logging.logEntries.create"]


def test_templates_dir_is_the_packaged_one():
    assert (ROOT / "templates" / "coiled-role.yaml").read_text() == \
        (ROOT / "src" / "coiled_setup" / "templates" / "coiled-role.yaml").read_text()


def test_wheel_contains_both_templates(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
                           str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "coiled_setup/templates/coiled-role.yaml" in names
    assert "coiled_setup/templates/coiled-instance-role.yaml" in names
    assert "coiled_setup/templates/permissions-explained.yaml" in names  # coiled-setup review reads it
    # The sandbox's permission catalogue ships; no saved sandbox state does.
    shipped = [n for n in names if "/sandbox/" in n and n.endswith(".json")]
    assert shipped == ["coiled_setup/sandbox/data/permissions.json"]
    from coiled_setup import report

    for command in ("common", *report.FIELDS):  # the JSON contract
        assert f"coiled_setup/schemas/{command}.schema.json" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}\n" in meta
    assert "License-Expression: BSD-3-Clause" in meta


def _third_party_imports() -> set[str]:
    names = set()
    for f in (ROOT / "src" / "coiled_setup").rglob("*.py"):
        for m in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", f.read_text(), re.M):
            names.add(m.group(1))
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("coiled_setup", "__future__")}


# The distribution that provides each top-level import of the package.
PROVIDERS = {"google": None, "grpc": "grpcio", "grpc_status": "grpcio-status", "yaml": "pyyaml",
             "click": "typer"}  # older typer releases use click itself rather than a copy of their own


def test_every_import_is_a_declared_dependency():
    import tomllib

    declared = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower()
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name in _third_party_imports():
        dist = PROVIDERS.get(name, name)
        if dist is None:  # google.* namespaces: each used client is declared by its own name
            continue
        assert dist.lower() in declared, f"{name} is imported but {dist} is not a declared dependency"


def test_sdist_carries_what_its_tests_need(tmp_path):
    import tarfile

    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path),
                           str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        t.extractall(tmp_path / "x", filter="data")
    (top,) = (tmp_path / "x").iterdir()
    for need in ("templates/coiled-role.yaml", "bench/run.py", ".ci/run", "LICENSE", "README.md"):
        assert (top / need).is_file(), need
    # A fast subset of the suite, run from the unpacked sdist against its own sources.
    env = {**os.environ, "PYTHONPATH": str(top / "src")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "tests/test_package.py", "-k",
                           "templates_dir or readme_test_command or least_privilege or version"],
                          cwd=top, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"\b4 passed\b", proc.stdout), proc.stdout[-2000:]


def _imports_after(args: list[str]) -> set[str]:
    code = ("import sys, runpy\n"
            f"sys.argv = ['coiled-setup', *{args!r}]\n"
            "try:\n    runpy.run_module('coiled_setup', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return set(proc.stderr.split())


@pytest.mark.parametrize("args", [["--help"], ["gcp", "--help"], ["verify", "--help"], ["sandbox", "--help"],
                                  ["--version"]])
def test_help_imports_no_google_library(args):
    mods = _imports_after(args)
    assert "typer" in mods  # the probe really ran the CLI
    heavy = sorted(m for m in mods if m.startswith(("google", "grpc", "questionary", "yaml", "pydantic")))
    assert heavy == []


def test_version():
    proc = subprocess.run([sys.executable, "-m", "coiled_setup", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert re.fullmatch(r"coiled-setup \d+\.\d+\.\d+\n", proc.stdout)


def test_sandbox_command_prints_one_json_line_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", "sandbox", "--state-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        assert re.fullmatch(r"127\.0\.0\.1:\d+", info["google_endpoint"])
        assert info["coiled_url"].startswith("http://127.0.0.1:")
        assert info["project"] == "coiled-demo"
        e = info["env"]
        assert e["COILED_SETUP_GOOGLE_ENDPOINT"] == info["google_endpoint"]
        assert e["DASK_COILED__SERVER"] == info["coiled_url"]
        key = json.loads(Path(e["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
        assert key["client_email"].startswith("operator@")
        assert os.stat(e["GOOGLE_APPLICATION_CREDENTIALS"]).st_mode & 0o777 == 0o600
        from tests.helpers import http

        status, me = http("GET", info["coiled_url"] + "/api/v2/user/me", token=e["DASK_COILED__TOKEN"])
        assert (status, me["username"]) == (200, "demo")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_sandbox_command_rejects_a_bad_fault_rate():
    proc = subprocess.run([sys.executable, "-m", "coiled_setup", "sandbox", "--fault-rate", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--fault-rate" in proc.stderr and "Traceback" not in proc.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)\n```", readme, re.S)
    main_command, test_command = blocks[0], blocks[1]
    assert "coiled-setup gcp --sandbox" in main_command
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_wheel_in_a_fresh_venv_runs_the_readmes_first_command(tmp_path):
    """Installed as users install it (a wheel, not editable, in a new venv), README's first command rehearses
    a setup in a terminal, answering Enter at every question, and verify then passes."""
    import pexpect

    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
                           str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    first = re.findall(r"```\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)[0]
    command = first.split("&&")[-1].split()
    assert command[0] == ".venv/bin/coiled-setup", first
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_", "CLOUDSDK_"))}
    env.update(HOME=str(tmp_path / "home"), TERM="dumb", GRPC_VERBOSITY="ERROR", COLUMNS="120")
    exe = str(venv / "bin" / "coiled-setup")
    child = pexpect.spawn(exe, command[1:], env=env, cwd=str(tmp_path), encoding="utf-8", timeout=120)
    asked = 0
    while child.expect([r"\]: ", pexpect.EOF]) == 0:
        asked += 1
        assert asked < 20, child.before
        child.sendline("")
    child.close()
    assert child.exitstatus == 0 and asked >= 3, child.before
    done = subprocess.run([exe, "verify", "--sandbox"], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
