"""Service Usage (google.api.serviceusage.v1.ServiceUsage): enabling APIs, billing's refusal."""

from __future__ import annotations

from google.cloud.service_usage_v1 import types as su

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.services import operations
from coiled_setup.sandbox.services.common import AR_SVC, SU_SVC, Ctx, parts
from coiled_setup.sandbox.services.operations import operation_proto
from coiled_setup.sandbox.world import SERVICE_TITLES, Project, World, new_operation_id

PATH = "google.api.serviceusage.v1.ServiceUsage"
BILLED_SERVICES = {AR_SVC, "compute.googleapis.com", "container.googleapis.com"}


def _service_proto(p: Project, name: str, enabled: bool) -> su.Service:
    return su.Service(
        name=f"projects/{p.number}/services/{name}",
        parent=f"projects/{p.number}",
        config=su.ServiceConfig(name=name, title=SERVICE_TITLES.get(name, name)),
        state=su.State.ENABLED if enabled else su.State.DISABLED,
    )


def get_service(ctx: Ctx, req: su.GetServiceRequest):
    ref, name = parts(req.name, "projects", "services")
    p = ctx.project(ref, "serviceusage.services.get", req.name, SU_SVC)
    return _service_proto(p, name, ctx.world.service_enabled(p, name))


def batch_get_services(ctx: Ctx, req: su.BatchGetServicesRequest):
    (ref,) = parts(req.parent, "projects")
    p = ctx.project(ref, "serviceusage.services.get", req.parent, SU_SVC)
    names = list(req.names)
    if not names or len(names) > 30:
        raise errors.invalid_argument("Between 1 and 30 service names are allowed in one batch.", field="names")
    services = []
    for full in names:
        pref, name = parts(full, "projects", "services")
        if ctx.world.project(pref) is not p:
            raise errors.invalid_argument(f"Service {full!r} is not in parent {req.parent!r}.", field="names")
        services.append(_service_proto(p, name, ctx.world.service_enabled(p, name)))
    return su.BatchGetServicesResponse(services=services)


def _enable(ctx: Ctx, p: Project, names: list[str]):
    w = ctx.world
    if not p.billing:
        needing = [n for n in names if n in BILLED_SERVICES and not w.service_enabled(p, n)]
        if needing:
            svc = ",".join(needing)
            raise errors.failed_precondition(
                f"Billing account for project '{p.number}' is not found. Billing must be enabled for "
                f"activation of service(s) '{svc}' to proceed.",
                reason="UREQ_PROJECT_BILLING_NOT_FOUND",
                domain="serviceusage.googleapis.com/billing-enabled",
                metadata={"project": p.number, "services": svc},
                violations=[("googleapis.com/billing-enabled",
                             f"?error_code=390001&project={p.number}"
                             + "".join(f"&services={n}" for n in needing), "")],
            )
    pending = [n for n in names if n not in p.services]
    done_at = w.now() + w.config.operation_s
    for n in pending:
        p.services[n] = done_at
    if pending:
        ctx.changed = True
    ready = max([p.services[n] for n in names] + [w.now()])
    return pending, ready


def _enable_operation_name(w: World, p: Project, ready: float) -> str:
    """Google's shared no-op name only when everything asked for is already enabled; an enable
    still under way (even one started by an earlier call) gets an operation of its own."""
    if ready <= w.now():
        return "operations/noop.DONE_OPERATION"
    return f"operations/acf.p2-{p.number}-{new_operation_id()}"


def _failed_operation(ctx: Ctx, p: Project, method: str, kind: str, names: list[str]):
    """An operation that ends in the scenario's error, having enabled nothing."""
    err = ctx.world.operation_error(method)
    if err is None:
        return None
    op = ctx.world.new_operation(f"operations/acf.p2-{p.number}-{new_operation_id()}", kind,
                                 {"project": p.project_id, "services": names})
    op.error = err
    return operation_proto(ctx.world, op)


def enable_service(ctx: Ctx, req: su.EnableServiceRequest):
    ref, name = parts(req.name, "projects", "services")
    p = ctx.project(ref, "serviceusage.services.enable", req.name, SU_SVC)
    failed = _failed_operation(ctx, p, "EnableService", "enable", [name])
    if failed is not None:
        return failed
    _, ready = _enable(ctx, p, [name])
    op_name = _enable_operation_name(ctx.world, p, ready)
    op = ctx.world.new_operation(op_name, "enable", {"project": p.project_id, "services": [name]},
                                 delay=ready - ctx.world.now())
    return operation_proto(ctx.world, op)


def batch_enable(ctx: Ctx, req: su.BatchEnableServicesRequest):
    (ref,) = parts(req.parent, "projects")
    p = ctx.project(ref, "serviceusage.services.enable", req.parent, SU_SVC)
    names = list(req.service_ids)
    if not names or len(names) > 20:
        raise errors.invalid_argument("Between 1 and 20 service ids are allowed in one batch.", field="service_ids")
    failed = _failed_operation(ctx, p, "BatchEnableServices", "batch_enable", names)
    if failed is not None:
        return failed
    _, ready = _enable(ctx, p, names)
    op_name = _enable_operation_name(ctx.world, p, ready)
    op = ctx.world.new_operation(op_name, "batch_enable", {"project": p.project_id, "services": names},
                                 delay=ready - ctx.world.now())
    return operation_proto(ctx.world, op)


def disable_service(ctx: Ctx, req: su.DisableServiceRequest):
    ref, name = parts(req.name, "projects", "services")
    p = ctx.project(ref, "serviceusage.services.disable", req.name, SU_SVC)
    if p.services.pop(name, None) is not None:
        ctx.changed = True
    op = ctx.world.new_operation(f"operations/acf.p2-{p.number}-{new_operation_id()}", "disable",
                                 {"project": p.project_id, "services": [name]}, delay=0)
    return operation_proto(ctx.world, op)


def _op_metadata(w: World, op) -> object:
    names = [f"services/{n}" for n in op.payload.get("services", [])]
    return su.OperationMetadata.pb(su.OperationMetadata(resource_names=names))


def _op_response(w: World, op) -> object:
    p = w.projects[op.payload["project"]]
    services = [_service_proto(p, n, w.service_enabled(p, n)) for n in op.payload["services"]]
    if op.kind == "enable":
        return su.EnableServiceResponse.pb(su.EnableServiceResponse(service=services[0]))
    if op.kind == "batch_enable":
        return su.BatchEnableServicesResponse.pb(su.BatchEnableServicesResponse(services=services))
    return su.DisableServiceResponse.pb(su.DisableServiceResponse(service=services[0]))


operations.register(("enable", "batch_enable", "disable"), _op_metadata, _op_response)

METHODS = [
    ("GetService", get_service, su.GetServiceRequest, False),
    ("BatchGetServices", batch_get_services, su.BatchGetServicesRequest, False),
    ("EnableService", enable_service, su.EnableServiceRequest, True),
    ("BatchEnableServices", batch_enable, su.BatchEnableServicesRequest, True),
    ("DisableService", disable_service, su.DisableServiceRequest, True),
]
