"""Test helpers: real Google client libraries and plain HTTP pointed at a sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import grpc
from google.api_core import exceptions as gx
from google.auth.transport.grpc import AuthMetadataPlugin
from google.auth.transport.requests import Request
from google.cloud import (
    artifactregistry_v1,
    cloudquotas_v1,
    iam_admin_v1,
    orgpolicy_v2,
    resourcemanager_v3,
    service_usage_v1,
)
from google.oauth2 import service_account

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def credentials(key: dict | str):
    if isinstance(key, dict):
        return service_account.Credentials.from_service_account_info(key, scopes=SCOPES)
    return service_account.Credentials.from_service_account_file(str(key), scopes=SCOPES)


def channel(endpoint: str, creds=None) -> grpc.Channel:
    opts = [("grpc.enable_http_proxy", 0)]
    if creds is None:
        return grpc.insecure_channel(endpoint, options=opts)
    call = grpc.metadata_call_credentials(AuthMetadataPlugin(creds, Request()))
    cc = grpc.composite_channel_credentials(grpc.local_channel_credentials(), call)
    return grpc.secure_channel(endpoint, cc, options=opts)


def clients(sb, key: dict | str | None = None):
    """The real clients, authenticated as the operator (default) or with `key`."""
    ch = channel(sb.google_endpoint, credentials(key if key is not None else sb.operator_key_path))

    def mk(cls):
        return cls(transport=cls.get_transport_class("grpc")(channel=ch))

    return types.SimpleNamespace(
        iam=mk(iam_admin_v1.IAMClient),
        projects=mk(resourcemanager_v3.ProjectsClient),
        usage=mk(service_usage_v1.ServiceUsageClient),
        registry=mk(artifactregistry_v1.ArtifactRegistryClient),
        orgpolicy=mk(orgpolicy_v2.OrgPolicyClient),
        quotas=mk(cloudquotas_v1.CloudQuotasClient),
        channel=ch,
        project=sb.project,
    )


def http(method: str, url: str, body=None, token: str | None = None, scheme: str | None = None):
    """(status, parsed JSON or None) of a plain HTTP call."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"{scheme or ('ApiToken' if '-' in token else 'Token')} {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def calls(sb, since: int = 0) -> list[dict]:
    return http("GET", f"{sb.coiled_url}/_sandbox/calls?since={since}")[1]


def state(sb) -> dict:
    return http("GET", f"{sb.coiled_url}/_sandbox/state")[1]


def wait_until(check, timeout: float = 5.0, step: float = 0.05):
    """The first truthy value of check() within timeout, or the last value (or Google error) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value or time.monotonic() > deadline:
                return value
        except gx.GoogleAPICallError:
            if time.monotonic() > deadline:
                raise
        time.sleep(step)


def killed_when(sb, home, args, until) -> bool:
    """Runs `coiled-setup ARGS` against the sandbox and kills it (SIGKILL) once until() holds, within a minute; then
    lets the sandbox answer every call again. Answers whether until() held."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(home), GRPC_VERBOSITY="ERROR")
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (held := until()):
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait(timeout=30)
    sb.world.config.hold_method, sb.world.config.hold_s = "", 0
    return held
