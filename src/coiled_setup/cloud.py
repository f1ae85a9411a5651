"""The one place that talks to Google: clients built lazily, answers as plain data, errors as typed CloudErrors.

Nothing else in the product imports a Google library, or looks at Google's status codes: callers tell errors
apart by their class (NotFound, AlreadyExists, Aborted, ...). Importing the clients costs most of a second,
so this module imports them only when a call needs them.

Retries: every read is retried here on a transient error, under the policy of coiled_setup.retry, and the
client libraries' own retries are off for every call. Writes are not retried here: a repeated key creation
makes a second key, a repeated policy or role write needs a fresh etag, and a create whose answer was lost is
only known done by reading again. So a transient error of a write reaches the caller unmarked, and the layer
that re-reads first retries it (the engine starts the step over; steps.policy re-reads the policy).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from dataclasses import dataclass, field

from coiled_setup import retry
from coiled_setup.concurrency import run_all

ENDPOINT_VAR = "COILED_SETUP_GOOGLE_ENDPOINT"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
MAX_TEST_PERMISSIONS = 100
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"}
READ_TIMEOUT_S = 20.0  # one attempt of a read (the client libraries' own retries are off: ours tell the user)
TOKEN_TIMEOUT_S = 10.0
# While Google does not answer at all: the first notice, the next ones, and when to give up.
NOTICE_AFTER_S = 1.0
NOTICE_EVERY_S = 5.0
GIVE_UP_S = 30.0
UNREACHABLE = "UNREACHABLE"  # CloudError.reason of a Google that stopped answering for GIVE_UP_S
# What the transport says when nothing answered (as opposed to an error Google answered).
_NO_ANSWER = ("failed to connect", "connection refused", "failed to establish", "dns resolution failed",
              "name resolution", "name or service not known", "socket closed", "connection reset",
              "network is unreachable", "no route to host", "deadline exceeded", "timed out")


# The client of each property below: (package of google.cloud, its service module, the class).
_CLIENTS = {
    "iam": ("iam_admin_v1", "iam", "IAMClient"),
    "projects": ("resourcemanager_v3", "projects", "ProjectsClient"),
    "usage": ("service_usage_v1", "service_usage", "ServiceUsageClient"),
    "orgpolicy": ("orgpolicy_v2", "org_policy", "OrgPolicyClient"),
    "quotas": ("cloudquotas_v1", "cloud_quotas", "CloudQuotasClient"),
    "registry": ("artifactregistry_v1", "artifact_registry", "ArtifactRegistryClient"),
}
_PACKAGES_LOCK = threading.Lock()


def client_class(package: str, service: str, name: str):
    """`name` from google.cloud.<package>.services.<service>, without the rest of the package.

    A package's __init__ imports every client it has (Resource Manager's seven: 3.5 MiB for the six unused, over
    all six packages), and Python runs it before any submodule. So the package is put in place without running
    it; the first time anything asks the package itself for a name (`resourcemanager_v3.ProjectsClient`, `from
    google.cloud.resourcemanager_v3 import ...`), its __init__ runs after all, and it is the usual package again.
    The service's own package is put in place the same way (its __init__ imports the asyncio client too), and
    the client module is imported alone, with stand-ins for the transports it names but this product never uses
    (_UNUSED_TRANSPORTS, about 3 MiB over the six clients): see _defer_transports.
    """
    import importlib
    import sys

    full = f"google.cloud.{package}"
    services = f"{full}.services.{service}"
    with _PACKAGES_LOCK:
        if full not in sys.modules:
            _defer_package(full)
        if services not in sys.modules and _defer_package(services):
            _defer_transports(services)
    return getattr(importlib.import_module(f"{services}.client"), name)


def preload(names) -> None:
    """Imports these clients (keys of _CLIENTS) in the background, while the run waits on the network: the first
    calls, made together, would otherwise import them one after another."""
    def work():
        for name in names:
            try:
                client_class(*_CLIENTS[name])
            except Exception:  # noqa: BLE001 - the call that needs it imports it again, and says why
                return

    threading.Thread(target=work, daemon=True, name="coiled-setup-imports").start()


def types_module(package: str):
    """google.cloud.<package>.types, without the rest of the package (see client_class)."""
    import importlib
    import sys

    full = f"google.cloud.{package}"
    with _PACKAGES_LOCK:
        if full not in sys.modules:
            _defer_package(full)
    return importlib.import_module(f"{full}.types")


def _defer_package(full: str) -> bool:
    """Puts the package `full` in place without running its __init__ (see client_class); answers whether it did."""
    import importlib
    import importlib.util
    import sys

    spec = importlib.util.find_spec(full)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        importlib.import_module(full)  # not a plain package: imported as usual
        return False
    module = importlib.util.module_from_spec(spec)
    running = threading.RLock()
    state = {"started": False}

    def complete(attr: str):
        # A submodule (`from google.cloud.<package> import gapic_version`, as the clients do) is imported alone.
        if not attr.startswith("__") and importlib.util.find_spec(f"{full}.{attr}") is not None:
            return importlib.import_module(f"{full}.{attr}")
        # Another thread asking meanwhile waits here for the whole package, never sees it half made.
        with running:
            if not state["started"]:
                state["started"] = True
                spec.loader.exec_module(module)
                if module.__dict__.get("__getattr__") is complete:
                    del module.__dict__["__getattr__"]
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {full!r} has no attribute {attr!r}") from None

    module.__getattr__ = complete  # type: ignore[attr-defined]  # a module's own __getattr__ (PEP 562)
    sys.modules[full] = module
    parent, _, leaf = full.rpartition(".")
    setattr(importlib.import_module(parent), leaf, module)
    return True


# Transports a generated client module imports by name although this product only speaks gRPC (the REST one also
# brings its rest_base, the asyncio one serves the asyncio client).
_UNUSED_TRANSPORTS = ("rest", "grpc_asyncio")


def _defer_transports(services: str) -> None:
    """Stand-ins for the _UNUSED_TRANSPORTS modules of the service package `services`, before its client imports them.

    A name taken from a stand-in module (`from .transports.rest import ProjectsRestTransport`, only ever classes)
    is a class whose first use (a call, an attribute, isinstance) imports the real module in its place and hands
    over to the real class: `get_transport_class("rest")` still builds a REST transport.
    """
    import importlib.machinery
    import os
    import sys
    import types

    where = os.path.join(sys.modules[services].__spec__.submodule_search_locations[0], "transports")
    if f"{services}.transports" in sys.modules:
        return  # already imported for real
    for leaf in _UNUSED_TRANSPORTS:
        name = f"{services}.transports.{leaf}"
        spec = importlib.machinery.PathFinder.find_spec(name, [where])
        if spec is None or spec.loader is None:
            continue
        module = types.ModuleType(name)
        module.__spec__, module.__file__, module.__loader__ = spec, spec.origin, spec.loader
        module.__getattr__ = _StandIns(module)  # type: ignore[attr-defined]
        sys.modules[name] = module


class _StandIns:
    """The module __getattr__ of a deferred transport module: one stand-in class per name, and the real module
    imported once, in the stand-in module's place, the first time a stand-in is used."""

    def __init__(self, module):
        self.module = module
        self.names: dict[str, type] = {}
        self.real = None
        self.lock = threading.Lock()

    def __call__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(f"module {self.module.__name__!r} has no attribute {attr!r}")
        with self.lock:
            if attr not in self.names:
                self.names[attr] = _StandIn(attr, (), {"_stand_ins": self, "__module__": self.module.__name__})
            return self.names[attr]

    def load(self):
        import importlib.util
        import sys

        with self.lock:
            if self.real is None:
                spec = self.module.__spec__
                real = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = real
                try:
                    spec.loader.exec_module(real)
                except BaseException:
                    sys.modules[spec.name] = self.module
                    raise
                self.real = real
            return self.real


class _StandIn(type):
    """The metaclass of a stand-in: every use goes to the real class of that name."""

    def _real(cls):
        return getattr(cls._stand_ins.load(), cls.__name__)

    def __call__(cls, *args, **kwargs):
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(cls._real(), attr)

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._real())

    def __subclasscheck__(cls, sub):
        return issubclass(sub, cls._real())


class CloudError(Exception):
    """A Google answer other than OK, with what the rich status says; raised as one of the classes below."""

    def __init__(self, code: str, message: str, *, reason: str = "", metadata: dict | None = None,
                 violations: list[str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.violations = violations or []
        # For a SERVICE_DISABLED remedy: the quota project the call named, and the project numbers known (id ->
        # number), since Google names the consumer project by number.
        self.quota_project = ""
        self.project_numbers: dict[str, str] = {}

    @property
    def transient(self) -> bool:
        return isinstance(self, Transient)

    @property
    def no_answer(self) -> bool:
        """Nothing answered (refused or timed-out connection, unknown host), rather than Google refusing."""
        if not isinstance(self, Transient) or self.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return False
        text = self.message.lower()
        return any(h in text for h in _NO_ANSWER)

    @property
    def permission(self) -> str:
        return self.metadata.get("permission", "")

    @property
    def service_disabled(self) -> bool:
        """The API the call needs is disabled in the project (`metadata["service"]` names it)."""
        return self.reason == "SERVICE_DISABLED"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFound(CloudError):
    pass


class AlreadyExists(CloudError):
    pass


class Aborted(CloudError):
    """A concurrent change won (an etag conflict): read again, then write again."""


class FailedPrecondition(CloudError):
    pass


class PermissionDenied(CloudError):
    pass


class InvalidArgument(CloudError):
    pass


class Unauthenticated(CloudError):
    pass


class Transient(CloudError):
    """Worth the same call again a moment later (Google busy, overloaded, or not answering yet)."""


class Unreachable(CloudError):
    """Google did not answer for GIVE_UP_S: already waited for, so never retried again."""


_CLASSES = {"NOT_FOUND": NotFound, "ALREADY_EXISTS": AlreadyExists, "ABORTED": Aborted,
            "FAILED_PRECONDITION": FailedPrecondition, "PERMISSION_DENIED": PermissionDenied,
            "INVALID_ARGUMENT": InvalidArgument, "UNAUTHENTICATED": Unauthenticated}


def error(code: str, message: str, **kw) -> CloudError:
    """The CloudError of Google's status `code`, as its class."""
    cls = Transient if code in TRANSIENT else _CLASSES.get(code, CloudError)
    return cls(code, message, **kw)


class NoCredentials(Exception):
    pass


@dataclass
class Account:
    email: str
    unique_id: str
    disabled: bool
    display_name: str = ""
    description: str = ""


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


@dataclass
class QuotaPreference:
    name: str
    service: str
    quota_id: str
    region: str
    preferred: int
    granted: int
    reconciling: bool  # pending Google's review
    etag: str
    state_detail: str = ""


def _preference(q) -> QuotaPreference:
    c = q.quota_config
    return QuotaPreference(q.name, q.service, q.quota_id, dict(q.dimensions).get("region", ""),
                           int(c.preferred_value), int(c.granted_value), bool(q.reconciling), q.etag, c.state_detail)


def _convert(exc: BaseException) -> CloudError:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.grpc_status_code.name if exc.grpc_status_code is not None else str(exc.code)
        text = str(exc.message or "")
        if code == "UNAVAILABLE" and "metadata from plugin" in text and not any(h in text.lower() for h in _NO_ANSWER):
            # The credentials were refused while a call was being made.
            return Unauthenticated("UNAUTHENTICATED", "Google refused the credentials.")
        violations = []
        for d in exc.details or []:
            for v in getattr(d, "violations", []) or []:
                if getattr(v, "type", ""):
                    violations.append(v.type)
        return error(code, exc.message or str(exc), reason=exc.reason or "",
                     metadata=dict(exc.metadata or {}), violations=violations)
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause
        if isinstance(cause, gexc.GoogleAPICallError) and "metadata from plugin" in str(cause.message):
            # The credentials were refused while a call was being made; the client retried that in vain.
            return Unauthenticated("UNAUTHENTICATED", "Google refused the credentials.")
        return _convert(cause) if cause is not None else Transient("DEADLINE_EXCEEDED", str(exc))
    if isinstance(exc, aexc.RefreshError):
        return Unauthenticated("UNAUTHENTICATED", f"Google refused the credentials: {_first_line(exc)}")
    if isinstance(exc, aexc.TransportError):
        return Transient("UNAVAILABLE", f"Could not reach Google's token service: {_first_line(exc)}")
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


# Per call: no silent retries inside the client library (a closed port would be retried for a minute
# per call without a word); `Google._read` retries reads instead, and says so.
_CALL = {"retry": None, "timeout": READ_TIMEOUT_S}
# Writes: the library would repeat some of them (a key deletion) on its own; see the module docstring.
_WRITE = {"retry": None}


class Reachability:
    """Since when a service has not answered at all (shared by concurrent calls), and telling the user so."""

    def __init__(self, who: str = "Google"):
        self.who = who
        self._lock = threading.Lock()
        self.since: float | None = None
        self._told = 0.0

    def answered(self) -> None:
        self.since = None

    def silent(self, started: float, where: str, notify) -> float:
        """Records a call that got no answer; answers how long Google has been silent."""
        now = retry.now()
        with self._lock:
            if self.since is None or started < self.since:
                self.since = started
            so_far = now - self.since
            tell = notify is not None and so_far >= NOTICE_AFTER_S and now - self._told >= NOTICE_EVERY_S
            if tell:
                self._told = now
        if tell:
            notify(f"{self.who} is not answering at {where} yet; retrying ({int(so_far)} s so far)…")
        return so_far


def unreachable(where: str, so_far: float, proxy: bool = True) -> CloudError:
    """The error of a Google that did not answer for GIVE_UP_S."""
    hint = ("check your network connection and proxy settings (HTTPS_PROXY, NO_PROXY)" if proxy
            else "check your network connection")
    override = f" and {ENDPOINT_VAR}" if os.environ.get(ENDPOINT_VAR) else ""
    return Unreachable("UNAVAILABLE", f"Google did not answer at {where} for {int(so_far)} s: {hint}{override}, "
                      "then run again.", reason=UNREACHABLE, metadata={"endpoint": where})


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
        # Hears one line now and then while Google does not answer (None: silent).
        self.notify = None
        self._reach = Reachability()
        self._numbers: dict[str, str] = {}  # project id -> number, as get_project learnt them
        self._under_way: dict[tuple, list] = {}  # reads being made now, shared by whoever asks meanwhile
        self._under_way_lock = threading.Lock()

    @property
    def where(self) -> str:
        """Where the calls go, for messages."""
        if self.endpoint:
            return self.endpoint
        return getattr(client_class(*_CLIENTS["projects"]), "DEFAULT_ENDPOINT", None) or "googleapis.com"

    @contextlib.contextmanager
    def _calling(self):
        """One call: Google's errors as CloudError; a Google that does not answer is tracked, told and,
        after GIVE_UP_S, given up on."""
        started = retry.now()
        try:
            with _google_errors():
                yield
        except CloudError as e:
            if e.service_disabled or e.reason == "USER_PROJECT_DENIED":
                e.quota_project = getattr(self.credentials, "quota_project_id", None) or ""
                e.project_numbers = self._numbers  # filled in by then when read together with the project
            if e.no_answer:
                so_far = self._reach.silent(started, self.where, self.notify)
                if so_far >= GIVE_UP_S:
                    raise unreachable(self.where, so_far) from None
            raise
        self._reach.answered()

    def _read(self, call):
        """An idempotent read, retried under the retry policy while Google answers a transient error, or while
        it does not answer at all (up to GIVE_UP_S, saying so). The error given up on is marked `retried`:
        nobody retries that read again.
        """
        def once():
            with self._calling():
                return call()

        return retry.current().call(once, lambda e: isinstance(e, Transient),
                                    unbounded=lambda e: isinstance(e, CloudError) and e.no_answer)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_environment(cls) -> Google:
        """Application Default Credentials, and the endpoint override if set."""
        import google.auth
        from google.auth import exceptions as aexc

        # google-auth's warning about user credentials without a quota project (with a file path):
        # use_quota_project() sets one and says so in one sentence instead. For the whole process, not in
        # warnings.catch_warnings(): that swaps the filters of every thread, and a filter another thread adds
        # meanwhile (requests silencing urllib3's DependencyWarning as it is imported) would be lost.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"google\.auth")
        try:
            creds, _ = google.auth.default(scopes=SCOPES)
        except aexc.DefaultCredentialsError as e:
            raise NoCredentials(_first_line(e)) from None
        principal = getattr(creds, "service_account_email", "") or ""
        target = impersonation_target()
        if target:
            creds, principal = _impersonating(creds, target), target
        return cls(creds, os.environ.get(ENDPOINT_VAR) or None, principal)

    @classmethod
    def from_key(cls, keyfile: dict, endpoint: str | None = None) -> Google:
        from google.oauth2 import service_account

        from coiled_setup.keyfile import signer

        make = getattr(service_account.Credentials, "_from_signer_and_info", None)
        if make is not None and all(keyfile.get(f) for f in ("private_key", "client_email", "token_uri")):
            # The signer the key file's checks loaded (google-auth would load the key again, ~35 ms).
            creds = make(signer(keyfile["private_key"], keyfile.get("private_key_id")), keyfile, scopes=SCOPES)
        else:
            creds = service_account.Credentials.from_service_account_info(keyfile, scopes=SCOPES)
        return cls(creds, endpoint if endpoint is not None else os.environ.get(ENDPOINT_VAR) or None,
                   keyfile.get("client_email", ""))

    def use_quota_project(self, project: str) -> str:
        """User credentials need a quota project for APIs such as Service Usage: the ADC file's quota_project_id or
        GOOGLE_CLOUD_QUOTA_PROJECT (google-auth reads both), else the target project. Answers the project this
        method chose ("" when the credentials had one, or are not a user's)."""
        from google.oauth2 import credentials as user

        creds = self.credentials
        if not isinstance(creds, user.Credentials) or creds.quota_project_id or not project:
            return ""
        self.credentials = creds.with_quota_project(os.environ.get("GOOGLE_CLOUD_QUOTA_PROJECT") or project)
        self.close()  # clients and channel are rebuilt with the new credentials
        return "" if os.environ.get("GOOGLE_CLOUD_QUOTA_PROJECT") else project

    def _make(self, name: str):
        with self._lock:
            if name in self._clients:
                return self._clients[name]
            cls = client_class(*_CLIENTS[name])
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

    @property
    def quotas(self):
        return self._make("quotas")

    # -- projects and permissions --------------------------------------------------------------
    def get_project(self, project: str) -> Project:
        p = self._read(lambda: self.projects.get_project(name=f"projects/{project}", **_CALL))
        self._numbers[p.project_id] = p.name.split("/", 1)[1]
        return Project(p.project_id, p.name.split("/", 1)[1], type(p).State(p.state).name)

    def test_permissions(self, resource: str, permissions: list[str], *, repository: bool = False) -> set[str]:
        """Which of `permissions` the principal holds on a project (or repository), batched as Google requires."""
        batches = [permissions[i:i + MAX_TEST_PERMISSIONS] for i in range(0, len(permissions), MAX_TEST_PERMISSIONS)]
        client = self.registry if repository else self.projects
        name = resource if repository else f"projects/{resource}"

        def one(batch):
            return self._read(lambda: client.test_iam_permissions(
                request={"resource": name, "permissions": batch}, **_CALL)).permissions

        held: set[str] = set()
        for result in run_all([lambda b=b: one(b) for b in batches]):
            held.update(result)
        return held

    def get_policy(self, project: str) -> Policy:
        """The project's policy (a value: nobody changes it in place). Callers asking at the same time (the refusal
        of a privileged account and the bindings' observations) share one read."""
        return self._shared(("policy", project), lambda: _policy_from_pb(self._read(
            lambda: self.projects.get_iam_policy(
                request={"resource": f"projects/{project}", "options": {"requested_policy_version": 3}}, **_CALL))))

    def _shared(self, key: tuple, read):
        """read(), or the answer of the same read already under way: asked at the same time, its answer is as fresh
        as a read of one's own (an answer is never kept for later)."""
        with self._under_way_lock:
            waiting_for = self._under_way.get(key)
            if waiting_for is None:
                self._under_way[key] = box = [threading.Event(), None, None]
        if waiting_for is not None:
            waiting_for[0].wait()
            if waiting_for[2] is not None:
                raise waiting_for[2]
            return waiting_for[1]
        try:
            box[1] = read()
            return box[1]
        except BaseException as e:
            box[2] = e
            raise
        finally:
            with self._under_way_lock:
                self._under_way.pop(key, None)
            box[0].set()

    def set_policy(self, project: str, policy: Policy) -> Policy:
        with self._calling():
            pb = self.projects.set_iam_policy(
                request={"resource": f"projects/{project}", "policy": _policy_to_pb(policy)}, **_WRITE
            )
        return _policy_from_pb(pb)

    # -- service usage ------------------------------------------------------------------------------
    def service_enabled(self, project: str, service: str) -> bool:
        s = self._read(lambda: self.usage.get_service(
            request={"name": f"projects/{project}/services/{service}"}, **_CALL))
        return s.state == types_module("service_usage_v1").State.ENABLED

    def services_enabled(self, project: str, services: list[str]) -> dict[str, bool]:
        """Which of `services` are on, in one BatchGetServices call (Google takes up to 30 names)."""
        State = types_module("service_usage_v1").State
        answer = self._read(lambda: self.usage.batch_get_services(request={
            "parent": f"projects/{project}", "names": [f"projects/{project}/services/{s}" for s in services]},
            **_CALL))
        # Google names them by project number: match on the service's own name.
        on = {s.config.name or s.name.rsplit("/", 1)[-1]: s.state == State.ENABLED for s in answer.services}
        return {s: on.get(s, False) for s in services}

    def start_enable(self, project: str, services: list[str]) -> str:
        """Starts enabling; answers the operation name (done already when nothing was to do)."""
        with self._calling():
            op = self.usage.batch_enable_services(
                request={"parent": f"projects/{project}", "service_ids": services}, **_WRITE
            )
        # The answer itself says whether it is done: op.done() would make another, unguarded call.
        return op.operation.name if not op.operation.done else ""

    def operation_done(self, client: str, name: str) -> bool:
        """Polls an operation once; raises its error when it failed."""
        transport = (self.registry if client == "registry" else self.usage).transport
        op = self._read(lambda: transport.operations_client.get_operation(name, **_CALL))
        if op.done and op.HasField("error"):
            raise error(_code_name(op.error.code), op.error.message)
        return bool(op.done)

    # -- service accounts and keys ----------------------------------------------------------------
    def get_account(self, email: str) -> Account | None:
        try:
            a = self._read(lambda: self.iam.get_service_account(
                name=f"projects/-/serviceAccounts/{email}", **_CALL))
        except NotFound:
            return None
        return Account(a.email, a.unique_id, a.disabled, a.display_name, a.description)

    def list_accounts(self, project: str) -> list[Account]:
        # The largest page Google serves: one round trip for most projects instead of one per 20 accounts.
        return self._read(lambda: [Account(a.email, a.unique_id, a.disabled, a.display_name)
                                   for a in self.iam.list_service_accounts(
                                       request={"name": f"projects/{project}", "page_size": 100}, **_CALL)])

    def create_account(self, project: str, account_id: str, display_name: str, description: str = "") -> Account:
        with self._calling():
            a = self.iam.create_service_account(
                name=f"projects/{project}",
                account_id=account_id,
                service_account={"display_name": display_name, "description": description}, **_WRITE
            )
        return Account(a.email, a.unique_id, a.disabled, a.display_name)

    def delete_account(self, email: str) -> None:
        """Deletes the account (and its keys); its bindings stay, shown as deleted:serviceAccount:...?uid=..."""
        with self._calling():
            self.iam.delete_service_account(name=f"projects/-/serviceAccounts/{email}")

    def list_user_keys(self, email: str) -> list[Key]:
        resp = self._read(lambda: self.iam.list_service_account_keys(
            request={"name": f"projects/-/serviceAccounts/{email}", "key_types": [1]}, **_CALL  # USER_MANAGED
        ))
        return [Key(k.name.rsplit("/", 1)[1], k.valid_after_time.timestamp(), k.disabled) for k in resp.keys]

    def create_key(self, email: str) -> dict:
        """A new key; answers the key file (the only copy of its private half)."""
        import json

        with self._calling():
            k = self.iam.create_service_account_key(name=f"projects/-/serviceAccounts/{email}", **_WRITE)
        return json.loads(k.private_key_data)

    def delete_key(self, email: str, key_id: str) -> None:
        with self._calling():
            self.iam.delete_service_account_key(name=f"projects/-/serviceAccounts/{email}/keys/{key_id}",
                                                **_WRITE)

    # -- roles -------------------------------------------------------------------------------------
    def get_role(self, name: str) -> Role | None:
        try:
            return _role(self._read(lambda: self.iam.get_role(request={"name": name}, **_CALL)))
        except NotFound:
            return None

    def create_role(self, project: str, role_id: str, title: str, description: str, permissions: list[str],
                    stage: str) -> Role:
        with self._calling():
            r = self.iam.create_role(request={
                "parent": f"projects/{project}",
                "role_id": role_id,
                "role": {"title": title, "description": description, "included_permissions": permissions,
                         "stage": stage},
            }, **_WRITE)
        return _role(r)

    def update_role(self, name: str, etag: bytes, title: str, description: str, permissions: list[str],
                    stage: str) -> Role:
        with self._calling():
            r = self.iam.update_role(request={
                "name": name,
                "role": {"title": title, "description": description, "included_permissions": permissions,
                         "stage": stage, "etag": etag},
                "update_mask": {"paths": ["title", "description", "included_permissions", "stage"]},
            }, **_WRITE)
        return _role(r)

    def undelete_role(self, name: str, etag: bytes) -> Role:
        with self._calling():
            return _role(self.iam.undelete_role(request={"name": name, "etag": etag}, **_WRITE))

    def delete_role(self, name: str, etag: bytes) -> Role:
        """Soft-deletes a custom role: undeletable for 7 days, its id reserved for up to 37."""
        with self._calling():
            return _role(self.iam.delete_role(request={"name": name, "etag": etag}))

    # -- artifact registry ---------------------------------------------------------------------------
    def get_repository(self, name: str) -> str | None:
        """The repository's format, or None when there is none."""
        try:
            r = self._read(lambda: self.registry.get_repository(name=name, **_CALL))
        except NotFound:
            return None
        return type(r).Format(r.format_).name

    def start_create_repository(self, project: str, location: str, repo_id: str, description: str) -> str:
        Repository = types_module("artifactregistry_v1").Repository

        with self._calling():
            op = self.registry.create_repository(
                parent=f"projects/{project}/locations/{location}",
                repository_id=repo_id,
                repository={"format_": Repository.Format.DOCKER, "description": description}, **_WRITE
            )
        # Done in its answer (a failure too): nothing to poll ("" as from start_enable).
        if op.operation.done:
            if op.operation.HasField("error"):
                raise error(_code_name(op.operation.error.code), op.operation.error.message)
            return ""
        return op.operation.name

    def start_delete_repository(self, name: str) -> str:
        with self._calling():
            op = self.registry.delete_repository(name=name)
        return op.operation.name

    def get_repo_policy(self, name: str) -> Policy:
        pb = self._read(lambda: self.registry.get_iam_policy(
            request={"resource": name, "options": {"requested_policy_version": 3}}, **_CALL
        ))
        return _policy_from_pb(pb)

    def set_repo_policy(self, name: str, policy: Policy) -> Policy:
        with self._calling():
            pb = self.registry.set_iam_policy(request={"resource": name, "policy": _policy_to_pb(policy)},
                                              **_WRITE)
        return _policy_from_pb(pb)

    # -- organization policies ---------------------------------------------------------------------------
    def effective_org_policy(self, project: str, constraint: str) -> list[dict]:
        """The rules in force on the project for a constraint (Org Policy v2), as plain data: {"enforce": bool},
        {"allow_all": True}, {"deny_all": True} or {"allowed_values": [...], "denied_values": [...]}."""
        client = self._make("orgpolicy")
        pb = self._read(lambda: client.get_effective_policy(name=f"projects/{project}/policies/{constraint}", **_CALL))
        rules = []
        for r in pb.spec.rules:
            kind = type(r).pb(r).WhichOneof("kind")
            if kind == "enforce":
                rules.append({"enforce": r.enforce})
            elif kind in ("allow_all", "deny_all"):
                rules.append({kind: True})
            elif kind == "values":
                rules.append({"allowed_values": list(r.values.allowed_values),
                              "denied_values": list(r.values.denied_values)})
        return rules

    def project_org_policy(self, project: str, constraint: str) -> dict | None:
        """The project's own policy for a constraint, as Org Policy v2 JSON (etag included); None when it has none."""
        OrgPolicy = types_module("orgpolicy_v2").Policy

        client = self._make("orgpolicy")
        try:
            pb = self._read(lambda: client.get_policy(name=f"projects/{project}/policies/{constraint}", **_CALL))
        except NotFound:
            return None
        return json.loads(OrgPolicy.to_json(pb))

    def put_project_org_policy(self, project: str, policy: dict, *, exists: bool) -> dict:
        """Creates the project's policy, or updates it (with the etag `policy` carries); answers what Google holds."""
        OrgPolicy = types_module("orgpolicy_v2").Policy

        client = self._make("orgpolicy")
        pb = OrgPolicy.from_json(json.dumps(policy), ignore_unknown_fields=True)
        with self._calling():
            if exists:
                answer = client.update_policy(policy=pb, **_WRITE)
            else:
                answer = client.create_policy(parent=f"projects/{project}", policy=pb, **_WRITE)
        return json.loads(OrgPolicy.to_json(answer))

    def delete_project_org_policy(self, project: str, constraint: str, etag: str) -> None:
        client = self._make("orgpolicy")
        with self._calling():
            client.delete_policy(request={"name": f"projects/{project}/policies/{constraint}", "etag": etag}, **_WRITE)

    # -- cloud quotas ---------------------------------------------------------------------------------
    def quota_limits(self, project: str, service: str, quota_id: str, regions) -> dict[str, int]:
        """The quota's limit in each region (its own entry, else the one for every other region), from one QuotaInfo:
        it holds every region's. -1: unlimited."""
        info = self._read(lambda: self.quotas.get_quota_info(
            name=f"projects/{project}/locations/global/services/{service}/quotaInfos/{quota_id}", **_CALL))
        fallback, own = -1, {}
        for d in info.dimensions_infos:
            dims = dict(d.dimensions)
            if "region" in dims:
                own.setdefault(dims["region"], int(d.details.value))
            elif not dims:
                fallback = int(d.details.value)
        return {r: own.get(r, fallback) for r in regions}

    def list_quota_preferences(self, project: str) -> list[QuotaPreference]:
        return self._read(lambda: [_preference(q) for q in self.quotas.list_quota_preferences(
            request={"parent": f"projects/{project}/locations/global", "page_size": 100}, **_CALL)])

    def create_quota_preference(self, project: str, pref_id: str, service: str, quota_id: str, region: str,
                                value: int, email: str, justification: str) -> QuotaPreference:
        with self._calling():
            q = self.quotas.create_quota_preference(request={
                "parent": f"projects/{project}/locations/global", "quota_preference_id": pref_id,
                "quota_preference": {"service": service, "quota_id": quota_id, "dimensions": {"region": region},
                                     "quota_config": {"preferred_value": value}, "contact_email": email,
                                     "justification": justification}})
        return _preference(q)

    def update_quota_preference(self, pref: QuotaPreference, value: int, email: str,
                                justification: str) -> QuotaPreference:
        with self._calling():
            q = self.quotas.update_quota_preference(request={"quota_preference": {
                "name": pref.name, "etag": pref.etag, "service": pref.service, "quota_id": pref.quota_id,
                "dimensions": {"region": pref.region}, "quota_config": {"preferred_value": value},
                "contact_email": email, "justification": justification}})
        return _preference(q)

    # -- credentials and connection ---------------------------------------------------------------------
    def wait_reachable(self) -> None:
        """Waits until Google's endpoint takes a connection, saying so while it does not, for up to GIVE_UP_S.

        One connection up front: a Google that does not answer is told within a second or two, not after
        every call of a run has been retried in vain."""
        import grpc

        channel = self._local_channel() if self.endpoint else self.projects.transport.grpc_channel
        ready = grpc.channel_ready_future(channel)
        started = retry.now()
        try:
            while True:
                try:
                    ready.result(timeout=NOTICE_AFTER_S)
                    self._reach.answered()
                    return
                except grpc.FutureTimeoutError:
                    so_far = self._reach.silent(started, self.where, self.notify)
                    if so_far >= GIVE_UP_S:
                        raise unreachable(self.where, so_far) from None
        finally:
            ready.cancel()

    def authenticate(self) -> None:
        """Fetches a token now, so refused credentials surface once, as Unauthenticated.

        While the token service does not answer, retries (saying so) for up to GIVE_UP_S.
        """
        from google.auth import exceptions as aexc
        from google.auth.transport.requests import Request

        class Bounded(Request):  # google-auth waits 120 s for a token by default
            def __call__(self, *args, **kwargs):
                kwargs["timeout"] = TOKEN_TIMEOUT_S
                return super().__call__(*args, **kwargs)

        where = _host(getattr(self.credentials, "_token_uri", "") or "") or "Google's token service"
        reach = Reachability()
        policy = retry.current()
        delays = policy.delays(first=0.2, cap=2.0)
        while True:
            started = policy.clock()
            try:
                self.credentials.refresh(Bounded())
                return
            except aexc.TransportError:
                so_far = reach.silent(started, where, self.notify)
                if so_far >= GIVE_UP_S:
                    raise unreachable(where, so_far) from None
            except aexc.RefreshError as e:
                if "impersonated" in str(e).lower():
                    raise error("UNAUTHENTICATED", _first_line(e), reason="IMPERSONATION",
                                metadata={"target": self.principal}) from None
                raise _convert(e) from None
            policy.sleep(next(delays))


IMPERSONATE_VAR = "CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT"  # gcloud's, as --impersonate-service-account sets it


def impersonation_target() -> str:
    """The account to act as: the variable, else gcloud's auth/impersonate_service_account property."""
    from coiled_setup import context

    return os.environ.get(IMPERSONATE_VAR) or context.gcloud_property("auth", "impersonate_service_account") or ""


def _impersonating(source, target: str):
    """Credentials of `target` through IAM Credentials generateAccessToken, called with `source`."""
    from google.auth import impersonated_credentials

    override = None
    if os.environ.get(ENDPOINT_VAR):
        # A local endpoint serves IAM Credentials beside the token endpoint its keys name.
        base = getattr(source, "_token_uri", "") or ""
        override = f"{base.rsplit('/', 1)[0]}/v1/projects/-/serviceAccounts/{target}:generateAccessToken"
    return impersonated_credentials.Credentials(source_credentials=source, target_principal=target,
                                                target_scopes=SCOPES, iam_endpoint_override=override)


def _host(url: str) -> str:
    import urllib.parse

    return urllib.parse.urlsplit(url).netloc if "//" in url else url


def _code_name(code: int) -> str:
    import grpc

    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return "UNKNOWN"


def _log_calls(cls):
    """Each call of the adapter gets a line in the call log (--verbose, --log-file)."""
    from coiled_setup import calllog

    not_calls = {"where", "from_environment", "from_key", "use_quota_project", "close", "iam", "projects", "usage",
                 "registry"}
    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and name not in not_calls and callable(fn) and not isinstance(fn, type):
            setattr(cls, name, calllog.logged("google", name, fn))
    return cls


_log_calls(Google)
