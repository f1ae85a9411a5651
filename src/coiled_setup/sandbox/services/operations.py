"""Long-running operations (google.longrunning.Operations), as Service Usage and Artifact Registry answer them."""

from __future__ import annotations

from collections.abc import Callable

from google.longrunning import operations_pb2

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.services.common import Ctx
from coiled_setup.sandbox.world import Operation, World

PATH = "google.longrunning.Operations"

# kind -> (metadata of the operation, its response once done, or None); each service registers its own kinds.
KINDS: dict[str, tuple[Callable[[World, Operation], object], Callable[[World, Operation], object]]] = {}


def register(kinds: tuple[str, ...], metadata: Callable, response: Callable) -> None:
    for k in kinds:
        KINDS[k] = (metadata, response)


def operation_proto(w: World, op: Operation) -> operations_pb2.Operation:
    out = operations_pb2.Operation(name=op.name)
    metadata, response = KINDS[op.kind]
    out.metadata.Pack(metadata(w, op))
    if w.now() < op.done_at:
        return out
    out.done = True
    if op.error is not None:
        out.error.CopyFrom(op.error.status())
        return out
    resp = response(w, op)
    if resp is not None:
        out.response.Pack(resp)
    return out


def get_operation(ctx: Ctx, req: operations_pb2.GetOperationRequest):
    op = ctx.world.operations.get(req.name)
    if op is None:
        raise errors.not_found(f"Operation {req.name} not found.")
    return operation_proto(ctx.world, op)


METHODS = [
    ("GetOperation", get_operation, operations_pb2.GetOperationRequest, False),
]
