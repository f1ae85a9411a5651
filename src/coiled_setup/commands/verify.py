"""`coiled-setup verify`: prove, read-only and as the service account itself, that Coiled can work in a project."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from coiled_setup import checks, context, keyfile, report
from coiled_setup.checks import FAILED, OK, SKIPPED, STATUSES, WARNING, Result, Target
from coiled_setup.cloud import Google
from coiled_setup.coiled_api import CoiledError
from coiled_setup.commands.common import choose_workspace, coiled_client, connect_google, workspace_reads
from coiled_setup.concurrency import run_all, start
from coiled_setup.errors import INTERRUPTED, STEP_FAILED, BadInput, UserError
from coiled_setup.errors import OK as OK_CODE
from coiled_setup.journal import Journal
from coiled_setup.options import (
    DEFAULT_REGION,
    DEFAULT_ROLE_ID,
    REGIONS,
    ROLE_ID_RE,
    check_project,
    cidr_error,
    instance_account_error,
    output_error,
    ports_error,
    region_error,
    repository_name,
    role_id_error,
)
from coiled_setup.remedies import command
from coiled_setup.ui import Ui
from coiled_setup.wording import count

STATUS_STYLE = {OK: "green", FAILED: "red", WARNING: "yellow", SKIPPED: "dim"}
STATUS_MARK = {OK: "✓", FAILED: "✗", WARNING: "!", SKIPPED: "-"}


@dataclass
class VerifyOptions:
    project: str | None = None
    key_file: Path | None = None
    # None: what `coiled-setup gcp` recorded for the project, else what Coiled's workspace holds, else the default.
    role_id: str | None = None
    region: str | None = None
    gar: bool | None = None
    bigquery: bool | None = None
    instance_service_account: str | None = None
    coiled: bool = True
    workspace: str | None = None
    coiled_server: str | None = None
    strict: bool = False
    output: str = "text"


# -- inputs --------------------------------------------------------------------------------------------

def _validate(o: VerifyOptions) -> None:
    # The wizard's own rules: an input one command takes, the other takes too.
    for error in (output_error(o.output),
                  o.role_id is not None and role_id_error(o.role_id),
                  o.region is not None and region_error(o.region, bool(o.gar)),
                  o.instance_service_account is not None and instance_account_error(o.instance_service_account, None)):
        if error:
            raise BadInput(error)


def _recorded(settings: dict) -> dict:
    """The journal's settings that are well formed (a hand-edited journal must not crash verify)."""
    out = {}
    if settings.get("region") in REGIONS:
        out["region"] = settings["region"]
    if isinstance(settings.get("role_id"), str) and ROLE_ID_RE.match(settings["role_id"]):
        out["role_id"] = settings["role_id"]
    for k in ("gar", "bigquery"):
        if isinstance(settings.get(k), bool):
            out[k] = settings[k]
    regions = settings.get("registry_regions")
    if isinstance(regions, list):
        out["registry_regions"] = tuple(r for r in regions if isinstance(r, str) and not region_error(r, True))
    for k in ("account", "instance_service_account", "key_file", "workspace"):
        if isinstance(settings.get(k), str) and settings[k]:
            out[k] = settings[k]
    if isinstance(settings.get("local_key"), bool):
        out["local_key"] = settings["local_key"]
    if isinstance(settings.get("firewall_cidr"), str) and not cidr_error(settings["firewall_cidr"]):
        out["firewall_cidr"] = settings["firewall_cidr"]
    ports = settings.get("firewall_ports")
    if isinstance(ports, list) and ports and all(type(p) is int for p in ports) and not ports_error(tuple(ports)):
        out["firewall_ports"] = tuple(ports)
    return out


def from_coiled(view: dict | None) -> dict:
    """The settings Coiled's workspace holds: region, registry on/off and the account of its key."""
    o = ((view or {}).get("backend_options") or {}).get("options") or {}
    out = {}
    region = checks.default_region(view) or o.get("gcp_region_name")
    if region in REGIONS:
        out["region"] = region
    registry = (o.get("registry") or {}).get("type")
    if registry:
        out["gar"] = registry == "gar"
    email = (o.get("gcp_service_creds_dict") or {}).get("client_email")
    if isinstance(email, str) and email:
        out["account"] = email
    return out


def resolve(o: VerifyOptions) -> Target:
    """What can be known locally: project, key file (flag, then the journal), account, and what `coiled-setup gcp`
    recorded. BadInput for bad flags."""
    _validate(o)
    project = o.project or context.project_from_environment() or ""
    if not project and o.key_file is not None and o.key_file.is_file():
        try:
            project = keyfile.read(o.key_file).get("project_id", "")
        except UserError:
            project = ""
    if not project:
        raise BadInput("No project given: pass --project PROJECT_ID or set GOOGLE_CLOUD_PROJECT.")
    check_project(project)
    journal = Journal(project)
    recorded = _recorded(journal.settings())
    t = Target(project=project, instance_flag=o.instance_service_account, coiled=o.coiled, workspace=o.workspace)
    t.recorded = recorded
    if o.key_file is not None:
        path, t.key_given = o.key_file, True
        if not path.exists():
            raise BadInput(f"--key-file {str(path)!r} does not exist: pass the path of the Coiled account's JSON key "
                           f"file, or run `{command('gcp')} --project {project}` to make one.")
    elif journal.settings():
        path = Path(recorded["key_file"]) if "key_file" in recorded else None
        t.local_key = recorded.get("local_key", True)
    else:  # a journal from before settings were recorded
        path = Path(journal.get("key_file")) if journal.get("key_file") else None
    t.key_path = path
    if path is not None and not path.exists():
        t.key_problem = (f"The key file coiled-setup wrote for project {project} ({path}) is gone; the checks that "
                         "need it are skipped.")
    elif path is not None:
        try:
            t.key = keyfile.read(path)
        except UserError as e:
            t.key_problem = e.message
            if "chmod" in e.message:
                t.key_remedy = f"chmod 600 {path}"
    if t.key is not None and t.key["project_id"] == project:
        t.account = t.key["client_email"]
    else:
        t.account = recorded.get("account") or journal.get("account") or ""
    t.fresh_key = journal.fresh_key(t.account)
    return t


SETTINGS = (("region", DEFAULT_REGION), ("role_id", DEFAULT_ROLE_ID), ("gar", True), ("bigquery", True))


def needs_coiled(t: Target, o: VerifyOptions) -> bool:
    """Whether Coiled's workspace must be read before the checks: to learn the account or a setting."""
    if not o.coiled:
        return False
    return not t.account or any(getattr(o, name) is None and name not in t.recorded
                                for name in ("region", "gar"))


def settle(t: Target, o: VerifyOptions, coiled: dict) -> None:
    """Each setting from the flag, else what gcp recorded, else what Coiled holds, else the default."""
    t.account = t.account or coiled.get("account", "")
    t.sources = {}
    for name, default in SETTINGS:
        flag = getattr(o, name)
        if flag is not None:
            value, t.sources[name] = flag, "flag"
        elif name in t.recorded:
            value, t.sources[name] = t.recorded[name], "recorded"
        elif name in coiled:
            value, t.sources[name] = coiled[name], "coiled"
        else:
            value, t.sources[name] = default, "default"
        setattr(t, name, value)
    # The repositories of the other registry regions gcp set up (the cluster region's is always checked).
    t.registry_regions = t.recorded.get("registry_regions", ())
    if t.instance_flag is None and t.recorded.get("instance_service_account"):
        t.instance_flag = t.recorded["instance_service_account"]
    wrong = region_error(t.region, t.gar)
    if wrong:
        if t.sources["region"] == "flag" or t.sources["gar"] == "flag":
            raise BadInput(wrong)
        t.gar = False  # a region without Coiled's repository: another registry is in use
    if not t.account and t.key_path is None:
        raise BadInput(f"No key file or account found for project {t.project}: pass --key-file, or run "
                       f"`{command('gcp')} --project {t.project}` first.")


def coiled_reader(o: VerifyOptions, recorded_workspace: str | None = None):
    """A job answering {workspace, backend_options}, made once however often it is asked; BadInput when the login
    or the workspace is wrong. Without --workspace, the one gcp recorded is preferred while it is still yours."""
    c, wanted = coiled_client(o.coiled_server, o.workspace, "--no-coiled")
    lock = threading.Lock()
    answer: list = []

    def read() -> dict:
        with lock:
            if not answer:
                try:
                    reads = workspace_reads(c)
                    slugs = [m.get("account", {}).get("slug") for m in reads[1]]
                    pick = wanted or (recorded_workspace if recorded_workspace in slugs else None)
                    ws = choose_workspace(c, pick, reads=reads)
                    options, settings, regions = run_all([c.backend_options, c.get_settings, c.get_regions])
                    answer.append((True, {"workspace": ws, "backend_options": options, "settings": settings,
                                          "regions": regions}))
                except CoiledError as e:
                    answer.append((False, e))
            ok, value = answer[0]
            if not ok:
                raise value
            return value

    return read


def _quiet(read):
    """Coiled's view for choosing settings: None when Coiled cannot be read (the checks report that)."""
    def run():
        try:
            return read()
        except CoiledError:
            return None
    return run


# -- the run ---------------------------------------------------------------------------------------------

def exit_code(results: list[Result], strict: bool) -> int:
    # Quotas bound a cluster's size, not whether Coiled can work: their warning never fails verify, --strict or not.
    statuses = {r.status for r in results if not (r.name == "quotas" and r.status == WARNING)}
    if FAILED in statuses or (strict and WARNING in statuses):
        return STEP_FAILED
    return OK_CODE


def summary(results: list[Result]) -> dict:
    return {s: sum(1 for r in results if r.status == s) for s in STATUSES}


def verify(o: VerifyOptions, ui: Ui) -> tuple[Target, list[Result], str]:
    t = resolve(o)
    reader = coiled_reader(o, t.recorded.get("workspace")) if o.coiled else None
    if reader is not None and needs_coiled(t, o):
        # The journal cannot say what to check: Coiled's workspace is read first, while Google's libraries load
        # and the credentials are checked.
        view, operator = run_all([_quiet(reader), lambda: connect_google(project=t.project)])
        try:
            settle(t, o, from_coiled(view))
        except UserError:
            operator.close()
            raise
    else:
        settle(t, o, {})
        if reader is not None:
            start(reader)  # Coiled's reads go out while Google's libraries load; the reader keeps its answer
        operator = connect_google(project=t.project)
    as_key = Google.from_key(t.key) if t.key is not None and t.key["project_id"] == t.project else None
    if as_key is not None:
        as_key.notify = operator.notify
    try:
        from rich.markup import escape

        key = ("key file " + escape(str(t.key_path)) if t.key_path is not None
               else "no key file (the checks that need it are skipped)")
        where = {"recorded": "as the setup recorded", "coiled": "as Coiled's workspace holds"}
        how = sorted({where[s] for s in t.sources.values() if s in where})
        ui.info(f"Verifying project [bold]{t.project}[/] as {operator.principal or 'your account'}; {key}"
                + (f" ({t.account})" if t.account else "") + f"; region {t.region}"
                + (f" ({' and '.join(how)})" if how else "") + ".")
        facts = checks.gather(t, operator, as_key, reader)
    finally:
        operator.close()
        if as_key is not None:
            as_key.close()
    results = checks.evaluate(t, facts)
    workspace = (facts.get("coiled") or {}).get("workspace")
    return t, results, workspace


def render(ui: Ui, results: list[Result]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Verification", title_justify="left")
    table.add_column("Check")
    table.add_column("Status")
    table.add_column("Detail", overflow="fold")
    table.add_column("Remedy", overflow="fold")
    for r in results:
        style = STATUS_STYLE[r.status]
        table.add_row(r.title, Text(f"{STATUS_MARK[r.status]} {r.status}", style=style), Text(r.detail),
                      Text(r.remedy))
    ui.console.print(table)


def verdict(results: list[Result], code: int) -> str:
    n = summary(results)
    keyless = sum(1 for r in results if r.status == SKIPPED and r.data.get("needs_key"))
    if code == OK_CODE and not n[WARNING]:
        skipped = f"{n[SKIPPED]} skipped" + (f", {keyless} of them needing the key file: pass --key-file" if keyless
                                             else "")
        return f"All {count(n[OK], 'check')} passed" + (f" ({skipped})." if n[SKIPPED] else ".")
    parts = [count(n[s], s) if s == WARNING else f"{n[s]} {s}" for s in (FAILED, WARNING, OK, SKIPPED) if n[s]]
    tail = "see the remedies above." if n[FAILED] or n[WARNING] else ""
    return f"{', '.join(parts)}: {tail}".rstrip(": ")


def run(o: VerifyOptions) -> int:
    ui = Ui(interactive=False, output=o.output)
    t: Target | None = None
    results: list[Result] = []
    workspace = None
    code, error = OK_CODE, None
    try:
        t, results, workspace = verify(o, ui)
        code = exit_code(results, o.strict)
        if o.output != "json":
            render(ui, results)
            line = verdict(results, code)
            n = summary(results)
            style = "red" if code != OK_CODE else "yellow" if n[WARNING] else "green"
            ui.info(f"[{style}]{line}[/]")
    except UserError as e:
        code, error = e.code, e.message
        ui.error(e.message)
    except KeyboardInterrupt:
        code, error = INTERRUPTED, "Interrupted; nothing was changed."
        ui.error(error)
    except Exception as e:
        code, error = STEP_FAILED, report.unexpected(e)
        raise
    finally:
        ui.stop()
        if o.output == "json":
            report.emit(
                "verify", code, error,
                project=t.project if t else o.project,
                service_account=t.account if t else None,
                key_file=str(t.key_path) if t and t.key_path else None,
                repositories=[repository_name(t.project, r) for r in t.repo_regions] if t else [],
                workspace=workspace,
                checks=[r.as_dict() for r in results],
                summary={**summary(results), "passed": code == OK_CODE, "strict": o.strict},
            )
    return code

