"""4. bad input: flags, environment, the dask config file, key files and scenarios, each with its exit
code, one sentence and (for input errors) no write."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO, DEFAULT_TOKEN
from tests.helpers import calls
from tests.reliability.common import (
    ARGS,
    FAST,
    SA,
    Figures,
    P,
    Ratio,
    scenario,
    writes,
)
from tests.reliability.lab import Lab

_PEM: list[str] = []


def made_up_key(project: str = P, email: str = SA, **changes) -> dict:
    """A well-formed service-account key file with a real (never registered) RSA key."""
    if not _PEM:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _PEM.append(priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode())
    data = {
        "type": "service_account", "project_id": project, "private_key_id": "f" * 40, "private_key": _PEM[0],
        "client_email": email, "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def _file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@dataclass
class Case:
    name: str
    code: int
    needle: str = ""
    args: tuple = ()
    env: dict = field(default_factory=dict)
    scenario: dict | None = None
    files: object = None  # (directory, sandbox) -> {"args": (...), "env": {...}}
    fresh: bool = False  # a sandbox of its own (a scenario, or a run that may write)
    after: object = None  # (directory, sandbox) -> problems with what the run left behind
    base: tuple = ARGS  # the command before the case's arguments


def _key_case(name: str, needle: str, content, mode: int = 0o600, args: tuple = ()) -> Case:
    def files(d: Path, sb):
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        return {"args": ("--key-file", str(_file(d / "key.json", text, mode))) + args}
    return Case(name, 2, needle, files=files)


def _dask_case(name: str, code: int, needle: str, text: str, env: dict | None = None, after=None,
               args: tuple = ()) -> Case:
    def files(d: Path, sb):
        _file(d / "dask" / "coiled.yaml", text.replace("SERVER", sb.coiled_url))
        given = {k: (v.replace("SERVER", sb.coiled_url) if v else v) for k, v in (env or {}).items()}
        return {"env": {"DASK_CONFIG": str(d / "dask"), "DASK_COILED__TOKEN": None, "DASK_COILED__SERVER": None,
                        **given}, "args": args}
    return Case(name, code, needle, files=files, fresh=code != 2, after=after)


USER_DASK_CONFIG = f"""\
# the user's own settings
coiled:
  token: {DEFAULT_TOKEN}  # from coiled login
  server: SERVER
  other: kept
  backend-options:
    gpu-type: nvidia-tesla-t4
distributed:
  worker:
    memory:
      target: 0.8
"""


def _user_config_kept(d: Path, sb) -> list[str]:
    """The wizard set its backend options and kept everything of the user's: keys, sections and comments."""
    text = (d / "dask" / "coiled.yaml").read_text()
    data = yaml.safe_load(text)
    c = data.get("coiled") or {}
    problems = []
    if (c.get("token"), c.get("server"), c.get("other")) != (DEFAULT_TOKEN, sb.coiled_url, "kept"):
        problems.append(f"coiled.yaml lost the login or coiled.other: {sorted(c)}")
    if data.get("distributed") != {"worker": {"memory": {"target": 0.8}}}:
        problems.append("coiled.yaml lost its distributed: section")
    bo = c.get("backend-options") or {}
    if bo.get("gpu-type") != "nvidia-tesla-t4" or bo.get("region_name") != "us-east1" or "ingress" not in bo:
        problems.append(f"coiled.yaml's backend-options are not merged: {bo}")
    if "# the user's own settings" not in text or "# from coiled login" not in text:
        problems.append("coiled.yaml lost its comments")
    return problems


def _gcloud_case(name: str, code: int, needle: str, project: str) -> Case:
    def files(d: Path, sb):
        _file(d / "gcloud" / "active_config", "default\n")
        _file(d / "gcloud" / "configurations" / "config_default", f"[core]\nproject = {project}\naccount = a@b.c\n")
        return {"env": {"CLOUDSDK_CONFIG": str(d / "gcloud"), "GOOGLE_CLOUD_PROJECT": None}}
    return Case(name, code, needle, files=files, fresh=code != 2)


def operator_permission_cases() -> list[Case]:
    """The operator holding every permission the wizard needs but one, for each in turn; and all of them."""
    from coiled_setup.options import Options
    from coiled_setup.steps import operator_permissions

    perms = operator_permissions(Options(project=P, interactive=False))

    def with_role(permissions) -> dict:
        s = scenario(roles=[{"id": "operator_min", "title": "operator", "permissions": permissions}])
        s["operator"]["roles"] = [f"projects/{P}/roles/operator_min"]
        return s

    cases = [Case(f"operator lacks {p}", 3, p, scenario=with_role([q for q in perms if q != p]), fresh=True)
             for p in perms]
    cases.append(Case("operator holds exactly the permissions the wizard asks for", 0, scenario=with_role(perms),
                      fresh=True))
    return cases


def bad_input_cases() -> list[Case]:
    other_sa = f"someone-else@{P}.iam.gserviceaccount.com"
    two_workspaces = copy.deepcopy(DEFAULT_SCENARIO)
    two_workspaces["coiled"]["users"][0]["workspaces"] = ["team-a", "team-b"]
    two_workspaces["coiled"]["users"][0].pop("default")
    disabled_operator = copy.deepcopy(DEFAULT_SCENARIO)
    cases = [
        # -- flags
        Case("--project not an id", 2, "--project", ("--project", "Bad_Project")),
        Case("--project ending with a hyphen", 2, "--project", ("--project", "coiled-demo-")),
        Case("--region without Artifact Registry", 2, "--region", ("--region", "europe-west1")),
        Case("--region unknown", 2, "--region", ("--region", "mars-north1", "--no-gar")),
        Case("--zone of another region", 2, "--zone", ("--zone", "us-central1-a")),
        Case("--zone unknown letter", 2, "--zone", ("--zone", "us-east1-z")),
        Case("--service-account too short", 2, "--service-account", ("--service-account", "ab")),
        Case("--service-account upper case", 2, "--service-account", ("--service-account", "Coiled_SA")),
        Case("--service-account of another project", 2, "belongs to project",
             ("--service-account", "coiled@other-project.iam.gserviceaccount.com")),
        Case("--service-account not a service account", 2, "not a service account email",
             ("--service-account", "someone@example.com")),
        Case("--role-id with dashes", 2, "--role-id", ("--role-id", "no-dashes")),
        Case("--firewall-cidr not an address", 2, "--firewall-cidr", ("--firewall-cidr", "10.0.0.300/8")),
        Case("--firewall-cidr with host bits (its network is used)", 0, args=("--firewall-cidr", "10.0.0.1/8"),
             fresh=True),
        Case("--firewall-cidr empty", 2, "--firewall-cidr is empty", ("--firewall-cidr", "")),
        Case("--project empty", 2, "--project is empty", ("--project", "")),
        Case("--zone not in the region", 2, "does not exist", ("--zone", "us-east1-a")),
        Case("--wait-timeout not a number", 2, "--wait-timeout", ("--wait-timeout", "nan")),
        Case("--wait-timeout infinite", 2, "--wait-timeout", ("--wait-timeout", "inf")),
        Case("--key-file not a key", 2, "not valid JSON", ("--key-file", "/etc/passwd")),
        Case("--key-file of the operator", 2, "the account running coiled-setup",
             files=lambda d, sb: {"args": ("--key-file", str(_file(d / "op.json", sb.operator_key_path.read_text())))}),
        Case("--key-file where no directory can be made", 2, "cannot be written",
             ("--key-file", "/proc/1/coiled/key.json")),
        Case("journal directory under a file", 2, "journal",
             files=lambda d, sb: {"env": {"COILED_SETUP_HOME": str(_file(d / "plain", "x") / "home")}}),
        Case("dask config directory under a file", 2, "dask config", ("--write-dask-config",),
             files=lambda d, sb: {"env": {"DASK_CONFIG": str(_file(d / "plain", "x") / "dask")}}),
        Case("--firewall-cidr IPv6", 2, "IPv4", ("--firewall-cidr", "2001:db8::/32")),
        Case("--firewall-ports out of range", 2, "--firewall-ports", ("--firewall-ports", "22,99999")),
        Case("--firewall-ports not numbers", 2, "--firewall-ports", ("--firewall-ports", "ssh")),
        Case("--firewall-ports empty", 2, "--firewall-ports", ("--firewall-ports", ",")),
        Case("--instance-service-account not an email", 2, "--instance-service-account",
             ("--instance-service-account", "not-an-email")),
        Case("--instance-service-account is the Coiled account", 2, "must differ",
             ("--instance-service-account", SA)),
        Case("--instance-service-account that does not exist", 2, "does not exist",
             ("--instance-service-account", f"missing-account@{P}.iam.gserviceaccount.com")),
        Case("both instance account flags", 2, "either",
             ("--instance-service-account", other_sa, "--create-instance-service-account")),
        Case("the separate instance account to create is the Coiled account", 2, "Coiled service account itself",
             ("--service-account", "coiled-instance", "--create-instance-service-account")),
        Case("--no-instance-service-account with another instance flag", 2, "alone",
             ("--no-instance-service-account", "--create-instance-service-account")),
        # -- consent: a run that cannot ask applies nothing without --yes (fresh: there is a plan to refuse)
        Case("no terminal and no --yes", 2, "--yes", base=("gcp",), fresh=True),
        Case("--non-interactive without --yes", 2, "--yes", base=("gcp", "--non-interactive"), fresh=True),
        Case("--key-file with --no-local-key", 2, "either", ("--key-file", "/nonexistent/k.json", "--no-local-key")),
        Case("--key-file a directory", 2, "not a file", files=lambda d, sb: {"args": ("--key-file", str(d))}),
        Case("--key-file under a file", 2, "parent is not a directory",
             files=lambda d, sb: {"args": ("--key-file", str(_file(d / "plain", "x") / "key.json"))}),
        Case("--output unknown", 2, "--output", ("--output", "yaml")),
        Case("--wait-timeout zero", 2, "--wait-timeout", ("--wait-timeout", "0")),
        Case("--wait-timeout negative", 2, "--wait-timeout", ("--wait-timeout", "-5")),
        Case("--workspace not one of yours", 2, "workspace", ("--workspace", "elsewhere")),
        # -- environment
        Case("no project anywhere", 2, "No project given", env={"GOOGLE_CLOUD_PROJECT": None}),
        Case("GOOGLE_CLOUD_PROJECT not an id", 2, "not a valid project id",
             env={"GOOGLE_CLOUD_PROJECT": "Bad_Project"}),
        Case("CLOUDSDK_CORE_PROJECT names the project", 0,
             env={"GOOGLE_CLOUD_PROJECT": None, "CLOUDSDK_CORE_PROJECT": P}, fresh=True),
        _gcloud_case("gcloud's configuration names the project", 0, "", P),
        _gcloud_case("gcloud's configuration names an unknown project", 2, "does not exist", "nowhere-project"),
        Case("GOOGLE_APPLICATION_CREDENTIALS missing", 2, "/nonexistent/operator.json, which does not exist",
             env={"GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/operator.json"}),
        Case("GOOGLE_APPLICATION_CREDENTIALS not JSON", 2, "is not a credentials file",
             files=lambda d, sb: {"env": {"GOOGLE_APPLICATION_CREDENTIALS": str(_file(d / "adc.json", "not json"))}}),
        Case("no Google credentials at all", 2, "No Google credentials", env={"GOOGLE_APPLICATION_CREDENTIALS": None}),
        Case("operator key revoked", 2, "credentials",
             files=lambda d, sb: {"env": {"GOOGLE_APPLICATION_CREDENTIALS": str(_file(d / "adc.json", json.dumps(
                 {**json.loads(sb.operator_key_path.read_text()), "private_key_id": "0" * 40})))}}),
        Case("no Coiled token", 2, "No Coiled login", env={"DASK_COILED__TOKEN": None}),
        Case("Coiled token invalid", 2, "did not accept your token", env={"DASK_COILED__TOKEN": "0123-not-a-token"}),
        Case("DASK_COILED__WORKSPACE unknown", 2, "workspace", env={"DASK_COILED__WORKSPACE": "elsewhere"}),
        Case("Coiled unreachable", 1, "Coiled did not answer at http://127.0.0.1:9",
             env={"DASK_COILED__SERVER": "http://127.0.0.1:9"}),
        Case("DASK_COILED__SERVER not a URL", 2, "not an http(s) URL", env={"DASK_COILED__SERVER": "cloud.coiled.io"}),
        Case("--coiled-server another scheme", 2, "not an http(s) URL", ("--coiled-server", "ftp://127.0.0.1/")),
        Case("--coiled-server not Coiled (a web page)", 1, "other than JSON",
             files=lambda d, sb: {"args": ("--coiled-server", _web_page())}),
        Case("--coiled-server not HTTP/1 (a gRPC port)", 1, "Could not reach Coiled",
             files=lambda d, sb: {"args": ("--coiled-server", f"http://{sb.google_endpoint}")}),
        # -- the dask config file
        _dask_case("coiled.yaml holds the login", 0, "", USER_DASK_CONFIG, after=_user_config_kept,
                   args=("--write-dask-config",)),
        _dask_case("coiled.yaml token invalid", 2, "did not accept your token",
                   "coiled:\n  token: 0123-not-a-token\n  server: SERVER\n"),
        _dask_case("coiled.yaml workspace unknown", 2, "workspace",
                   f"coiled:\n  token: {DEFAULT_TOKEN}\n  server: SERVER\n  workspace: elsewhere\n"),
        _dask_case("coiled.yaml not YAML", 2, "coiled.yaml", "coiled: [token: {\n"),
        _dask_case("coiled.yaml not YAML, token in the environment", 2, "coiled.yaml", "coiled: [token: {\n",
                   env={"DASK_COILED__TOKEN": DEFAULT_TOKEN, "DASK_COILED__SERVER": "SERVER"}),
        _dask_case("coiled.yaml's coiled section not a mapping", 2, "coiled.yaml", "coiled:\n  - token\n"),
        # -- key files
        _key_case("key file not JSON", "not valid JSON", "this is not a key"),
        _key_case("key file a JSON list", "not a service account key file", "[1, 2]"),
        _key_case("key file missing fields", "lacks fields", made_up_key(client_email=None, token_uri=None)),
        _key_case("key file of another project", "belongs to project", made_up_key(project="other-project")),
        _key_case("key file truncated", "not valid JSON", json.dumps(made_up_key(), indent=2)[:900]),
        _key_case("key file with a truncated private key", "truncated",
                  made_up_key(private_key="-----BEGIN PRIV")),
        _key_case("key file of a user, not an account", "not a service account key",
                  made_up_key(type="authorized_user")),
        _key_case("key file group-readable", "readable by other users", made_up_key(), 0o640),
        _key_case("key file world-readable", "readable by other users", made_up_key(), 0o644),
        _key_case("key file of another account", "is a key of", made_up_key(email=other_sa),
                  args=("--service-account", "coiled")),
        # -- scenarios
        Case("unknown project", 2, "does not exist", ("--project", "unknown-project")),
        Case("project being deleted", 2, "scheduled for deletion", scenario=scenario(state="DELETE_REQUESTED"),
             fresh=True),
        Case("IAM API disabled", 1, "iam.googleapis.com", scenario=scenario(
            services=["cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com"]), fresh=True),
        Case("no billing", 1, "no billing account", scenario=scenario(billing=False), fresh=True),
        Case("org policy forbids keys", 5, "iam.disableServiceAccountKeyCreation",
             scenario=scenario(disable_key_creation=True), fresh=True),
        Case("10-key limit reached", 1, "10 user-managed keys",
             scenario=scenario(service_accounts=[{"id": "coiled", "keys": 10}]), fresh=True),
        Case("Coiled account disabled", 1, "disabled",
             scenario=scenario(service_accounts=[{"id": "coiled", "disabled": True}]), fresh=True),
        Case("several Coiled workspaces, none chosen", 2, "several", scenario=two_workspaces, fresh=True),
        Case("operator account disabled", 2, "credentials", scenario=disabled_operator, fresh=True,
             files=lambda d, sb: _disable_operator(sb)),
    ]
    return cases + operator_permission_cases()


def _web_page() -> str:
    """A local web server that answers every request with a page of HTML (not Coiled)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _disable_operator(sb) -> dict:
    with sb.world.lock:
        sb.world.accounts[sb.operator_email].disabled = True
    return {}


NOTICE = re.compile(r"^(Google|Coiled) is not answering at \S+ yet; retrying \(\d+ s so far\)…$")


def one_sentence(text: str) -> bool:
    """One sentence: ends with a full stop, and no other ends inside it (quotes, code and parentheses aside)."""
    body = re.sub(r"'[^']*'|`[^`]*`|\([^)]*\)", "", text.strip())
    return body.endswith(".") and not re.search(r"[.!?]\s+[A-Z]", body)


def check_case(lab: Lab, case: Case, shared) -> list[str]:
    sb = lab.sandbox(case.scenario, **FAST) if case.fresh else shared
    d = lab.base / "cases" / re.sub(r"[^a-z0-9]+", "-", case.name.lower())
    d.mkdir(parents=True, exist_ok=True)
    extra = case.files(d, sb) if case.files else {}
    mark = len(calls(sb))
    out = lab.run(sb, *case.base, *case.args, *extra.get("args", ()), env={**case.env, **extra.get("env", {})},
                  what=f"bad input case {case.name!r}")
    problems = []
    # Notices while Google or Coiled does not answer are not the error sentence.
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not NOTICE.match(ln)]
    if out.code != case.code:
        problems.append(f"exit {out.code}, not {case.code}: {out.stderr.strip()[:300]}")
    if out.crash or "Traceback" in out.stderr:
        problems.append(f"a traceback: {(out.crash or out.stderr)[-400:]}")
    if case.code != 0:
        if len(lines) != 1 or not lines[0].startswith("Error: ") or not one_sentence(lines[0][7:]):
            problems.append(f"not one sentence on stderr: {out.stderr.strip()[:400]!r}")
        elif case.needle and case.needle not in lines[0]:
            problems.append(f"{case.needle!r} not in {lines[0]!r}")
    if case.after is not None and out.code == case.code:
        problems += case.after(d, sb)
    if case.code in (2, 3, 5):  # refused before the first write
        made = writes(sb, mark)
        if made:
            problems.append(f"{len(made)} write call(s): {[c['method'] for c in made][:5]}")
    if case.fresh:
        lab.stop(sb)
    return [f"{case.name}: {p}" for p in problems]


def run_bad_input(lab: Lab) -> Figures:
    fig = Figures("bad input")
    cases = bad_input_cases()
    shared = lab.sandbox(**FAST)
    passed = 0
    for case in cases:
        problems = check_case(lab, case, shared)
        fig.problems += problems
        passed += not problems
    lab.stop(shared)
    by_code = Counter(c.code for c in cases)
    fig.values = {"cases passed": Ratio(passed, len(cases)),
                  "by exit code": " ".join(f"{k}:{v}" for k, v in sorted(by_code.items())),
                  "writes on input errors": sum(1 for p in fig.problems if "write call" in p)}
    return fig
