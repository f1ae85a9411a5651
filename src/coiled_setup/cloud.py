"""The one place that talks to Google: clients built lazily, answers as plain data, errors as CloudError.

Nothing else in the product imports a Google library. Importing the clients costs most of a
second, so this module imports them only when a call needs them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass, field

ENDPOINT_VAR = "COILED_SETUP_GOOGLE_ENDPOINT"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
MAX_TEST_PERMISSIONS = 100
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"}
READ_ATTEMPTS = 6


class CloudError(Exception):
    """A Google answer other than OK, with what the rich status says."""

    def __init__(self, code: str, message: str, *, reason: str = "", metadata: dict | None = None,
                 violations: list[str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.violations = violations or []

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT

    @property
    def permission(self) -> str:
        return self.metadata.get("permission", "")

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NoCredentials(Exception):
    pass


@dataclass
class Account:
    email: str
    unique_id: str
    disabled: bool
    display_name: str = ""


@dataclass
class Key:
    key_id: str
    created: float
    disabled: bool


@dataclass
class Role:
    name: str
    title: str
    description: str
    permissions: list[str]
    stage: str
    deleted: bool
    etag: bytes


@dataclass
class Binding:
    role: str
    members: list[str]
    condition: dict | None = None


@dataclass
class Policy:
    version: int
    etag: bytes
    bindings: list[Binding] = field(default_factory=list)


@dataclass
class Project:
    project_id: str
    number: str
    state: str


def _convert(exc: BaseException) -> CloudError:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.grpc_status_code.name if exc.grpc_status_code is not None else str(exc.code)
        violations = []
        for d in exc.details or []:
            for v in getattr(d, "violations", []) or []:
                if getattr(v, "type", ""):
                    violations.append(v.type)
        return CloudError(code, exc.message or str(exc), reason=exc.reason or "",
                          metadata=dict(exc.metadata or {}), violations=violations)
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause
        if isinstance(cause, gexc.GoogleAPICallError) and "metadata from plugin" in str(cause.message):
            # The credentials were refused while a call was being made; the client retried that in vain.
            return CloudError("UNAUTHENTICATED", "Google refused the credentials.")
        return _convert(cause) if cause is not None else CloudError("DEADLINE_EXCEEDED", str(exc))
    if isinstance(exc, aexc.RefreshError):
        return CloudError("UNAUTHENTICATED", f"Google refused the credentials: {_first_line(exc)}")
    if isinstance(exc, aexc.TransportError):
        return CloudError("UNAVAILABLE", f"Could not reach Google's token service: {_first_line(exc)}")
    raise exc


def _first_line(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = str(args[0]) if args else str(exc)
    return text.splitlines()[0][:200]


@contextlib.contextmanager
def _google_errors():
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    try:
        yield
    except (gexc.GoogleAPICallError, gexc.RetryError, aexc.RefreshError, aexc.TransportError) as e:
        raise _convert(e) from None


def _read(call):
    """An idempotent read, retried with capped backoff while Google answers a transient error.

    Reads are retried here, where it is always safe, so that a step's own retries (which start the
    step over) are spent on its writes rather than on every read around them.
    """
    from coiled_setup import waiting

    delays = waiting.delays(first=0.2, cap=3.0)
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            with _google_errors():
                return call()
        except CloudError as e:
            if not e.transient or attempt == READ_ATTEMPTS:
                raise
        time.sleep(next(delays))


def _policy_from_pb(pb) -> Policy:
    bindings = []
    for b in pb.bindings:
        cond = None
        if b.HasField("condition"):
            cond = {"expression": b.condition.expression}
            if b.condition.title:
                cond["title"] = b.condition.title
            if b.condition.description:
                cond["description"] = b.condition.description
        bindings.append(Binding(b.role, list(b.members), cond))
    return Policy(pb.version, pb.etag, bindings)


def _policy_to_pb(policy: Policy):
    from google.iam.v1 import policy_pb2

    pb = policy_pb2.Policy(version=policy.version, etag=policy.etag)
    for b in policy.bindings:
        nb = pb.bindings.add(role=b.role, members=b.members)
        if b.condition:
            nb.condition.expression = b.condition.get("expression", "")
            nb.condition.title = b.condition.get("title", "")
            nb.condition.description = b.condition.get("description", "")
    return pb


def _role(r) -> Role:
    return Role(
        name=r.name,
        title=r.title,
        description=r.description,
        permissions=list(r.included_permissions),
        stage=type(r).RoleLaunchStage(r.stage).name,
        deleted=r.deleted,
        etag=r.etag,
    )


class Google:
    """Google Cloud, as one principal (the operator, or the Coiled account with its key)."""

    def __init__(self, credentials, endpoint: str | None = None, principal: str = ""):
        self.credentials = credentials
        self.endpoint = endpoint
        self.principal = principal
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()
        self._channel = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_environment(cls) -> "Google":
        """Application Default Credentials, and the endpoint override if set."""
        import google.auth
        from google.auth import exceptions as aexc

        try:
            creds, _ = google.auth.default(scopes=SCOPES)
        except aexc.DefaultCredentialsError as e:
            raise NoCredentials(_first_line(e)) from None
        principal = getattr(creds, "service_account_email", "") or ""
        return cls(creds, os.environ.get(ENDPOINT_VAR) or None, principal)

    @classmethod
    def from_key(cls, keyfile: dict, endpoint: str | None = None) -> "Google":
        from google.oauth2 import service_account

        creds = service_account.Credentials.from_service_account_info(keyfile, scopes=SCOPES)
        return cls(creds, endpoint if endpoint is not None else os.environ.get(ENDPOINT_VAR) or None,
                   keyfile.get("client_email", ""))

    def _make(self, name: str):
        with self._lock:
            if name in self._clients:
                return self._clients[name]
            if name == "iam":
                from google.cloud import iam_admin_v1 as mod

                cls = mod.IAMClient
            elif name == "projects":
                from google.cloud import resourcemanager_v3 as mod

                cls = mod.ProjectsClient
            elif name == "usage":
                from google.cloud import service_usage_v1 as mod

                cls = mod.ServiceUsageClient
            else:
                from google.cloud import artifactregistry_v1 as mod

                cls = mod.ArtifactRegistryClient
            if self.endpoint:
                client = cls(transport=cls.get_transport_class("grpc")(channel=self._local_channel()))
            else:
                client = cls(credentials=self.credentials)
            self._clients[name] = client
            return client

    def _local_channel(self):
        # A local endpoint: the same bearer tokens as Google gets, over a loopback channel.
        if self._channel is None:
            import grpc
            from google.auth.transport.grpc import AuthMetadataPlugin
            from google.auth.transport.requests import Request

            call = grpc.metadata_call_credentials(AuthMetadataPlugin(self.credentials, Request()))
            creds = grpc.composite_channel_credentials(grpc.local_channel_credentials(), call)
            self._channel = grpc.secure_channel(self.endpoint, creds, options=[("grpc.enable_http_proxy", 0)])
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._clients.clear()

    @property
    def iam(self):
        return self._make("iam")

    @property
    def projects(self):
        return self._make("projects")

    @property
    def usage(self):
        return self._make("usage")

    @property
    def registry(self):
        return self._make("registry")

    # -- projects and permissions --------------------------------------------------------------
    def get_project(self, project: str) -> Project:
        p = _read(lambda: self.projects.get_project(name=f"projects/{project}"))
        return Project(p.project_id, p.name.split("/", 1)[1], type(p).State(p.state).name)

    def test_permissions(self, resource: str, permissions: list[str], *, repository: bool = False) -> set[str]:
        """Which of `permissions` the principal holds on a project (or repository), batched as Google requires."""
        batches = [permissions[i:i + MAX_TEST_PERMISSIONS] for i in range(0, len(permissions), MAX_TEST_PERMISSIONS)]
        client = self.registry if repository else self.projects
        name = resource if repository else f"projects/{resource}"

        def one(batch):
            return _read(lambda: client.test_iam_permissions(request={"resource": name, "permissions": batch})
                         ).permissions

        held: set[str] = set()
        for result in run_all([lambda b=b: one(b) for b in batches]):
            held.update(result)
        return held

    def get_policy(self, project: str) -> Policy:
        pb = _read(lambda: self.projects.get_iam_policy(
            request={"resource": f"projects/{project}", "options": {"requested_policy_version": 3}}
        ))
        return _policy_from_pb(pb)

    def set_policy(self, project: str, policy: Policy) -> Policy:
        with _google_errors():
            pb = self.projects.set_iam_policy(
                request={"resource": f"projects/{project}", "policy": _policy_to_pb(policy)}
            )
        return _policy_from_pb(pb)

    # -- service usage ------------------------------------------------------------------------------
    def service_enabled(self, project: str, service: str) -> bool:
        s = _read(lambda: self.usage.get_service(request={"name": f"projects/{project}/services/{service}"}))
        from google.cloud.service_usage_v1 import State

        return s.state == State.ENABLED

    def start_enable(self, project: str, services: list[str]) -> str:
        """Starts enabling; answers the operation name (done already when nothing was to do)."""
        with _google_errors():
            op = self.usage.batch_enable_services(
                request={"parent": f"projects/{project}", "service_ids": services}
            )
        # The answer itself says whether it is done: op.done() would make another, unguarded call.
        return op.operation.name if not op.operation.done else ""

    def operation_done(self, client: str, name: str) -> bool:
        """Polls an operation once; raises its error when it failed."""
        transport = (self.registry if client == "registry" else self.usage).transport
        op = _read(lambda: transport.operations_client.get_operation(name))
        if op.done and op.HasField("error"):
            raise CloudError(_code_name(op.error.code), op.error.message)
        return bool(op.done)

    # -- service accounts and keys ----------------------------------------------------------------
    def get_account(self, email: str) -> Account | None:
        try:
            a = _read(lambda: self.iam.get_service_account(name=f"projects/-/serviceAccounts/{email}"))
        except CloudError as e:
            if e.code == "NOT_FOUND":
                return None
            raise
        return Account(a.email, a.unique_id, a.disabled, a.display_name)

    def list_accounts(self, project: str) -> list[Account]:
        # The largest page Google serves: one round trip for most projects instead of one per 20 accounts.
        return _read(lambda: [Account(a.email, a.unique_id, a.disabled, a.display_name)
                              for a in self.iam.list_service_accounts(
                                  request={"name": f"projects/{project}", "page_size": 100})])

    def create_account(self, project: str, account_id: str, display_name: str, description: str = "") -> Account:
        with _google_errors():
            a = self.iam.create_service_account(
                name=f"projects/{project}",
                account_id=account_id,
                service_account={"display_name": display_name, "description": description},
            )
        return Account(a.email, a.unique_id, a.disabled, a.display_name)

    def list_user_keys(self, email: str) -> list[Key]:
        resp = _read(lambda: self.iam.list_service_account_keys(
            request={"name": f"projects/-/serviceAccounts/{email}", "key_types": [1]}  # USER_MANAGED
        ))
        return [Key(k.name.rsplit("/", 1)[1], k.valid_after_time.timestamp(), k.disabled) for k in resp.keys]

    def create_key(self, email: str) -> dict:
        """A new key; answers the key file (the only copy of its private half)."""
        import json

        with _google_errors():
            k = self.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{email}")
        return json.loads(k.private_key_data)

    def delete_key(self, email: str, key_id: str) -> None:
        with _google_errors():
            self.iam.delete_service_account_key(name=f"projects/-/serviceAccounts/{email}/keys/{key_id}")

    # -- roles -------------------------------------------------------------------------------------
    def get_role(self, name: str) -> Role | None:
        try:
            return _role(_read(lambda: self.iam.get_role(request={"name": name})))
        except CloudError as e:
            if e.code == "NOT_FOUND":
                return None
            raise

    def create_role(self, project: str, role_id: str, title: str, description: str, permissions: list[str],
                    stage: str) -> Role:
        with _google_errors():
            r = self.iam.create_role(request={
                "parent": f"projects/{project}",
                "role_id": role_id,
                "role": {"title": title, "description": description, "included_permissions": permissions,
                         "stage": stage},
            })
        return _role(r)

    def update_role(self, name: str, etag: bytes, title: str, description: str, permissions: list[str],
                    stage: str) -> Role:
        with _google_errors():
            r = self.iam.update_role(request={
                "name": name,
                "role": {"title": title, "description": description, "included_permissions": permissions,
                         "stage": stage, "etag": etag},
                "update_mask": {"paths": ["title", "description", "included_permissions", "stage"]},
            })
        return _role(r)

    def undelete_role(self, name: str, etag: bytes) -> Role:
        with _google_errors():
            return _role(self.iam.undelete_role(request={"name": name, "etag": etag}))

    # -- artifact registry ---------------------------------------------------------------------------
    def get_repository(self, name: str) -> str | None:
        """The repository's format, or None when there is none."""
        try:
            r = _read(lambda: self.registry.get_repository(name=name))
        except CloudError as e:
            if e.code == "NOT_FOUND":
                return None
            raise
        return type(r).Format(r.format_).name

    def start_create_repository(self, project: str, location: str, repo_id: str, description: str) -> str:
        from google.cloud.artifactregistry_v1 import Repository

        with _google_errors():
            op = self.registry.create_repository(
                parent=f"projects/{project}/locations/{location}",
                repository_id=repo_id,
                repository={"format_": Repository.Format.DOCKER, "description": description},
            )
        return op.operation.name

    def get_repo_policy(self, name: str) -> Policy:
        pb = _read(lambda: self.registry.get_iam_policy(
            request={"resource": name, "options": {"requested_policy_version": 3}}
        ))
        return _policy_from_pb(pb)

    def set_repo_policy(self, name: str, policy: Policy) -> Policy:
        with _google_errors():
            pb = self.registry.set_iam_policy(request={"resource": name, "policy": _policy_to_pb(policy)})
        return _policy_from_pb(pb)

    # -- credentials ---------------------------------------------------------------------------------
    def authenticate(self) -> None:
        """Fetches a token now, so refused credentials surface once, as CloudError UNAUTHENTICATED.

        (Refused inside a call, they arrive as UNAVAILABLE, which the client libraries retry for a minute.)
        """
        from google.auth.transport.requests import Request

        with _google_errors():
            self.credentials.refresh(Request())


def _code_name(code: int) -> str:
    import grpc

    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return "UNKNOWN"


def run_all(fns):
    """Runs independent calls together; answers their results in order, raising the first error.

    The calls run in daemon threads: Ctrl-C stops the wait at once, and the process can exit without
    waiting for a call still in flight (a thread pool would be joined first, however long that call takes).
    """
    fns = list(fns)
    if len(fns) <= 1:
        return [f() for f in fns]
    answers: queue.Queue = queue.Queue()

    def work(i, fn):
        try:
            answers.put((i, True, fn()))
        except BaseException as e:  # handed to the caller's thread
            answers.put((i, False, e))

    for i, fn in enumerate(fns):
        threading.Thread(target=work, args=(i, fn), daemon=True, name=f"coiled-setup-call-{i}").start()
    got = dict((i, (ok, value)) for i, ok, value in (answers.get() for _ in fns))
    for i in range(len(fns)):
        ok, value = got[i]
        if not ok:
            raise value
    return [got[i][1] for i in range(len(fns))]
