"""The sandbox's whole state: projects, accounts, keys, roles, policies, repositories, Coiled."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.roles import PREDEFINED_ROLES, grants

SA_DOMAIN = "iam.gserviceaccount.com"
ACCOUNT_ID_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
ROLE_ID_RE = re.compile(r"^[a-zA-Z0-9_.]{3,64}$")
REPO_ID_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
PERMISSION_RE = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2,}$")
MEMBER_PREFIXES = ("user:", "serviceAccount:", "group:", "domain:", "principal:", "principalSet:", "deleted:")
MAX_USER_KEYS = 10
# Artifact Registry's regional locations (multi-regions "us", "europe", "asia" too).
AR_LOCATIONS = {
    "us", "europe", "asia", "us-central1", "us-east1", "us-east4", "us-east5", "us-south1",
    "us-west1", "us-west2", "us-west3", "us-west4", "northamerica-northeast1",
    "northamerica-northeast2", "southamerica-east1", "europe-west1", "europe-west2",
    "europe-west3", "europe-west4", "europe-west6", "europe-north1", "europe-central2",
    "asia-east1", "asia-east2", "asia-northeast1", "asia-south1", "asia-southeast1",
    "australia-southeast1",
}
DEFAULT_SERVICES = [
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "serviceusage.googleapis.com",
    "compute.googleapis.com",
    "logging.googleapis.com",
    # On in every new project, as Google has it (so are a few more the product never asks about).
    "monitoring.googleapis.com",
    "bigquery.googleapis.com",
]
SERVICE_TITLES = {
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "serviceusage.googleapis.com": "Service Usage API",
    "compute.googleapis.com": "Compute Engine API",
    "logging.googleapis.com": "Cloud Logging API",
    "monitoring.googleapis.com": "Cloud Monitoring API",
    "bigquery.googleapis.com": "BigQuery API",
    "orgpolicy.googleapis.com": "Organization Policy API",
    "cloudquotas.googleapis.com": "Cloud Quotas API",
}
# What a new project gets in every region (Compute Engine's regional quotas), and what Google grants at once.
DEFAULT_QUOTAS = {"CPUS-per-project-region": 24, "SSD-TOTAL-GB-per-project-region": 500,
                  "IN-USE-ADDRESSES-per-project-region": 8}
DEFAULT_GRANT_UP_TO = {"CPUS-per-project-region": 100, "SSD-TOTAL-GB-per-project-region": 2048,
                       "IN-USE-ADDRESSES-per-project-region": 32}


def _etag(counter: int, salt: str) -> bytes:
    return hashlib.sha1(f"{salt}:{counter}".encode()).digest()[:8]


@dataclass
class Binding:
    role: str
    members: list[str]
    condition: dict | None = None  # {"title", "description", "expression"}

    def key(self) -> tuple:
        c = self.condition
        return (self.role, json.dumps(c, sort_keys=True) if c else "")


@dataclass
class Policy:
    """An IAM policy and, per (role, condition, member), when it starts to take effect."""

    salt: str
    version: int = 1
    bindings: list[Binding] = field(default_factory=list)
    counter: int = 0
    effective_at: dict[tuple, float] = field(default_factory=dict)
    audit_configs: list[dict] = field(default_factory=list)  # as google.iam.v1.AuditConfig in JSON form

    @property
    def etag(self) -> bytes:
        return _etag(self.counter, self.salt)

    def grants_to(self, member: str, now: float) -> list[str]:
        """Roles that `member` holds without a condition, already propagated."""
        out = []
        for b in self.bindings:
            if b.condition or member not in b.members:
                continue
            if self.effective_at.get(b.key() + (member,), 0.0) <= now:
                out.append(b.role)
        return out

    def replace(self, version: int, bindings: list[Binding], now: float, delay: float) -> None:
        old = {b.key() + (m,) for b in self.bindings for m in b.members}
        eff = {}
        for b in bindings:
            for m in b.members:
                k = b.key() + (m,)
                eff[k] = self.effective_at.get(k, 0.0) if k in old else now + delay
        self.version = version
        self.bindings = bindings
        self.effective_at = eff
        self.counter += 1

    def rename_member(self, old: str, new: str) -> None:
        """Renames a principal everywhere in the policy (as Google marks a deleted account)."""
        for b in self.bindings:
            if old in b.members:
                b.members = [new if m == old else m for m in b.members]
        self.effective_at = {
            (k[:-1] + (new,) if k[-1] == old else k): t for k, t in self.effective_at.items()
        }


@dataclass
class Project:
    project_id: str
    number: str
    billing: bool = True
    state: str = "ACTIVE"
    key_creation_disabled: bool = False
    # Org Policy v2 policies set on the project itself: constraint -> {"spec", "etag", "counter"}
    org_policies: dict[str, dict] = field(default_factory=dict)
    # service -> monotonic time it became (or becomes) enabled; absent = disabled
    services: dict[str, float] = field(default_factory=dict)
    policy: Policy = None  # type: ignore[assignment]
    # Cloud Quotas: quota id -> region ("" for every other region) -> limit; preferences by full name.
    quotas: dict[str, dict[str, int]] = field(default_factory=dict)
    quota_preferences: dict[str, dict] = field(default_factory=dict)
    # A preference up to this value is granted at once; above it, it waits for review (quota id -> value).
    quota_grant_up_to: dict[str, int] = field(default_factory=dict)


@dataclass
class ServiceAccount:
    project_id: str
    account_id: str
    unique_id: str
    display_name: str = ""
    description: str = ""
    disabled: bool = False
    created_at: float = 0.0  # monotonic

    @property
    def email(self) -> str:
        return f"{self.account_id}@{self.project_id}.{SA_DOMAIN}"

    @property
    def name(self) -> str:
        return f"projects/{self.project_id}/serviceAccounts/{self.email}"


@dataclass
class Key:
    key_id: str
    email: str
    public_pem: bytes
    key_type: str  # USER_MANAGED / SYSTEM_MANAGED
    created: float  # wall clock
    disabled: bool = False
    issued_at: float = float("-inf")  # monotonic; -inf: long settled (scenario, saved world)


@dataclass
class Role:
    name: str
    title: str = ""
    description: str = ""
    permissions: list[str] = field(default_factory=list)
    stage: str = "GA"
    deleted: bool = False
    counter: int = 0
    # Deleted more than 7 days ago: gone from every read, its id still reserved (up to 37 days in all).
    purged: bool = False

    @property
    def etag(self) -> bytes:
        return _etag(self.counter, self.name)


@dataclass
class Repository:
    name: str
    format: str
    description: str
    created: float  # wall clock
    ready_at: float  # monotonic: visible once its creation finished
    policy: Policy = None  # type: ignore[assignment]


@dataclass
class Operation:
    name: str
    done_at: float
    kind: str  # "enable", "batch_enable", "create_repository"
    payload: dict
    error: errors.ApiError | None = None


@dataclass
class Config:
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    # Only these methods fail at `fault_rate` (gRPC names such as "SetIamPolicy", or Coiled's "POST /api/...");
    # empty: every call may.
    fault_methods: tuple[str, ...] = ()
    seed: int = 0
    propagation_delay_s: float = 0.0
    operation_s: float = 0.2
    infra_s: float = 0.3
    # Crash tests: the answer to a successful call of this method is held back this long,
    # after the change is made and recorded, so a client can be killed in between.
    hold_method: str = ""
    hold_s: float = 0.0
    # Crash tests: the answer to the N-th recorded call (Google or Coiled, whatever its outcome) is held
    # back `hold_s` the same way, so a client can be killed at any point of a run (0: none).
    hold_call: int = 0
    # Retry tests: the next `fail_times` calls of this method fail with `fail_code`, changing nothing.
    fail_method: str = ""
    fail_code: str = "FAILED_PRECONDITION"
    fail_times: int = 0
    # Keys, as Google: a new key is refused at the token endpoint (invalid_grant "Invalid JWT Signature.") for this
    # long, and ListServiceAccountKeys lags this long behind a new key (not listed) or a deleted one (still listed).
    key_usable_s: float = 0.0
    key_list_lag_s: float = 0.0
    # Coiled's confirmations: a write to one of these routes ("POST /api/v2/cloud-credentials/{ws}/gcp") is
    # answered 409 {"action_required": "confirm", "detail": <value>} until repeated with ?confirm=1.
    coiled_confirm: dict = field(default_factory=dict)
    # The next N calls of a route are answered 409 {"action_required": "retry"} ({route: N}).
    coiled_retry: dict = field(default_factory=dict)


class World:
    """All sandbox state behind one lock; handlers take `lock` for each call."""

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.projects: dict[str, Project] = {}
        self.accounts: dict[str, ServiceAccount] = {}  # by email
        self.keys: dict[str, Key] = {}  # by key id
        self.deleted_keys: dict[str, tuple[Key, float]] = {}  # by key id: (key, monotonic time deleted)
        self.roles: dict[str, Role] = {}  # by full name
        self.repositories: dict[str, Repository] = {}
        self.operations: dict[str, Operation] = {}
        # Long-running operations that end in error: {"method", "code", "message", "times"} (scenario).
        self.operation_errors: list[dict] = []
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (email, expiry wall)
        self.calls: list[dict] = []
        # Connections the HTTP server (Coiled's routes, the token route) accepted: a client that keeps its
        # connections open makes fewer than it makes calls.
        self.http_connections = 0
        self.coiled = CoiledState()
        # The organization every project inherits from: {"id", "customer_id", "domain", "policies"} (scenario).
        self.organization: dict = {}
        # API hosts a VPC Service Controls perimeter refuses this machine's calls to.
        self.perimeter: list[str] = []
        self.token_uri = "http://127.0.0.1:0/token"
        self._rng = random.Random(self.config.seed)
        self._ids = itertools.count(1)
        self._unique = random.Random(self.config.seed + 1)

    # -- clock and randomness -------------------------------------------------
    @staticmethod
    def now() -> float:
        return time.monotonic()

    def draw_fault(self) -> float:
        with self.lock:
            return self._rng.random()

    def faults(self, method: str) -> bool:
        """Whether this call of `method` is to fail transiently (draws only for the methods that may)."""
        cfg = self.config
        if not cfg.fault_rate or (cfg.fault_methods and method not in cfg.fault_methods):
            return False
        return self.draw_fault() < cfg.fault_rate

    def pick(self, options: list):
        with self.lock:
            return self._rng.choice(options)

    def new_unique_id(self) -> str:
        return str(10**20 + self._unique.randrange(10**20))

    # -- projects ----------------------------------------------------------------
    def add_project(self, project_id: str, number: str | None = None, **kw) -> Project:
        number = number or str(100000000000 + len(self.projects) * 7919 + 17)
        p = Project(project_id=project_id, number=number, **kw)
        p.policy = Policy(salt=f"projects/{project_id}")
        self.projects[project_id] = p
        return p

    def project(self, ref: str) -> Project | None:
        """A project by id or number."""
        if ref in self.projects:
            return self.projects[ref]
        for p in self.projects.values():
            if p.number == ref:
                return p
        return None

    def service_enabled(self, project: Project, service: str, *, settled: bool = False) -> bool:
        t = project.services.get(service)
        if t is None:
            return False
        lag = self.config.propagation_delay_s / 2 if settled else 0.0
        return self.now() >= t + lag

    # -- accounts and keys ---------------------------------------------------------
    def add_account(self, project_id: str, account_id: str, *, display_name="", description="",
                    disabled=False, settled=True) -> ServiceAccount:
        sa = ServiceAccount(
            project_id=project_id,
            account_id=account_id,
            unique_id=self.new_unique_id(),
            display_name=display_name,
            description=description,
            disabled=disabled,
            created_at=(self.now() - 10**6) if settled else self.now(),
        )
        self.accounts[sa.email] = sa
        # Google keeps a system-managed key per account; it is listed beside user keys.
        self.add_system_key(sa.email)
        return sa

    def add_system_key(self, email: str) -> Key:
        kid = secrets.token_hex(20)
        self.keys[kid] = Key(kid, email, b"", "SYSTEM_MANAGED", time.time())
        return self.keys[kid]

    def account(self, ref: str) -> ServiceAccount | None:
        """An account by email or unique id."""
        if ref in self.accounts:
            return self.accounts[ref]
        for sa in self.accounts.values():
            if sa.unique_id == ref:
                return sa
        return None

    def account_age(self, sa: ServiceAccount) -> float:
        return self.now() - sa.created_at

    def listed_keys(self, email: str) -> list[Key]:
        """The keys ListServiceAccountKeys shows: behind the truth by `key_list_lag_s`, either way."""
        lag, now = self.config.key_list_lag_s, self.now()
        found = [k for k in self.keys.values() if k.email == email and now - k.issued_at >= lag]
        return found + [k for k, gone in self.deleted_keys.values() if k.email == email and now - gone < lag]

    def delete_key(self, kid: str) -> None:
        self.deleted_keys[kid] = (self.keys.pop(kid), self.now())

    def key_usable(self, key: Key) -> bool:
        return self.now() - key.issued_at >= self.config.key_usable_s

    def user_keys(self, email: str) -> list[Key]:
        return [k for k in self.keys.values() if k.email == email and k.key_type == "USER_MANAGED"]

    def issue_key(self, sa: ServiceAccount, *, settled: bool = False) -> tuple[Key, dict]:
        """A new RSA-2048 key (`settled`: usable and listed at once); only the public half stays in the world."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        pub = priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kid = secrets.token_hex(20)
        key = Key(kid, sa.email, pub, "USER_MANAGED", time.time(), issued_at=float("-inf") if settled else self.now())
        self.keys[kid] = key
        quoted = sa.email.replace("@", "%40")
        keyfile = {
            "type": "service_account",
            "project_id": sa.project_id,
            "private_key_id": kid,
            "private_key": pem,
            "client_email": sa.email,
            "client_id": sa.unique_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{quoted}",
            "universe_domain": "googleapis.com",
        }
        return key, keyfile

    # -- roles and permissions -------------------------------------------------------
    def role_permissions(self, role: str) -> list[str]:
        if role in PREDEFINED_ROLES:
            return PREDEFINED_ROLES[role]
        r = self.roles.get(role)
        if r is None or r.deleted:
            return []
        return r.permissions

    def role_exists(self, role: str) -> bool:
        if role.startswith("roles/"):
            return True  # predefined roles beyond our table are accepted as Google would
        r = self.roles.get(role)
        # A soft-deleted role's bindings stay in policies, inactive, and may be written back (Google's docs).
        return r is not None and not r.purged

    def holds(self, email: str, permission: str, project: Project, resource_policy: Policy | None = None) -> bool:
        member = f"serviceAccount:{email}"
        now = self.now()
        roles = project.policy.grants_to(member, now)
        if resource_policy is not None:
            roles += resource_policy.grants_to(member, now)
        return any(grants(self.role_permissions(r), permission) for r in roles)

    # -- operations -------------------------------------------------------------------
    def operation_error(self, method: str) -> errors.ApiError | None:
        """The error the next operation of `method` ends in, if the scenario asks for one (uses up one time)."""
        with self.lock:
            for spec in self.operation_errors:
                if spec["method"] == method and spec.get("times", 1) != 0:
                    if spec.get("times", 1) > 0:
                        spec["times"] = spec.get("times", 1) - 1
                    return errors.ApiError(getattr(grpc.StatusCode, spec["code"]), spec["message"])
        return None

    def new_operation(self, name: str, kind: str, payload: dict, delay: float | None = None) -> Operation:
        d = self.config.operation_s if delay is None else delay
        op = Operation(name=name, done_at=self.now() + d, kind=kind, payload=payload)
        self.operations[name] = op
        return op

    # -- recording -------------------------------------------------------------------------
    def record(self, **entry) -> int:
        """Adds a call to the record; answers its sequence number."""
        with self.lock:
            entry["seq"] = len(self.calls) + 1
            entry["time"] = time.time()
            self.calls.append(entry)
            return entry["seq"]

    def hold_answer(self, method: str, code, seq: int) -> None:
        """Holds back an answer the configuration asks to hold (crash tests); the change is already made."""
        cfg = self.config
        succeeded = code == "OK" or (isinstance(code, int) and code < 300)
        if (cfg.hold_method == method and succeeded) or (cfg.hold_call and seq == cfg.hold_call):
            self.stopping.wait(cfg.hold_s)


# A workspace's GCP settings before anyone sets them (the fields the official client PATCHes).
DEFAULT_SETTINGS = {
    "auto_setup": None, "give_workers_public_ip": True, "give_scheduler_public_ip": True,
    "scheduler_firewall": None, "custom_software_bucket_prefix": None, "use_self_hosted_bucket": None,
}


@dataclass
class CoiledUser:
    username: str
    workspaces: list[str]
    admin: bool = True
    default: str | None = None  # the workspace marked is_default_account in the memberships


@dataclass
class Workspace:
    slug: str
    credentials: dict | None = None  # public fields of the key only
    instance_service_account: str | None = None
    settings: dict = field(default_factory=lambda: dict(DEFAULT_SETTINGS))
    registry: dict | None = None
    global_infra: dict | None = None  # {"state", "ready_at", "reason"}
    regions: list[dict] = field(default_factory=list)


class CoiledState:
    def __init__(self):
        self.users: dict[str, CoiledUser] = {}  # by token
        self.workspaces: dict[str, Workspace] = {}


def new_operation_id() -> str:
    return uuid.uuid4().hex



