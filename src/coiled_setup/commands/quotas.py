"""`coiled-setup quotas`: the regional quotas that bound a cluster, and asking Google for more (QuotaPreference)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coiled_setup import context, quotas, report, waiting
from coiled_setup.cloud import CloudError, Google
from coiled_setup.commands.common import connect_google
from coiled_setup.errors import INTERRUPTED, MISSING_PERMISSION, OK, STEP_FAILED, BadInput, UserError
from coiled_setup.journal import Journal
from coiled_setup.options import DEFAULT_REGION, check_project, output_error, region_error
from coiled_setup.remedies import explain
from coiled_setup.ui import Ui


@dataclass
class QuotasOptions:
    project: str | None = None
    region: str | None = None  # None: the region gcp recorded, else the default
    requests: list[str] = field(default_factory=list)
    email: str | None = None
    justification: str | None = None
    enable_api: bool = False
    interactive: bool = False
    output: str = "text"


def render(ui: Ui, reading: quotas.Reading) -> None:
    from rich.table import Table

    t = Table(title=f"Quotas of {reading.project} in {reading.region}", title_justify="left")
    for col in ("Quota", "Limit", f"Per VM ({quotas.INSTANCE_TYPE})", "VMs it allows"):
        t.add_column(col)
    for q in quotas.QUOTAS:
        limit = reading.limits.get(q.key, -1)
        vms = reading.vms(q.key)
        per_vm = f"{q.per_vm} {'address' if q.unit == 'addresses' and q.per_vm == 1 else q.unit}"
        t.add_row(q.label, "unlimited" if limit < 0 else f"{limit} {q.unit}", per_vm,
                  "any" if vms is None else str(vms))
    ui.console.print(t)
    ui.info(reading.sentence() + ".")


def _enable(g: Google, project: str, ui: Ui) -> None:
    op = g.start_enable(project, [quotas.API])
    if op:
        waiting.poll(lambda: g.operation_done("usage", op), timeout=120, what=f"enabling {quotas.API}", tick=ui.tick)


def default_justification(region: str, wanted: dict[str, int]) -> str:
    vms = min(v // quotas.BY_KEY[k].per_vm for k, v in wanted.items())
    return (f"Dask clusters run by Coiled in {region}: up to {max(vms - 1, 1)} workers of {quotas.INSTANCE_TYPE} "
            "and their scheduler.")


def ask_for_more(g: Google, project: str, region: str, wanted: dict[str, int], email: str | None,
                 justification: str | None, ui: Ui) -> list[quotas.Outcome]:
    """Creates or updates the preferences, and says where each stands; exit 3 without the permission."""
    email = email or g.principal
    if not email:
        raise BadInput("Google needs a contact email for a quota increase: pass --email ADDRESS.")
    try:
        outcomes = quotas.request(g, project, region, wanted, email,
                                  justification or default_justification(region, wanted))
    except CloudError as e:
        if quotas.service_disabled(e):
            raise UserError(quotas.problem_sentence(e, project), STEP_FAILED) from None
        if quotas.permission_denied(e):
            raise UserError(f"Your account cannot ask for quota in project {project} (it lacks "
                            f"{e.permission or quotas.UPDATE_PERMISSION}, granted by roles/cloudquotas.admin): ask a "
                            "project owner for it, or request it in the Console "
                            f"({quotas.console_url(project)}).", MISSING_PERMISSION) from None
        raise UserError(*explain(e, project)) from None
    for o in outcomes:
        q = quotas.BY_KEY[o.name]
        said = "asked for" if o.changed else "already asked for (nothing changed)"
        if o.state == "granted":
            ui.info(f"{q.label} in {region}: {said} {o.requested} {q.unit}: granted.")
        elif o.state == "pending":
            ui.info(f"{q.label} in {region}: {said} {o.requested} {q.unit}: pending Google's review ({o.granted} "
                    f"granted for now); follow it at {quotas.requests_url(project)}")
        else:
            ui.warn(f"{q.label} in {region}: {said} {o.requested} {q.unit}: Google granted {o.granted}; see "
                    f"{quotas.requests_url(project)}")
    return outcomes


def offer(g: Google, reading: quotas.Reading, ui: Ui) -> list[quotas.Outcome]:
    """An interactive run whose quotas allow fewer than 10 workers: asks whether to request enough for 10."""
    wanted = reading.short()
    if not wanted:
        return []
    what = ", ".join(f"{v} {quotas.BY_KEY[k].unit}" for k, v in wanted.items())
    if not ui.confirm(f"Ask Google for {what} in {reading.region} (enough for {quotas.WARN_BELOW} workers)?",
                      default=False):
        return []
    email = ui.text("Contact email Google may write to about the request:", default=g.principal or "",
                    validate=lambda t: "@" in t or "Give an email address.").strip()
    return ask_for_more(g, reading.project, reading.region, wanted, email, None, ui)


def execute(o: QuotasOptions, ui: Ui, fields: dict) -> int:
    error = output_error(o.output)
    if error:
        raise BadInput(error)
    try:
        wanted = quotas.parse_requests(o.requests)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if o.email is not None and "@" not in o.email:
        raise BadInput(f"--email {o.email!r} is not an email address.")
    project = o.project or context.project_from_environment() or ""
    if not project:
        raise BadInput("No project given: pass --project PROJECT_ID or set GOOGLE_CLOUD_PROJECT.")
    check_project(project)
    settings = Journal(project).settings()
    region = o.region or settings.get("region") or DEFAULT_REGION
    error = region_error(region, False)
    if error:
        raise BadInput(error)
    # Without --region: every region gcp set up (clusters may start where Coiled's images are); with it, that one.
    regions = (region,) if o.region else quotas.regions_of(region, recorded_registry_regions(settings))
    fields.update(project=project, region=region, regions=list(regions), console_url=quotas.console_url(project))
    g = connect_google(project=project)
    try:
        if o.enable_api:
            _enable(g, project, ui)
        readings = quotas.read_all(g, project, regions)
        if readings[0].disabled and not o.enable_api and o.interactive and ui.confirm(
                f"The Cloud Quotas API is disabled in project {project}. Enable it to read the quotas?", default=True):
            _enable(g, project, ui)
            readings = quotas.read_all(g, project, regions)
        reading = readings[0]  # the cluster region's: the one --request asks in
        fields["quotas"] = reading.as_dict()
        fields["readings"] = [r.as_dict() for r in readings]
        if reading.problem:
            if wanted and not reading.disabled:
                ui.warn(reading.problem)  # a request may still be allowed without the right to read
            else:
                raise UserError(reading.problem, MISSING_PERMISSION if not reading.disabled else STEP_FAILED)
        else:
            for r in readings:
                render(ui, r)
            for r in quotas.short_regions(readings):
                ui.warn(r.warning_sentence())
        if wanted:
            fields["requests"] = [x.as_dict() for x in ask_for_more(g, project, region, wanted, o.email,
                                                                    o.justification, ui)]
        elif o.interactive:
            fields["requests"] = [x.as_dict() for r in quotas.short_regions(readings) for x in offer(g, r, ui)]
    finally:
        g.close()
    return OK


def recorded_registry_regions(settings: dict) -> tuple[str, ...]:
    """The registry regions gcp recorded besides the cluster region (a hand-edited entry is left out)."""
    regions = settings.get("registry_regions")
    return tuple(r for r in regions if isinstance(r, str) and not region_error(r, True)) \
        if isinstance(regions, list) else ()


def run(o: QuotasOptions) -> int:
    ui = Ui(interactive=o.interactive, output=o.output)
    fields: dict = {}
    code, error = OK, None
    try:
        code = execute(o, ui, fields)
    except UserError as e:
        code, error = e.code, e.message
        ui.error(e.message)
    except CloudError as e:  # a refusal of the enabling, say: still one sentence
        error, code = explain(e, o.project or "")
        ui.error(error)
    except KeyboardInterrupt:
        code, error = INTERRUPTED, "Interrupted: nothing more was asked of Google."
        ui.error(error)
    finally:
        ui.stop()
        if o.output == "json":
            report.emit("quotas", code, error, **fields)
    return code
