"""The regional quotas that bound a Coiled cluster, in cluster terms, and asking Google for more.

Read through the Cloud Quotas API (Google does not give usage there, only limits). A reading never stops a run:
a missing permission or a disabled API is one sentence, and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coiled_setup.cloud import CloudError, PermissionDenied
from coiled_setup.concurrency import run_all
from coiled_setup.remedies import command

SERVICE = "compute.googleapis.com"
API = "cloudquotas.googleapis.com"
READ_PERMISSION = "cloudquotas.quotas.get"
UPDATE_PERMISSION = "cloudquotas.quotas.update"
INSTANCE_TYPE = "e2-standard-4"
WARN_BELOW = 10  # workers


@dataclass(frozen=True)
class Quota:
    key: str  # as --request names it
    quota_id: str  # Compute Engine's, as the Cloud Quotas API names it
    label: str
    unit: str
    per_vm: int  # what one VM of Coiled's default takes (the scheduler is one VM too)


# e2-standard-4 has 4 vCPUs; 40 GB is Coiled's disk per VM (the official client counts 440 GB for 10 workers and a
# scheduler); every VM takes one external address.
QUOTAS = (
    Quota("cpus", "CPUS-per-project-region", "CPUs", "vCPUs", 4),
    Quota("ssd_gb", "SSD-TOTAL-GB-per-project-region", "Persistent Disk SSD", "GB", 40),
    Quota("addresses", "IN-USE-ADDRESSES-per-project-region", "In-use IPv4 addresses", "addresses", 1),
)
BY_KEY = {q.key: q for q in QUOTAS}


def console_url(project: str) -> str:
    return f"https://console.cloud.google.com/iam-admin/quotas?project={project}"


def requests_url(project: str) -> str:
    """Where the operator follows a quota increase request."""
    return f"https://console.cloud.google.com/iam-admin/quotas/qirs?project={project}"


def service_disabled(e: CloudError) -> bool:
    return e.service_disabled


def permission_denied(e: CloudError) -> bool:
    return isinstance(e, PermissionDenied) and not e.service_disabled


@dataclass
class Reading:
    project: str
    region: str
    limits: dict[str, int] = field(default_factory=dict)  # Quota.key -> limit (-1: unlimited)
    problem: str = ""  # why nothing was read: one sentence
    disabled: bool = False  # the Cloud Quotas API is off in the project

    def vms(self, key: str) -> int | None:
        limit = self.limits.get(key, -1)
        return None if limit < 0 else limit // BY_KEY[key].per_vm

    @property
    def bound(self) -> str | None:
        """The quota that allows the fewest VMs."""
        counted = [(self.vms(q.key), q.key) for q in QUOTAS if self.vms(q.key) is not None]
        return min(counted)[1] if counted else None

    @property
    def workers(self) -> int | None:
        """How many workers fit beside their scheduler; None when nothing was read or nothing bounds them."""
        if self.problem or self.bound is None:
            return None
        return max(self.vms(self.bound) - 1, 0)

    @property
    def warning(self) -> bool:
        return self.workers is not None and self.workers < WARN_BELOW

    def needed(self, workers: int) -> dict[str, int]:
        """What `workers` workers and their scheduler take."""
        return {q.key: (workers + 1) * q.per_vm for q in QUOTAS}

    def short(self, workers: int = WARN_BELOW) -> dict[str, int]:
        """The quotas below what `workers` workers need, and what they need."""
        return {k: v for k, v in self.needed(workers).items() if 0 <= self.limits.get(k, -1) < v}

    def hint(self, workers: int = WARN_BELOW) -> str:
        """The request flags that would make room for `workers` workers."""
        return " ".join(f"--request {k}={v}" for k, v in self.short(workers).items())

    def sentence(self) -> str:
        if self.problem:
            return self.problem
        if self.workers is None:
            return f"{self.region}: no regional limit bounds a cluster."
        q = BY_KEY[self.bound]
        limits = ", ".join(f"{self.limits[x.key]} {x.unit}" if self.limits.get(x.key, -1) >= 0
                           else f"no {x.label} limit" for x in QUOTAS)
        return (f"{self.region}: {self.workers} {'worker' if self.workers == 1 else 'workers'} of {INSTANCE_TYPE} "
                f"fit beside the scheduler ({limits}; bound by {q.label})")

    def warning_sentence(self) -> str:
        n = WARN_BELOW
        need = self.needed(n)
        return (f"Only {self.workers} {'worker fits' if self.workers == 1 else 'workers fit'} in {self.region} "
                f"(bound by {BY_KEY[self.bound].label}); {n} workers need {need['cpus']} vCPUs, {need['ssd_gb']} GB "
                f"SSD and {need['addresses']} addresses: request more with `{command('quotas')} --region {self.region} "
                f"{self.hint(n)}` or in the Console ({console_url(self.project)}).")

    def as_dict(self) -> dict:
        return {"region": self.region, "error": self.problem or None,
                "quotas": [{"name": q.key, "quota_id": q.quota_id, "limit": self.limits.get(q.key),
                            "per_vm": q.per_vm, "vms": self.vms(q.key)} for q in QUOTAS] if not self.problem else [],
                "workers": self.workers, "bound_by": self.bound if not self.problem else None,
                "warning": self.warning}


def problem_sentence(e: CloudError, project: str) -> str:
    """One sentence for a refusal that leaves the quotas unread."""
    if service_disabled(e):
        return (f"The Cloud Quotas API is disabled in project {project}, so its quotas were not read: enable it "
                f"with `{command('quotas')} --enable-api` (or gcloud services enable {API} --project {project}).")
    if permission_denied(e):
        return (f"Your account cannot read quotas in project {project} (it lacks {READ_PERMISSION}, granted by "
                "roles/cloudquotas.viewer), so they were not read.")
    return f"The quotas of project {project} could not be read (Google answered {e.code})."


def regions_of(region: str, registry_regions=()) -> tuple[str, ...]:
    """The regions whose quotas bound a setup's clusters: the cluster region first, then each registry region."""
    return tuple(dict.fromkeys((region, *registry_regions)))


def read_all(g, project: str, regions) -> list[Reading]:
    """The limits that bound a cluster in each region, in one round: a QuotaInfo holds every region's limit, so
    more regions cost no more calls. A refusal becomes each reading's problem, never an error."""
    regions = list(dict.fromkeys(regions))
    try:
        per_quota = run_all([lambda q=q: g.quota_limits(project, SERVICE, q.quota_id, regions) for q in QUOTAS])
    except CloudError as e:
        problem, disabled = problem_sentence(e, project), service_disabled(e)
        return [Reading(project, r, problem=problem, disabled=disabled) for r in regions]
    return [Reading(project, r, {q.key: limits[r] for q, limits in zip(QUOTAS, per_quota, strict=True)})
            for r in regions]


def sentences(readings: list[Reading]) -> str:
    """Each region's sentence; a refusal (the same in every region: the reads are the project's) once."""
    if readings and readings[0].problem:
        return readings[0].problem
    return "; ".join(r.sentence() for r in readings)


def short_regions(readings: list[Reading]) -> list[Reading]:
    """The readings where fewer than 10 workers fit."""
    return [r for r in readings if r.warning]


def ask_more(readings: list[Reading]) -> list[str]:
    """The commands that ask for room for 10 workers, one per region short of it."""
    return [f"{command('quotas')} --region {r.region} {r.hint()}" for r in short_regions(readings)]


def parse_requests(items: list[str]) -> dict[str, int]:
    """`cpus=200` and the like; ValueError with one sentence."""
    out: dict[str, int] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if key not in BY_KEY:
            raise ValueError(f"--request {item!r} names no quota coiled-setup knows: use "
                             f"{', '.join(q.key for q in QUOTAS)} (for example cpus=200).")
        if not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(f"--request {item!r} needs a whole number above 0 (for example {key}=200).")
        out[key] = int(value)
    return out


def preference_id(quota: Quota, region: str) -> str:
    return f"coiled-{quota.key.replace('_', '-')}-{region}"


@dataclass
class Outcome:
    name: str
    quota_id: str
    region: str
    requested: int
    granted: int
    state: str  # granted / pending (Google's review) / refused
    changed: bool
    preference: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def request(g, project: str, region: str, wanted: dict[str, int], email: str, justification: str) -> list[Outcome]:
    """Creates or updates a QuotaPreference per quota; one that already asks for the value is left as it is."""
    existing = {(p.quota_id, p.region): p for p in g.list_quota_preferences(project) if p.service == SERVICE}
    outcomes = []
    for key, value in wanted.items():
        q = BY_KEY[key]
        pref = existing.get((q.quota_id, region))
        changed = True
        if pref is None:
            pref = g.create_quota_preference(project, preference_id(q, region), SERVICE, q.quota_id, region, value,
                                             email, justification)
        elif pref.preferred != value:
            pref = g.update_quota_preference(pref, value, email, justification)
        else:
            changed = False
        state = "pending" if pref.reconciling else "granted" if pref.granted >= pref.preferred else "refused"
        outcomes.append(Outcome(key, q.quota_id, region, pref.preferred, pref.granted, state, changed, pref.name))
    return outcomes
