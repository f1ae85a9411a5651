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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built once for the tests of this module."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = out.glob("*.whl")
    return built


def test_wheel_contains_both_templates(wheel):
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
    code = ("import sys\n"
            f"sys.argv = ['coiled-setup', *{args!r}]\n"
            "from coiled_setup.cli import main  # the program's main, without the entry's immediate exit\n"
            "try:\n    main()\n"
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


def _venv_with(wheel: Path, venv: Path, python: str = sys.executable, borrow_dependencies: bool = False) -> Path:
    """A new venv with the wheel installed (not editable); its `coiled-setup` command. With
    `borrow_dependencies` the venv reads the dependencies from this interpreter's site-packages rather than
    installing them again: what is tested is the wheel itself (that its declared dependencies are complete
    is test_every_import_is_a_declared_dependency's job, and the opt-in test below installs them for real)."""
    import sysconfig

    if borrow_dependencies:
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        (site,) = venv.glob("lib/python*/site-packages")
        # A plain path line: that directory's own .pth files (the editable install of this checkout) are not run.
        (site / "_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                   "--no-deps", str(wheel)]
    else:
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        install = [str(venv / "bin" / "pip"), "install", "-q", str(wheel)]
    pip = subprocess.run(install, capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import coiled_setup; print(coiled_setup.__file__)"],
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(venv)), (where.stdout, where.stderr[-1000:])  # the wheel's, not the checkout's
    return venv / "bin" / "coiled-setup"


def _clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_", "CLOUDSDK_"))}
    env.update(HOME=str(home), TERM="dumb", GRPC_VERBOSITY="ERROR", COLUMNS="120")
    return env


def test_the_wheel_in_a_fresh_venv_runs_the_readmes_first_command(wheel, tmp_path):
    """Installed as users install it (a wheel, not editable, in a new venv), README's first command rehearses
    a setup in a terminal, answering Enter at every question, and verify then passes."""
    import pexpect

    exe = _venv_with(wheel, tmp_path / "venv", borrow_dependencies=True)
    first = re.findall(r"```\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)[0]
    command = first.split("&&")[-1].split()
    assert command[0] == ".venv/bin/coiled-setup", first
    env = _clean_env(tmp_path / "home")
    child = pexpect.spawn(str(exe), command[1:], env=env, cwd=str(tmp_path), encoding="utf-8", timeout=120)
    asked = 0
    while child.expect([r"\]: ", pexpect.EOF]) == 0:
        asked += 1
        assert asked < 20, child.before
        child.sendline("")
    child.close()
    assert child.exitstatus == 0 and asked >= 3, child.before
    done = subprocess.run([str(exe), "verify", "--sandbox"], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _interpreter(version: str) -> str | None:
    """An interpreter of that version on this machine (on PATH or under pyenv), or None."""
    import glob
    import shutil

    for candidate in [shutil.which(f"python{version}"),
                      *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]:
        if candidate and subprocess.run([candidate, "-c", "import venv"], capture_output=True).returncode == 0:
            return candidate
    return None


EVERY_PYTHON = "COILED_SETUP_TEST_EVERY_PYTHON"


@pytest.mark.skipif(not os.environ.get(EVERY_PYTHON), reason=f"opt-in, about a minute per Python: {EVERY_PYTHON}=1")
@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13"])
def test_every_supported_python_installs_the_wheel_and_runs_it(wheel, tmp_path, version):
    """Each supported Python installs the wheel and its dependencies from the package index into a new venv,
    then runs --help, a non-interactive rehearsal and verify."""
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    exe = _venv_with(wheel, tmp_path / "venv", python=python)
    env = _clean_env(tmp_path / "home")
    for args in (["--help"], ["gcp", "--sandbox", "--non-interactive", "--yes"], ["verify", "--sandbox"]):
        proc = subprocess.run([str(exe), *args], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (version, args, proc.stdout[-2000:], proc.stderr[-2000:])


UNUSED_CLIENTS = ["google.cloud.resourcemanager_v3.services.folders",
                  "google.cloud.resourcemanager_v3.services.tag_keys",
                  "google.cloud.cloudquotas_v1.services.quota_adjuster_settings_manager"]


# The asyncio clients and the REST and asyncio transports of the clients used: about 3 MiB over the six.
UNUSED_PARTS = (".async_client", ".transports.rest", ".transports.rest_base", ".transports.grpc_asyncio")


def test_real_runs_import_neither_pydantic_nor_unused_google_clients(sandbox, tmp_path):
    """A fresh setup and verify import typer's pydantic converter only for values that need it (none here) and
    only the Google clients they call: about 11 MiB of peak memory."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "DASK_", "COILED_"))}
    env.update({"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud"), **sandbox.env})
    for args in (["gcp", "--non-interactive", "--yes", "--region", "us-east1"], ["verify"]):
        code = ("import sys\n"
                f"sys.argv = ['coiled-setup', *{args!r}]\n"
                "from coiled_setup.cli import main  # the program's main, without the entry's immediate exit\n"
                "try:\n    main()\n"
                "except SystemExit as e:\n    print('exit', e.code, file=sys.stderr)\n"
                # A stand-in module (cloud._defer_transports) is listed only once the real one has run.
                "print('\\n'.join(sorted(n for n, m in sys.modules.items()\n"
                "                         if type(getattr(m, '__getattr__', None)).__name__ != '_StandIns')),\n"
                "      file=sys.stderr)\n")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        mods = set(proc.stderr.split())
        exit_code = (re.findall(r"^exit (\S+)$", proc.stderr, re.M) or [None])[0]
        assert "Traceback" not in proc.stderr and exit_code in (None, "0"), proc.stderr[-3000:]
        assert "google.cloud.resourcemanager_v3.services.projects" in mods, proc.stderr[-3000:]  # it really ran
        assert "google.cloud.cloudquotas_v1.services.cloud_quotas" in mods, proc.stderr[-3000:]
        assert sorted(m for m in mods if m.startswith("pydantic")) == [], args
        assert [m for m in UNUSED_CLIENTS if m in mods] == [], args
        unused = [m for m in mods if m.startswith("google.cloud.") and m.endswith(UNUSED_PARTS)]
        assert unused == [], args


def test_a_package_loaded_client_by_client_is_the_whole_package_when_asked_for(tmp_path):
    code = ("import sys\n"
            "from coiled_setup.cloud import client_class\n"
            "cls = client_class('resourcemanager_v3', 'projects', 'ProjectsClient')\n"
            "assert 'google.cloud.resourcemanager_v3.services.folders' not in sys.modules\n"
            "from google.cloud import resourcemanager_v3\n"
            "assert resourcemanager_v3.ProjectsClient is cls\n"
            "from google.cloud.resourcemanager_v3 import FoldersClient, gapic_version\n"
            "assert 'google.cloud.resourcemanager_v3.services.folders' in sys.modules\n"
            "try:\n    resourcemanager_v3.NoSuchName\nexcept AttributeError:\n    print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_transport_left_out_is_the_real_one_when_used(tmp_path):
    code = ("import sys\n"
            "from google.auth.credentials import AnonymousCredentials\n"
            "from coiled_setup.cloud import client_class\n"
            "cls = client_class('resourcemanager_v3', 'projects', 'ProjectsClient')\n"
            "rest = 'google.cloud.resourcemanager_v3.services.projects.transports.rest'\n"
            "assert rest + '_base' not in sys.modules\n"
            "client = cls(transport='rest', credentials=AnonymousCredentials())\n"
            "from google.cloud.resourcemanager_v3.services.projects.transports.rest import ProjectsRestTransport\n"
            "assert type(client.transport) is ProjectsRestTransport, type(client.transport)\n"
            "assert isinstance(client.transport, cls.get_transport_class('rest'))\n"
            "assert issubclass(ProjectsRestTransport, cls.get_transport_class('rest'))\n"
            "assert rest + '_base' in sys.modules\n"
            "from google.cloud.resourcemanager_v3.services.projects import ProjectsAsyncClient\n"
            "from google.cloud.resourcemanager_v3.services.projects.transports.grpc_asyncio import (\n"
            "    ProjectsGrpcAsyncIOTransport)\n"
            "t = ProjectsAsyncClient.get_transport_class('grpc_asyncio')\n"
            "assert t.__name__ == 'ProjectsGrpcAsyncIOTransport'\n"
            "assert ProjectsGrpcAsyncIOTransport.__module__.endswith('grpc_asyncio')\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]
