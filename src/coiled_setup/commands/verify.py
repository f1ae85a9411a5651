"""`coiled-setup verify`: prove, read-only and as the service account itself, that Coiled can work in a project."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coiled_setup import checks, context, keyfile, report
from coiled_setup.checks import FAILED, OK, SKIPPED, STATUSES, WARNING, Result, Target
from coiled_setup.cloud import Google
from coiled_setup.commands.common import choose_workspace, coiled_client, connect_google
from coiled_setup.errors import INTERRUPTED, STEP_FAILED, BadInput, UserError
from coiled_setup.errors import OK as OK_CODE
from coiled_setup.journal import Journal
from coiled_setup.options import DEFAULT_REGION, DEFAULT_ROLE_ID, EMAIL_RE, GAR_REGIONS, REGIONS, ROLE_ID_RE
from coiled_setup.options import check_project
from coiled_setup.ui import Ui
from coiled_setup.wording import count
from coiled_setup.remedies import command

STATUS_STYLE = {OK: "green", FAILED: "red", WARNING: "yellow", SKIPPED: "dim"}
STATUS_MARK = {OK: "✓", FAILED: "✗", WARNING: "!", SKIPPED: "-"}


@dataclass
class VerifyOptions:
    project: str | None = None
    key_file: Path | None = None
    role_id: str = DEFAULT_ROLE_ID
    region: str = DEFAULT_REGION
    gar: bool = True
    instance_service_account: str | None = None
    coiled: bool = True
    workspace: str | None = None
    coiled_server: str | None = None
    strict: bool = False
    output: str = "text"


# -- inputs --------------------------------------------------------------------------------------------

def _validate(o: VerifyOptions) -> None:
    if o.output not in ("text", "json"):
        raise BadInput(f"--output {o.output!r} is not known: use text or json.")
    if not ROLE_ID_RE.match(o.role_id):
        raise BadInput(f"--role-id {o.role_id!r} is not valid: use 3 to 64 letters, digits, underscores or periods.")
    if o.region not in REGIONS:
        raise BadInput(f"--region {o.region!r} is not a Google Cloud region (for example us-east1).")
    if o.gar and o.region not in GAR_REGIONS:
        raise BadInput(f"--region {o.region!r} cannot hold Coiled's Artifact Registry repository: use us-east1 or "
                       "us-central1, or pass --no-gar.")
    e = o.instance_service_account
    if e is not None and not (EMAIL_RE.match(e) and e.endswith(".gserviceaccount.com")):
        raise BadInput(f"--instance-service-account {e!r} is not a service account email.")


def resolve(o: VerifyOptions) -> Target:
    """The target: project, key file (flag, then the journal) and account; BadInput when there is nothing to verify."""
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
    t = Target(project=project, region=o.region, role_id=o.role_id, gar=o.gar,
               instance_flag=o.instance_service_account, coiled=o.coiled, workspace=o.workspace)
    journal = Journal(project)
    if o.key_file is not None:
        path, t.key_given = o.key_file, True
        if not path.exists():
            raise BadInput(f"--key-file {str(path)!r} does not exist: pass the path of the Coiled account's JSON key "
                           f"file, or run `{command('gcp')} --project {project}` to make one.")
    else:
        recorded = journal.get("key_file")
        if not recorded:
            raise BadInput(f"No key file found for project {project}: pass --key-file, or run `{command('gcp')} "
                           f"--project {project}` first.")
        path = Path(recorded)
        if not path.exists():
            raise BadInput(f"The key file coiled-setup wrote for project {project} ({path}) is gone: pass --key-file, "
                           f"or run `{command('gcp')} --project {project}` to make a new one.")
    t.key_path = path
    try:
        t.key = keyfile.read(path)
    except UserError as e:
        t.key_problem = e.message
        if "chmod" in e.message:
            t.key_remedy = f"chmod 600 {path}"
    if t.key is not None and t.key["project_id"] == project:
        t.account = t.key["client_email"]
    else:
        t.account = journal.get("account") or ""
    return t


def coiled_reader(o: VerifyOptions):
    """A job answering {workspace, backend_options}; BadInput when the login or the workspace is wrong."""
    c, wanted = coiled_client(o.coiled_server, o.workspace, "--no-coiled")

    def read() -> dict:
        ws = choose_workspace(c, wanted)
        return {"workspace": ws, "backend_options": c.backend_options()}

    return read


# -- the run ---------------------------------------------------------------------------------------------

def exit_code(results: list[Result], strict: bool) -> int:
    statuses = {r.status for r in results}
    if FAILED in statuses or (strict and WARNING in statuses):
        return STEP_FAILED
    return OK_CODE


def summary(results: list[Result]) -> dict:
    return {s: sum(1 for r in results if r.status == s) for s in STATUSES}


def verify(o: VerifyOptions, ui: Ui) -> tuple[Target, list[Result], str]:
    t = resolve(o)
    reader = coiled_reader(o) if o.coiled else None
    operator = connect_google()
    as_key = Google.from_key(t.key) if t.key is not None and t.key["project_id"] == t.project else None
    try:
        from rich.markup import escape

        ui.info(f"Verifying project [bold]{t.project}[/] as {operator.principal or 'your account'}; key file "
                + escape(str(t.key_path)) + (f" ({t.account})" if t.account else ""))
        facts = checks.gather(t, operator, as_key, reader)
    finally:
        operator.close()
        if as_key is not None:
            as_key.close()
    results = checks.evaluate(t, facts, context.backend_options_in_config())
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
    if code == OK_CODE and not n[WARNING]:
        return f"All {count(n[OK], 'check')} passed" + (f" ({n[SKIPPED]} skipped)." if n[SKIPPED] else ".")
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
                workspace=workspace,
                checks=[r.as_dict() for r in results],
                summary={**summary(results), "passed": code == OK_CODE, "strict": o.strict},
            )
    return code

