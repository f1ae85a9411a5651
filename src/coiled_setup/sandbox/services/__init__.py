"""One module per Google service the product calls; grpc_api serves them all behind one server.

Each module names its gRPC service (`PATH`) and lists its `METHODS` as (method, handler, request class, writes?).
"""

from coiled_setup.sandbox.services import (
    artifact_registry,
    cloud_quotas,
    iam,
    operations,
    org_policy,
    resource_manager,
    service_usage,
)

# (module, short name used in the call record and quota messages, API host)
SERVICES = [
    (iam, "iam", "iam.googleapis.com"),
    (resource_manager, "resourcemanager", "cloudresourcemanager.googleapis.com"),
    (service_usage, "serviceusage", "serviceusage.googleapis.com"),
    (artifact_registry, "artifactregistry", "artifactregistry.googleapis.com"),
    (operations, "operations", "serviceusage.googleapis.com"),
    (org_policy, "orgpolicy", "orgpolicy.googleapis.com"),
    (cloud_quotas, "cloudquotas", "cloudquotas.googleapis.com"),
]
