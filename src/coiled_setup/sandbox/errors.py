"""Errors the sandbox answers with, carrying Google's rich status details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


class ApiError(Exception):
    """An answer with a non-OK gRPC status, shaped as Google shapes it."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        domain: str = "googleapis.com",
        metadata: dict[str, str] | None = None,
        violations: list[tuple[str, str, str]] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = metadata or {}
        self.violations = violations or []
        self.field_violations = field_violations or []

    def status(self) -> status_pb2.Status:
        details = []
        if self.reason:
            info = error_details_pb2.ErrorInfo(reason=self.reason, domain=self.domain)
            info.metadata.update(self.metadata)
            details.append(info)
        if self.violations:
            pf = error_details_pb2.PreconditionFailure()
            for vtype, subject, description in self.violations:
                pf.violations.add(type=vtype, subject=subject, description=description)
            details.append(pf)
        if self.field_violations:
            br = error_details_pb2.BadRequest()
            for field, description in self.field_violations:
                br.field_violations.add(field=field, description=description)
            details.append(br)
        packed = []
        for d in details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=packed
        )


def not_found(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, message)


def invalid_argument(message: str, field: str | None = None) -> ApiError:
    fv = [(field, message)] if field else None
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, field_violations=fv)


def permission_denied(permission: str, resource: str, domain: str = "iam.googleapis.com") -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"Permission '{permission}' denied on resource '{resource}' (or it may not exist).",
        reason="IAM_PERMISSION_DENIED",
        domain=domain,
        metadata={"permission": permission, "resource": resource},
    )


def service_disabled(service: str, project_number: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{service} API has not been used in project {project_number} before or it is disabled. "
        f"Enable it by visiting the console, then retry. If you enabled this API recently, wait "
        f"a few minutes for the action to propagate to our systems and retry.",
        reason="SERVICE_DISABLED",
        domain="googleapis.com",
        metadata={"service": service, "consumer": f"projects/{project_number}"},
    )


def user_project_denied(project: str, number: str, service: str) -> ApiError:
    """The quota project (x-goog-user-project) is unknown, or the caller may not use it."""
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"Caller does not have required permission to use project {project}. Grant the caller the "
        f"roles/serviceusage.serviceUsageConsumer role, or a custom role with the serviceusage.services.use "
        f"permission, by visiting https://console.developers.google.com/iam-admin/iam/admin?project={project} and "
        f"then retry. Propagation of the new permission may take a few minutes.",
        reason="USER_PROJECT_DENIED",
        domain="googleapis.com",
        metadata={"consumer": f"projects/{number}", "service": service},
    )


def aborted(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ABORTED, message)


def failed_precondition(message: str, **kw) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, message, **kw)


def unauthenticated(message: str, reason: str = "CREDENTIALS_MISSING") -> ApiError:
    """UNAUTHENTICATED with Google's ErrorInfo reason: CREDENTIALS_MISSING (no token),
    ACCESS_TOKEN_TYPE_UNSUPPORTED (a token Google does not know), ACCESS_TOKEN_EXPIRED,
    ACCOUNT_STATE_INVALID (the token's account is disabled or deleted)."""
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, message, reason=reason)


def vpc_refusal(service: str, uid: str = "sandbox-vpcsc-7Qe2Xk") -> ApiError:
    """A VPC Service Controls perimeter refusing a call from outside it, in Google's words."""
    return ApiError(grpc.StatusCode.PERMISSION_DENIED,
                    f"Request is prohibited by organization's policy. vpcServiceControlsUniqueIdentifier: {uid}",
                    reason="SECURITY_POLICY_VIOLATED", metadata={"service": service, "uid": uid},
                    violations=[("VPC_SERVICE_CONTROLS", "", uid)])
