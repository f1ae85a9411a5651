"""What every service's handlers share: the call's context, Google's project checks, name parsing."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.errors import ApiError
from coiled_setup.sandbox.world import Policy, Project, World

IAM_SVC = "iam.googleapis.com"
CRM_SVC = "cloudresourcemanager.googleapis.com"
SU_SVC = "serviceusage.googleapis.com"
AR_SVC = "artifactregistry.googleapis.com"


class Ctx:
    """One call: who made it, and whether it changed anything."""

    def __init__(self, world: World, caller: str, user_project: str | None = None):
        self.world = world
        self.caller = caller
        self.changed = False
        # The quota project the credentials name (x-goog-user-project): Google's consumer for the call.
        self.user_project = user_project

    def project(self, ref: str, permission: str, resource: str, service: str) -> Project:
        """The project, after the checks Google makes: exists, live, API enabled, permission held."""
        w = self.world
        p = w.project(ref)
        if p is None:
            raise errors.permission_denied(permission, resource)
        if permission != "resourcemanager.projects.get":
            live(p, service)
        consumer = self.consumer(p, service)
        if service != CRM_SVC and not w.service_enabled(consumer, service, settled=True):
            raise errors.service_disabled(service, consumer.number)
        self.require(permission, p, resource)
        return p

    def consumer(self, p: Project, service: str) -> Project:
        """The project Google bills and checks the API in: the quota project when the call names one, which the
        caller must be allowed to use (serviceusage.services.use), else the project itself."""
        if not self.user_project:
            return p
        q = self.world.project(self.user_project)
        if q is None or not self.world.holds(self.caller, "serviceusage.services.use", q):
            raise errors.user_project_denied(self.user_project, q.number if q else self.user_project, service)
        return q

    def require(self, permission: str, p: Project, resource: str, policy: Policy | None = None) -> None:
        if not self.world.holds(self.caller, permission, p, policy):
            raise errors.permission_denied(permission, resource)


def live(p: Project, service: str) -> None:
    """Refuses a call about a project that is pending deletion, as every API but GetProject does."""
    if p.state != "ACTIVE":
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"Project {p.project_id} has been scheduled for deletion.",
            reason="CONSUMER_INVALID",
            metadata={"consumer": f"projects/{p.number}", "service": service},
        )


def ts(wall: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromSeconds(int(wall))
    return t


def parts(name: str, *labels: str) -> list[str]:
    """Values of `label/value/...` names, e.g. projects/p/roles/r -> [p, r]."""
    bits = name.split("/")
    if len(bits) != 2 * len(labels) or any(bits[2 * i] != lab for i, lab in enumerate(labels)):
        raise errors.invalid_argument(f"Invalid resource name: {name!r}.", field="name")
    return [bits[2 * i + 1] for i in range(len(labels))]


def page_start(token: str) -> int:
    """The offset a page token of ours stands for; INVALID_ARGUMENT for any other token."""
    if not token:
        return 0
    if not token.isdigit():
        raise errors.invalid_argument(f"Invalid page token {token!r}.", field="page_token")
    return int(token)
