"""The Google APIs the product uses, served over gRPC with Google's method names and messages.

The handlers live in `services/`, one module per Google service; this module wires them into one server
and adds what every call shares: latency, injected faults, the caller's identity, the call record.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_status import rpc_status

from coiled_setup.sandbox.auth import caller_of
from coiled_setup.sandbox.errors import ApiError, vpc_refusal
from coiled_setup.sandbox.services import SERVICES
from coiled_setup.sandbox.services.common import Ctx
from coiled_setup.sandbox.world import World

FAULT_CODES = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED]

# (service path, method, handler, request class, writes?)
METHODS: list[tuple[str, str, Callable, type, bool]] = [
    (module.PATH, *entry) for module, _, _ in SERVICES for entry in module.METHODS
]
API_HOSTS = {short: host for _, short, host in SERVICES}
SERVICE_NAMES = {module.PATH: short for module, short, _ in SERVICES}


def _resource_of(req) -> str:
    for attr in ("name", "parent", "resource"):
        v = getattr(req, attr, None)
        if isinstance(v, str) and v:
            return v
    return ""


def _serialize(resp) -> bytes:
    if hasattr(resp, "SerializeToString"):
        return resp.SerializeToString()
    return type(resp).serialize(resp)


def build_handlers(world: World) -> list[grpc.GenericRpcHandler]:
    by_service: dict[str, dict] = {}
    for path, method, fn, req_cls, writes in METHODS:
        deser = req_cls.FromString if hasattr(req_cls, "FromString") else req_cls.deserialize
        behaviour = grpc.unary_unary_rpc_method_handler(
            _wrap(world, SERVICE_NAMES[path], method, fn, writes),
            request_deserializer=deser,
            response_serializer=_serialize,
        )
        by_service.setdefault(path, {})[method] = behaviour
    return [grpc.method_handlers_generic_handler(p, m) for p, m in by_service.items()]


def _wrap(world: World, service: str, method: str, fn: Callable, writes: bool):
    def handle(request, context: grpc.ServicerContext):
        cfg = world.config
        if cfg.latency_ms:
            time.sleep(cfg.latency_ms / 1000.0)
        fault = None
        if world.faults(method):
            fault = world.pick(FAULT_CODES)
        caller = None
        ctx = None
        code = "OK"
        try:
            if fault == grpc.StatusCode.UNAVAILABLE:
                raise ApiError(fault, "The service is currently unavailable.")
            if fault == grpc.StatusCode.RESOURCE_EXHAUSTED:
                host = API_HOSTS[service]
                raise ApiError(
                    fault,
                    f"Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of "
                    f"service '{host}'.",
                    reason="RATE_LIMIT_EXCEEDED",
                    metadata={"service": host, "quota_metric": f"{host}/default_requests"},
                )
            if API_HOSTS[service] in world.perimeter:
                raise vpc_refusal(API_HOSTS[service])
            md = {k: v for k, v in context.invocation_metadata()}
            caller = caller_of(world, md.get("authorization"))
            ctx = Ctx(world, caller, md.get("x-goog-user-project") or None)
            with world.lock:
                if cfg.fail_method == method and cfg.fail_times > 0:
                    cfg.fail_times -= 1
                    raise ApiError(getattr(grpc.StatusCode, cfg.fail_code), "Injected failure.")
                resp = fn(ctx, request)
            if fault is not None:
                # The change was made but the answer is lost, as with a real deadline.
                raise ApiError(fault, "Deadline expired before operation could complete.")
            return resp
        except ApiError as e:
            code = e.code.name
            context.abort_with_status(rpc_status.to_status(e.status()))
        except Exception as e:  # a sandbox bug: answer INTERNAL, visibly
            code = "INTERNAL"
            context.abort(grpc.StatusCode.INTERNAL, f"sandbox error: {type(e).__name__}: {e}")
        finally:
            seq = world.record(
                service=service,
                method=method,
                caller=caller,
                code=code,
                write=writes,
                mutating=bool(ctx and ctx.changed),
                resource=_resource_of(request),
                fault=fault.name if fault else None,
            )
            world.hold_answer(method, code, seq)

    return handle
