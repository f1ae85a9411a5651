"""The checks of `coiled-setup verify`.

Verification runs in two parts. `gather` reads everything the checks need from Google and
Coiled, concurrently and read-only, keeping each answer or the error it met. Then each check,
a small named function of those facts, answers one Result: ok, failed, warning or skipped,
with a detail and, when something is wrong, the precise remedy. Checks never call anything
themselves, so one refusal cannot hide the others and nothing is ever written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from coiled_setup import keyfile, needs, org_policies, quotas
from coiled_setup.cloud import CloudError, NotFound, PermissionDenied, Unauthenticated
from coiled_setup.coiled_api import CoiledError, CoiledUnreachable
from coiled_setup.concurrency import run_all
from coiled_setup.needs import (
    ARTIFACT_REGISTRY,
    LOG_PERMISSION,
    LOG_WRITING_ROLES,
    REPO_PERMISSIONS,
    REPO_ROLE,
    bound_roles,
    conditional_roles,
    role_diff,
)
from coiled_setup.options import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_REGION,
    DEFAULT_ROLE_ID,
    Placement,
    is_open,
    repository_name,
)
from coiled_setup.remedies import command, explain, granting_role
from coiled_setup.wording import count

OK, FAILED, WARNING, SKIPPED = "ok", "failed", "warning", "skipped"
STATUSES = (OK, FAILED, WARNING, SKIPPED)

# Reads that roles/viewer grants: the role to ask for when the operator lacks one of them.
VIEWER_READS = {
    "iam.serviceAccounts.get", "iam.serviceAccountKeys.list", "iam.roles.get",
    "resourcemanager.projects.get", "resourcemanager.projects.getIamPolicy", "serviceusage.services.get",
    "artifactregistry.repositories.get", "artifactregistry.repositories.getIamPolicy",
}


@dataclass
class Result:
    name: str  # stable id, for --output json
    title: str
    status: str
    detail: str
    remedy: str = ""
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"name": self.name, "title": self.title, "status": self.status, "detail": self.detail,
               "remedy": self.remedy}
        if self.data:
            out["data"] = self.data
        return out


@dataclass
class Target(Placement):
    """What to verify, resolved from the flags, the journal and the key file."""

    project: str
    region: str = DEFAULT_REGION
    role_id: str = DEFAULT_ROLE_ID
    gar: bool = True
    bigquery: bool = True
    account: str = ""  # the control-plane account's email
    key_path: Path | None = None
    key_given: bool = False  # --key-file was passed
    key: dict | None = None  # the key file's content when it is usable; never printed
    key_problem: str = ""  # why the key file is not usable
    key_remedy: str = ""
    instance_flag: str | None = None
    coiled: bool = True
    workspace: str | None = None
    local_key: bool = True  # False: gcp kept the key in memory only (--no-local-key)
    fresh_key: str | None = None  # the key id gcp made moments ago, which Google may not list yet (journal)
    recorded: dict = field(default_factory=dict)  # the settings the wizard recorded
    sources: dict = field(default_factory=dict)  # where region, role_id and gar came from
    registry_regions: tuple[str, ...] = ()  # more regions with Coiled's repository, besides the cluster region

    @property
    def quota_regions(self) -> tuple[str, ...]:
        """The regions whose quotas bound the clusters: the cluster region, then each registry region."""
        return quotas.regions_of(self.region, self.repo_regions)

    def fact(self, name: str, region: str) -> str:
        """The fact's name for a region's repository (the cluster region's keeps the plain name)."""
        return name if region == self.region else f"{name}@{region}"

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.account}"

    @property
    def key_id(self) -> str | None:
        return self.key["private_key_id"] if self.key else None

    def gcp(self, *extra: str, key: bool = True) -> str:
        """The wizard command that converges this project, with the flags this verification used."""
        parts = [command("gcp"), f"--project {self.project}"]
        if self.account and self.account.split("@", 1)[0] != DEFAULT_ACCOUNT_ID:
            parts.append(f"--service-account {self.account}")
        if self.role_id != DEFAULT_ROLE_ID:
            parts.append(f"--role-id {self.role_id}")
        if self.region != DEFAULT_REGION:
            parts.append(f"--region {self.region}")
        if not self.gar:
            parts.append("--no-gar")
        if not self.bigquery:
            parts.append("--no-bigquery")
        if key and self.key_given and self.key_path is not None:
            parts.append(f"--key-file {self.key_path}")
        elif not self.local_key and not self.key_given:
            parts.append("--no-local-key")
        if not self.coiled:
            parts.append("--no-upload")
        elif self.workspace:
            parts.append(f"--workspace {self.workspace}")
        parts.extend(extra)
        return " ".join(parts)


class Facts:
    """Answers gathered once: each name holds a value or the error that stood in its way."""

    def __init__(self, operator: str = ""):
        self.operator = operator
        self.values: dict[str, object] = {}
        self.errors: dict[str, Exception] = {}

    def has(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def error(self, name: str) -> Exception | None:
        return self.errors.get(name)

    def fetch(self, jobs: dict[str, Callable[[], object]]) -> None:
        """Runs the jobs together; a Google or Coiled refusal is kept, anything else is raised.

        Not retried here: the Google adapter and the Coiled client have retried each call already."""
        def one(name, fn):
            try:
                self.values[name] = fn()
            except (CloudError, CoiledError) as e:
                self.errors[name] = e

        run_all([lambda n=n, f=f: one(n, f) for n, f in jobs.items()])


# -- gathering ----------------------------------------------------------------------------------------

def template_permissions() -> list[str]:
    return list(needs.control_role().permissions)


def gather(t: Target, operator, as_key=None, coiled: Callable[[], dict] | None = None) -> Facts:
    """Reads everything the checks need, read-only: the tokens, then two rounds of concurrent calls."""
    f = Facts(getattr(operator, "principal", "") or "")
    # The key's token first (the operator's was fetched on connecting): a refused key is a finding.
    if as_key is not None:
        f.fetch({"key_auth": as_key.authenticate})
    if f.error("key_auth") is not None:
        f.errors["held"] = f.error("key_auth")
        for region in t.repo_regions:
            f.errors[t.fact("repo_held", region)] = f.error("key_auth")
        as_key = None
    jobs: dict[str, Callable[[], object]] = {}
    if t.account:
        jobs["keys"] = lambda: operator.list_user_keys(t.account)
        jobs["account"] = lambda: operator.get_account(t.account)
    jobs["role"] = lambda: operator.get_role(t.role_name)
    jobs["policy"] = lambda: operator.get_policy(t.project)
    jobs["apis"] = lambda: operator.services_enabled(t.project, apis_checked(t))
    if as_key is not None:
        jobs["held"] = lambda: as_key.test_permissions(t.project, template_permissions())
    if t.gar:
        jobs["registry_api"] = lambda: operator.service_enabled(t.project, ARTIFACT_REGISTRY)
        for region in t.repo_regions:  # each registry region's repository, read together with the rest
            repo = repository_name(t.project, region)
            jobs[t.fact("repository", region)] = lambda r=repo: operator.get_repository(r)
            jobs[t.fact("repo_policy", region)] = lambda r=repo: operator.get_repo_policy(r)
            if as_key is not None:
                jobs[t.fact("repo_held", region)] = lambda r=repo: as_key.test_permissions(
                    r, list(REPO_PERMISSIONS), repository=True)
    if t.instance_flag and t.instance_flag != t.account:
        jobs["instance"] = lambda: operator.get_account(t.instance_flag)
    if coiled is not None:
        jobs["coiled"] = coiled
    jobs["quotas"] = lambda: quotas.read_all(operator, t.project, t.quota_regions)
    jobs["org_policies"] = lambda: org_policies.read(operator, t.project)
    f.fetch(jobs)

    # Second round: what the first answers point to (the instance account and the roles it holds).
    more: dict[str, Callable[[], object]] = {}
    instance = instance_account(t, f)
    f.values["instance_email"] = instance
    if instance and instance != t.account:
        if not f.has("instance") and not f.error("instance"):
            more["instance"] = lambda: operator.get_account(instance)
        policy = f.get("policy")
        if policy is not None:
            for role in bound_roles(policy, f"serviceAccount:{instance}"):
                if role in LOG_WRITING_ROLES or (role == t.role_name and f.has("role")):
                    continue
                more[f"role:{role}"] = lambda r=role: operator.get_role(r)
    if more:
        f.fetch(more)
    return f


def coiled_options(f: Facts) -> dict:
    view = f.get("coiled") or {}
    return (view.get("backend_options") or {}).get("options") or {}


def default_region(view: dict | None) -> str | None:
    """The region the workspace's regions route marks `default: true` (where clusters start unless told)."""
    regions = (view or {}).get("regions")
    return next((r.get("region") for r in regions or [] if isinstance(r, dict) and r.get("default")), None)


def coiled_firewall(f: Facts):
    """The scheduler firewall in effect: the workspace's settings, else (a Coiled without that read) the backend
    options' copy."""
    view = f.get("coiled") or {}
    settings = view.get("settings")
    if isinstance(settings, dict):
        return settings.get("scheduler_firewall")
    return coiled_options(f).get("firewall_spec")


def instance_account(t: Target, f: Facts) -> str | None:
    if t.instance_flag:
        return t.instance_flag
    return coiled_options(f).get("instance_service_account") or None


# -- helpers for the checks ------------------------------------------------------------------------------

def _short(key_id: str | None) -> str:
    return f"{key_id[:12]}…" if key_id else "?"


def cannot_read(name: str, title: str, e: Exception, t: Target, f: Facts, who: str = "") -> Result:
    """A check that could not be made: who lacks what, or what Google or Coiled said."""
    who = who or f.operator or "your account"
    if isinstance(e, CoiledError):
        remedy = ("Check your network connection, proxy settings and --coiled-server, then run again."
                  if isinstance(e, CoiledUnreachable)
                  else "Check your Coiled login (coiled login) and --coiled-server, then run again.")
        return Result(name, title, FAILED, f"Could not read Coiled: {e.message}", remedy)
    if isinstance(e, PermissionDenied) and e.permission:
        role = "roles/viewer" if e.permission in VIEWER_READS else granting_role(e.permission)
        return Result(name, title, FAILED,
                      f"Could not check: {who} lacks the permission {e.permission} in project {t.project}.",
                      f"Ask a project owner to grant {who} {role} (it includes {e.permission}), or run verify "
                      "with credentials that can read it; then run again.", {"missing_permission": e.permission})
    if e.service_disabled:
        svc = e.metadata.get("service", "an API")
        return Result(name, title, FAILED, f"Could not check: the API {svc} is disabled in project {t.project}.",
                      f"gcloud services enable {svc} --project {t.project}")
    return Result(name, title, FAILED, f"Could not check: {explain(e, t.project)[0]}", "Run again; if it "
                  "persists, check your network and Google credentials.")


def _age_days(key) -> float | None:
    return (time.time() - key.created) / 86400 if key is not None and key.created else None


def _not_found(e: Exception | None) -> bool:
    return isinstance(e, NotFound)


# -- the checks ----------------------------------------------------------------------------------------

NEEDS_KEY = "needs the key file; pass --key-file"
ROTATE_AFTER_DAYS = 90  # Google's advice for user-managed keys


def check_key_file(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "key_file", "Key file"
    where = str(t.key_path)
    if t.key_path is None:
        why = ("the setup kept the key in memory only (--no-local-key)" if not t.local_key
               else "the setup recorded none for this project")
        return Result(name, title, SKIPPED, f"No key file: {why}; the checks that need it are skipped (pass "
                      "--key-file to run them).", data={"needs_key": True})
    if t.key is None:
        remedy = t.key_remedy or (f"Pass a valid key file with --key-file, or run {t.gcp(key=False)} to make a new "
                                  "one" if t.key_given else f"{t.gcp()} (writes a fresh key file)")
        return Result(name, title, FAILED, t.key_problem, remedy)
    if t.key["project_id"] != t.project:
        return Result(name, title, FAILED,
                      f"{where} is a key of project {t.key['project_id']}, not {t.project}.",
                      f"Pass --key-file with a key of an account in {t.project}, or run {t.gcp()}.")
    e = f.error("keys")
    if _not_found(e):
        return Result(name, title, FAILED,
                      f"{where}: its account {t.account} no longer exists, so key {_short(t.key_id)} cannot work.",
                      f"{t.gcp()} (creates the account and a new key)")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    keys = {k.key_id: k for k in f.get("keys") or []}
    k = keys.get(t.key_id)
    unlisted = ""
    if k is None and f.has("key_auth"):
        # Google accepted the key a moment ago, so it exists: its key list lags behind a new key.
        unlisted = " (Google's key list does not show it yet)"
    elif k is None and t.key_id == t.fresh_key:
        return Result(name, title, WARNING,
                      f"{where}: key {_short(t.key_id)} of {t.account} was made by coiled-setup moments ago and "
                      "Google does not list it yet (a new key can take a minute or more to show).",
                      "Nothing: verify again in a minute")
    elif k is None:
        return Result(name, title, FAILED,
                      f"{where}: key {_short(t.key_id)} of {t.account} no longer exists on Google (it was deleted).",
                      f"{t.gcp()} (creates a new key, writes it to the key file and gives it to Coiled)")
    if k is not None and k.disabled:
        return Result(name, title, FAILED, f"{where}: key {_short(t.key_id)} of {t.account} is disabled on Google.",
                      f"gcloud iam service-accounts keys enable {t.key_id} --iam-account {t.account}, or "
                      f"{t.gcp()} for a new key")
    too_much = _privileged(t, f)
    if too_much:
        # A re-run keeps the account Coiled holds: only --service-account moves it to another one.
        if t.account.split("@", 1)[0] == DEFAULT_ACCOUNT_ID:
            remedy = (f"Remove those roles from {t.account}, or run {replace(t, account='', key_given=False).gcp()} "
                      "--service-account ANOTHER_ID (creates a dedicated account with only the Coiled role and gives "
                      "Coiled its key), then verify again")
        else:
            dedicated = replace(t, account="", key_given=False).gcp(f"--service-account {DEFAULT_ACCOUNT_ID}")
            remedy = (f"{dedicated} (creates {DEFAULT_ACCOUNT_ID}@{t.project}.iam.gserviceaccount.com with only the "
                      "Coiled role and gives Coiled its key), then verify again")
        return Result(name, title, FAILED,
                      f"{where}: key {_short(t.key_id)} of {t.account}, {too_much}: Coiled would hold far more than "
                      "its role.", remedy)
    return Result(name, title, OK, f"{where}: key {_short(t.key_id)} of {t.account}, enabled on Google{unlisted}.")


def _privileged(t: Target, f: Facts) -> str:
    """Why the key's account is too powerful to be Coiled's, or ""."""
    if f.operator and t.account == f.operator:
        return "the account running verify"
    policy = f.get("policy")
    roles = keyfile.privileged_roles(policy, t.account) if policy is not None else []
    return f"which holds {', '.join(roles)} in the project" if roles else ""


def check_account(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "service_account", "Service account"
    if not t.account:
        return Result(name, title, SKIPPED, "No account to check: the key file is not usable (see Key file).")
    e = f.error("account")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    a = f.get("account")
    if a is None:
        return Result(name, title, FAILED, f"{t.account} does not exist.", f"{t.gcp()} (creates it and a key)")
    if a.disabled:
        return Result(name, title, FAILED, f"{t.account} is disabled: Google refuses every call Coiled makes with it.",
                      f"gcloud iam service-accounts enable {t.account} --project {t.project}")
    return Result(name, title, OK, f"{t.account} exists and is enabled.")


def check_role(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "custom_role", "Custom role"
    e = f.error("role")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    r = f.get("role")
    want = template_permissions()
    if r is None:
        return Result(name, title, FAILED, f"{t.role_name} does not exist.",
                      f"{t.gcp()} (creates it with the {count(len(want), 'permission')} Coiled needs)")
    if r.deleted:
        return Result(name, title, FAILED, f"{t.role_name} is deleted, so its bindings grant nothing.",
                      f"{t.gcp()} (undeletes it), or gcloud iam roles undelete {t.role_id} --project {t.project}")
    missing, extra = role_diff(needs.control_role(), r.permissions)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing)}")
        if extra:
            parts.append(f"extra {len(extra)}: {', '.join(extra)}")
        return Result(name, title, FAILED, f"{t.role_name} differs from the bundled template; " + "; ".join(parts)
                      + ".", f"{t.gcp()} (sets the role to exactly the template's {count(len(want), 'permission')})",
                      {"missing": missing, "extra": extra})
    return Result(name, title, OK, f"{t.role_name} has exactly the template's {count(len(want), 'permission')}.")


def check_binding(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "binding", "Project IAM binding"
    if not t.account:
        return Result(name, title, SKIPPED, "No account to check: the key file is not usable (see Key file).")
    e = f.error("policy")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    policy = f.get("policy")
    if t.role_name in bound_roles(policy, t.member):
        return Result(name, title, OK, f"{t.member} → {t.role_name}, without a condition.")
    cond = [c for r, c in conditional_roles(policy, t.member) if r == t.role_name]
    if cond:
        c = cond[0]
        label = c.get("title") or c.get("expression", "")
        return Result(name, title, FAILED,
                      f"{t.member} holds {t.role_name} only under the condition {label!r}: Coiled needs it "
                      "unconditionally.",
                      f"{t.gcp()} (adds an unconditional binding; the conditional one is kept, remove it yourself "
                      "if it is no longer wanted)", {"condition": c})
    return Result(name, title, FAILED, f"{t.member} is not bound to {t.role_name} in project {t.project}.",
                  f"{t.gcp()} (adds the binding, keeping everyone else's), or gcloud projects add-iam-policy-binding "
                  f"{t.project} --member {t.member} --role {t.role_name}")


def check_effective(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "effective_permissions", "Permissions in effect"
    want = template_permissions()
    if t.key_path is None:
        return Result(name, title, SKIPPED, f"Not tested as the account: {NEEDS_KEY}.", data={"needs_key": True})
    if before["key_file"].status != OK:
        return Result(name, title, SKIPPED, "Needs a usable key to test as the account (see Key file).")
    if before["service_account"].status != OK:
        return Result(name, title, SKIPPED, "Cannot act as the account (see Service account).")
    e = f.error("held")
    if e is not None:
        if isinstance(e, Unauthenticated):
            return Result(name, title, FAILED, f"Google did not accept the key of {t.account}: {e.message}",
                          f"{t.gcp()} (creates a new key)")
        return cannot_read(name, title, e, t, f, who=t.account)
    held = f.get("held") or set()
    missing = [p for p in want if p not in held]
    if missing:
        if before["custom_role"].status != OK or before["binding"].status != OK:
            remedy = f"Fix the custom role and binding above: {t.gcp()}"
        else:
            remedy = (f"The role and binding are right, so Google may still be propagating a recent change (up to 7 "
                      f"minutes), or a deny policy blocks them; run verify again later, then {t.gcp()}")
        return Result(name, title, FAILED,
                      f"Tested as {t.account} with the key: {len(missing)} of {count(len(want), 'permission')} "
                      f"not held: {', '.join(missing)}.", remedy, {"not_held": missing})
    return Result(name, title, OK, f"Tested as {t.account} with the key: all {count(len(want), 'permission')} held.")


def apis_checked(t: Target) -> list[str]:
    """What the wizard enables (needs.py), but Artifact Registry's API: its own check below."""
    return [s for s in needs.services(t.gar, t.bigquery) if s != ARTIFACT_REGISTRY]


def check_apis(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "google_apis", "Google APIs"
    e = f.error("apis")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    off = [s for s, on in f.get("apis").items() if not on]
    if off:
        return Result(name, title, FAILED, f"{', '.join(off)} {'is' if len(off) == 1 else 'are'} disabled in "
                      f"project {t.project}.", f"gcloud services enable {' '.join(off)} --project {t.project}, or "
                      f"{t.gcp()}", {"disabled": off})
    return Result(name, title, OK, f"{', '.join(f.get('apis'))} enabled.")


def check_registry_api(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "registry_api", "Artifact Registry API"
    if not t.gar:
        return Result(name, title, SKIPPED, "Not checked (--no-gar).")
    e = f.error("registry_api")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    if not f.get("registry_api"):
        return Result(name, title, FAILED, f"{ARTIFACT_REGISTRY} is disabled in project {t.project}.",
                      f"gcloud services enable {ARTIFACT_REGISTRY} --project {t.project}, or {t.gcp()}")
    return Result(name, title, OK, f"{ARTIFACT_REGISTRY} is enabled.")


def _each_region(t: Target, name: str, title: str, one) -> Result:
    """One result for every registry region: the region's own when there is one, else the failures (each naming
    its repository, so its region), else every region's detail."""
    results = [one(region) for region in t.repo_regions]
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if r.status == FAILED]
    if failed:
        data = {"regions": [region for region, r in zip(t.repo_regions, results, strict=True) if r.status == FAILED]}
        return Result(name, title, FAILED, " ".join(r.detail for r in failed),
                      " ".join(dict.fromkeys(r.remedy for r in failed if r.remedy)), data)
    if any(r.status == SKIPPED for r in results):
        return next(r for r in results if r.status == SKIPPED)
    return Result(name, title, results[0].status, " ".join(r.detail for r in results))


def check_repository(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "registry_repository", "Registry repository"
    if not t.gar:
        return Result(name, title, SKIPPED, "Not checked (--no-gar).")
    if before["registry_api"].status != OK:
        return Result(name, title, SKIPPED, "Needs the Artifact Registry API (see above).")

    def one(region: str) -> Result:
        repo = repository_name(t.project, region)
        e = f.error(t.fact("repository", region))
        if e is not None:
            return cannot_read(name, title, e, t, f)
        fmt = f.get(t.fact("repository", region))
        if fmt is None:
            return Result(name, title, FAILED, f"There is no repository coiled in {region}: {repo} is missing.",
                          f"{t.gcp()} (creates the DOCKER repository and grants the account {REPO_ROLE})")
        if fmt != "DOCKER":
            return Result(name, title, FAILED, f"{repo} has format {fmt}; Coiled needs DOCKER.",
                          f"Delete or rename it (gcloud artifacts repositories delete coiled --location {region} "
                          f"--project {t.project}), then {t.gcp()}; or pass --no-gar and use another registry.")
        return Result(name, title, OK, f"{repo} (DOCKER).")

    return _each_region(t, name, title, one)


def check_repo_grant(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "registry_access", "Registry access"
    if not t.gar:
        return Result(name, title, SKIPPED, "Not checked (--no-gar).")
    if before["registry_repository"].status != OK:
        return Result(name, title, SKIPPED, "Needs the repository (see above).")
    if not t.account:
        return Result(name, title, SKIPPED, "No account to check: the key file is not usable (see Key file).")
    several = len(t.repo_regions) > 1

    def one(region: str) -> Result:
        repo = repository_name(t.project, region)
        e = f.error(t.fact("repo_policy", region))
        if e is not None:
            return cannot_read(name, title, e, t, f)
        policy = f.get(t.fact("repo_policy", region))
        if REPO_ROLE not in bound_roles(policy, t.member):
            if any(r == REPO_ROLE for r, _ in conditional_roles(policy, t.member)):
                detail = (f"{t.account} holds {REPO_ROLE} on {repo} only under a condition: Coiled cannot "
                          "push software environments.")
            else:
                detail = (f"{t.account} does not hold {REPO_ROLE} on {repo}: Coiled cannot push software "
                          "environments.")
            return Result(name, title, FAILED, detail,
                          f"{t.gcp()} (grants it), or gcloud artifacts repositories add-iam-policy-binding coiled "
                          f"--location {region} --project {t.project} --member {t.member} --role {REPO_ROLE}")
        where = f" on {repo}" if several else ""
        held = f.get(t.fact("repo_held", region))
        if held is not None:
            missing = [p for p in REPO_PERMISSIONS if p not in held]
            if missing:
                return Result(name, title, FAILED,
                              f"{t.account} is granted {REPO_ROLE}{where}, but Google does not give it "
                              f"{', '.join(missing)} yet.",
                              "Google may still be propagating the grant (up to 7 minutes): run verify again later.",
                              {"not_held": missing})
            return Result(name, title, OK, f"{t.account} holds {REPO_ROLE}{where}; push and pull tested as the "
                          "account.")
        untested = f" (push and pull not tested as the account: {NEEDS_KEY})" if t.key is None else ""
        return Result(name, title, OK, f"{t.account} holds {REPO_ROLE} on {repo if several else 'the repository'}"
                      f"{untested}.")

    return _each_region(t, name, title, one)


def check_instance(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "instance_account", "Instance service account"
    email = f.get("instance_email")
    if not email:
        return Result(name, title, SKIPPED, "No instance service account is configured (pass "
                      "--instance-service-account to check one).")
    least = (f"{t.gcp('--create-instance-service-account')} (a separate account that can only write logs)")
    if email == t.account:
        # As gcp, which refuses Coiled's own account for instances.
        return Result(name, title, FAILED,
                      f"Instances would run as Coiled's own account {email}, with every permission of "
                      f"{t.role_name}: give instances a separate account.",
                      f"{least}, or {t.gcp('--no-instance-service-account')} (instances run without one)")
    e = f.error("instance")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    a = f.get("instance")
    if a is None:
        return Result(name, title, FAILED, f"{email} does not exist: Coiled cannot start instances with it.",
                      f"{least}, or create {email} yourself")
    if a.disabled:
        return Result(name, title, FAILED, f"{email} is disabled: Coiled cannot start instances with it.",
                      f"gcloud iam service-accounts enable {email} --project {t.project}")
    e = f.error("policy")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    roles = bound_roles(f.get("policy"), f"serviceAccount:{email}")
    via = None
    for role in roles:
        if role in LOG_WRITING_ROLES:
            via = role
            break
        err = f.error(f"role:{role}")
        if err is not None and not _not_found(err):
            return cannot_read(name, title, err, t, f)
        r = f.get("role") if role == t.role_name and f.has("role") else f.get(f"role:{role}")
        if r is not None and not r.deleted and LOG_PERMISSION in r.permissions:
            via = role
            break
    if via is None:
        return Result(name, title, FAILED,
                      f"{email} does not hold {LOG_PERMISSION} (its roles: {', '.join(roles) or 'none'}): instance "
                      "logs would be lost.",
                      f"gcloud projects add-iam-policy-binding {t.project} --member serviceAccount:{email} "
                      "--role roles/logging.logWriter")
    return Result(name, title, OK, f"{email} exists, holds {LOG_PERMISSION} (via {via}), and is separate from the "
                  "control-plane account.")


def check_coiled_credentials(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "coiled_credentials", "Coiled credentials"
    if not t.coiled:
        return Result(name, title, SKIPPED, "Not checked (--no-coiled).")
    e = f.error("coiled")
    if e is not None:
        return cannot_read(name, title, e, t, f)
    ws = (f.get("coiled") or {}).get("workspace")
    creds = coiled_options(f).get("gcp_service_creds_dict") or {}
    upload = t.gcp() if t.workspace else f"{t.gcp()} --workspace {ws}"
    if not creds.get("client_email"):
        return Result(name, title, FAILED, f"Coiled workspace {ws} has no Google Cloud credentials.",
                      f"{upload} (gives Coiled the key)")
    email, kid = creds.get("client_email"), creds.get("private_key_id")
    if t.account and email != t.account:
        return Result(name, title, FAILED, f"Coiled workspace {ws} uses {email}, not {t.account}.",
                      f"{upload} (gives Coiled a key of {t.account})")
    # Checked before matching the key file: the key file's key may be the dead one.
    live = {k.key_id: k for k in f.get("keys") or []}
    if f.has("keys") and kid not in live and kid == t.key_id and f.has("key_auth"):
        pass  # the key file's key, which Google accepted a moment ago: listed later
    elif f.has("keys") and kid not in live and kid == t.fresh_key:
        return Result(name, title, WARNING, f"Workspace {ws} holds key {_short(kid)} of {email}, made by coiled-setup "
                      "moments ago; Google does not list it yet (a new key can take a minute or more to show).",
                      "Nothing: verify again in a minute")
    elif f.has("keys") and (kid not in live or live[kid].disabled):
        gone = "no longer exists" if kid not in live else "is disabled"
        return Result(name, title, FAILED, f"Workspace {ws} holds key {_short(kid)} of {email}, which {gone} on "
                      "Google.", f"{upload} (gives Coiled a live key)")
    age = _age_days(live.get(kid))
    if age is not None and age > ROTATE_AFTER_DAYS:
        return Result(name, title, WARNING,
                      f"Workspace {ws} holds key {_short(kid)} of {email}, created {age:.0f} days ago: Google advises "
                      f"rotating user-managed keys at least every {ROTATE_AFTER_DAYS} days.",
                      f"{command('rotate-key')} --project {t.project} (gives Coiled a new key, then deletes this one)",
                      {"key_age_days": round(age)})
    if t.key_id and kid == t.key_id:
        return Result(name, title, OK, f"Workspace {ws} holds the key file's key {_short(kid)} of {email}.")
    if t.key_id:
        return Result(name, title, WARNING,
                      f"Workspace {ws} holds another key of {email} ({_short(kid)}), not the key file's "
                      f"({_short(t.key_id)}).",
                      f"Nothing, if that key is meant for Coiled; otherwise {upload} (gives Coiled this key)")
    live_note = ", enabled on Google" if f.has("keys") else ""
    return Result(name, title, OK, f"Workspace {ws} holds key {_short(kid)} of {email}{live_note}.")


def check_coiled_backend(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "coiled_backend", "Coiled backend options"
    if not t.coiled:
        return Result(name, title, SKIPPED, "Not checked (--no-coiled).")
    if before["coiled_credentials"].status not in (OK, WARNING):
        return Result(name, title, SKIPPED, "Needs the credentials in Coiled (see above).")
    o = coiled_options(f)
    view = f.get("coiled") or {}
    ws = view.get("workspace")
    problems = []
    if o.get("gcp_project_name") != t.project:
        problems.append(f"project is {o.get('gcp_project_name')}, not {t.project}")
    regions = [r for r in view.get("regions") or [] if isinstance(r, dict)]
    region = default_region(view) if regions else o.get("gcp_region_name")
    if region != t.region:
        problems.append(f"default region is {region or 'not set'}, not {t.region}")
    else:
        state = next((((r.get("component") or {}).get("state")) for r in regions if r.get("default")), "created")
        if state == "error":
            reason = next(((r.get("component") or {}).get("reason") for r in regions if r.get("default")), None)
            problems.append(f"its region {region} failed to set up ({reason or 'no reason given'})")
    if t.gar and (o.get("registry") or {}).get("type") != "gar":
        problems.append(f"registry is {(o.get('registry') or {}).get('type') or 'not set'}, not Google Artifact "
                        "Registry")
    if problems:
        fix = t.gcp() if t.workspace else f"{t.gcp()} --workspace {ws}"
        return Result(name, title, FAILED, f"Workspace {ws}: " + "; ".join(problems) + ".",
                      f"{fix} (sets them), or pass the --region you chose to verify", {"problems": problems})
    reg = ", registry Google Artifact Registry" if t.gar else ""
    return Result(name, title, OK, f"Workspace {ws}: project {t.project}, default region {t.region}{reg}.")


def firewall_rules(t: Target, f: Facts) -> tuple[list[dict] | None, str]:
    """Ingress rules ({ports, cidr}) of the scheduler firewall in effect, and where they come from: the
    workspace's settings (the dask config decides nothing, so it is not read)."""
    spec = coiled_firewall(f) if t.coiled else None
    if isinstance(spec, dict) and isinstance(spec.get("ingress"), list):
        return [r for r in spec["ingress"] if isinstance(r, dict)], "the workspace's settings"
    return None, ""


def check_firewall(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "firewall", "Scheduler firewall"
    if not t.coiled:
        return Result(name, title, SKIPPED, "Not checked (--no-coiled): the firewall is a setting of the workspace.")
    if f.error("coiled") is not None:
        return Result(name, title, SKIPPED, "Needs Coiled's workspace settings (see above).")
    rules, source = firewall_rules(t, f)
    ws = (f.get("coiled") or {}).get("workspace")
    if rules is None:
        return Result(name, title, FAILED, f"Workspace {ws} has no scheduler firewall set.",
                      f"{t.gcp()} (sets it)")
    desc = "; ".join(f"ports {','.join(map(str, r.get('ports') or []))} from {r.get('cidr')}" for r in rules)
    want_cidr, want_ports = t.recorded.get("firewall_cidr"), t.recorded.get("firewall_ports")
    if want_cidr and want_ports:
        have = [(r.get("cidr"), tuple(sorted(r.get("ports") or []))) for r in rules]
        if have != [(want_cidr, tuple(sorted(want_ports)))]:
            ports = ",".join(map(str, want_ports))
            return Result(name, title, FAILED,
                          f"Workspace {ws} lets schedulers be reached on {desc}, not ports {ports} from {want_cidr} "
                          "as the setup made it.",
                          f"{t.gcp(f'--firewall-cidr {want_cidr} --firewall-ports {ports}')} (sets it back), or "
                          "run gcp with the firewall you want now")
    open_rules = [r for r in rules if is_open(r.get("cidr"))]
    if open_rules:
        ports = ",".join(str(p) for r in open_rules for p in (r.get("ports") or []))
        return Result(name, title, WARNING,
                      f"Dask schedulers accept connections on ports {ports} from anywhere "
                      f"({open_rules[0].get('cidr')}), per {source}.",
                      f"{t.gcp('--firewall-cidr YOUR_NETWORK')} (for example 203.0.113.0/24)")
    return Result(name, title, OK, f"Ingress limited to {desc}, per {source}.")


def check_quotas(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    """How big a cluster each region's quotas allow: a warning at most, never a failure."""
    name, title = "quotas", "Quotas"
    readings = f.get("quotas")
    if not readings:
        return Result(name, title, SKIPPED, "The quotas were not read.")
    # The cluster region's reading at the top, as with one region; every region's under "regions".
    data = {**readings[0].as_dict(), "regions": [r.as_dict() for r in readings]}
    if readings[0].problem:
        return Result(name, title, SKIPPED, readings[0].problem, data=data)
    detail = " ".join(r.sentence() + "." for r in readings)
    if quotas.short_regions(readings):
        return Result(name, title, WARNING, detail, "; ".join(quotas.ask_more(readings)), data)
    return Result(name, title, OK, detail, data=data)


def check_org_policies(t: Target, f: Facts, before: dict[str, Result]) -> Result:
    name, title = "org_policies", "Organization policies"
    effective, skipped = f.get("org_policies") or ({}, "")
    if f.error("org_policies") is not None:
        return cannot_read(name, title, f.error("org_policies"), t, f)
    if skipped:
        return Result(name, title, SKIPPED, f"Not checked: {skipped}.")
    found = org_policies.findings(effective, t.project, t.region, key_needed=False, repository_needed=False,
                                  registry_regions=t.repo_regions)
    if not found:
        return Result(name, title, OK, "No organization policy in force blocks Coiled in this project.")
    # A region Coiled cannot use fails; keys refused (rotation) and external IPs refused (clusters) warn.
    status = FAILED if any(x.constraint == org_policies.LOCATIONS for x in found) else WARNING
    import json

    remedy = " ".join(f"gcloud org-policies set-policy on a file holding {json.dumps(x.exception)} (needs "
                      f"{org_policies.ADMIN_ROLE} on the organization or folder)." for x in found)
    return Result(name, title, status, " ".join(x.sentence(t.project).split(": someone")[0] + "." for x in found),
                  remedy, {"constraints": [x.constraint for x in found]})


# In order: a check sees the results before it, to skip what cannot be judged without them.
CHECKS = (check_key_file, check_account, check_role, check_binding, check_effective, check_apis, check_registry_api,
          check_repository, check_repo_grant, check_instance, check_coiled_credentials, check_coiled_backend,
          check_firewall, check_quotas, check_org_policies)


def evaluate(t: Target, f: Facts) -> list[Result]:
    """Every check, in order."""
    out: dict[str, Result] = {}
    for check in CHECKS:
        r = check(t, f, out)
        out[r.name] = r
    return list(out.values())
