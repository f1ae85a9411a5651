"""The wizard's inputs and their validation: every rule checked before the first call that changes anything."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from coiled_setup.errors import BadInput

PROJECT_ID_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
ACCOUNT_ID_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
ROLE_ID_RE = re.compile(r"^[a-zA-Z0-9_.]{3,64}$")
SA_EMAIL_RE = re.compile(r"^([a-z]([-a-z0-9]*[a-z0-9]))@([a-z][a-z0-9-]{4,28}[a-z0-9])\.iam\.gserviceaccount\.com$")
EMAIL_RE = re.compile(r"^[^@\s]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
GAR_REGIONS = ("us-east1", "us-central1")
# Compute Engine regions (zones are REGION-a..f; only these are checked by suffix).
REGIONS = (
    "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2", "us-west3",
    "us-west4", "northamerica-northeast1", "northamerica-northeast2", "southamerica-east1",
    "southamerica-west1", "europe-central2", "europe-north1", "europe-southwest1", "europe-west1",
    "europe-west2", "europe-west3", "europe-west4", "europe-west6", "europe-west8", "europe-west9",
    "europe-west10", "europe-west12", "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2",
    "asia-northeast3", "asia-south1", "asia-south2", "asia-southeast1", "asia-southeast2",
    "australia-southeast1", "australia-southeast2", "me-central1", "me-west1", "africa-south1",
)
# The zones of each region above (Google's published list): REGION-a..f are not all real (us-east1 has b, c, d).
ZONES = {r: "abc" for r in REGIONS} | {"us-central1": "abcf", "us-east1": "bcd", "europe-west1": "bcd"}
DEFAULT_REGION = "us-east1"
DEFAULT_ZONE_SUFFIX = "c"
MAX_WAIT_TIMEOUT = 86400.0  # a day: longer is a typo, not a propagation delay
DEFAULT_PORTS = (22, 8786, 8787)
OPEN_CIDR = "0.0.0.0/0"
DEFAULT_ACCOUNT_ID = "coiled"
DEFAULT_ROLE_ID = "coiled"
INSTANCE_ACCOUNT_ID = "coiled-instance"
INSTANCE_ROLE_ID = "coiled_instance"


def role_name(project: str, role_id: str) -> str:
    return f"projects/{project}/roles/{role_id}"


def default_instance_email(project: str) -> str:
    return f"{INSTANCE_ACCOUNT_ID}@{project}.iam.gserviceaccount.com"


def repository_name(project: str, region: str) -> str:
    """Coiled's Docker repository: it must be named coiled."""
    return f"projects/{project}/locations/{region}/repositories/coiled"


class Placement:
    """Where a setup's resources are, from its project, region, role id, registry regions and --no-gar (the wizard's
    options and verify's target alike)."""

    project: str
    region: str
    role_id: str
    registry_regions: tuple[str, ...]
    gar: bool

    @property
    def role_name(self) -> str:
        return role_name(self.project, self.role_id)

    @property
    def repository(self) -> str:
        """The cluster region's repository: the one Coiled is told about."""
        return repository_name(self.project, self.region)

    @property
    def repo_regions(self) -> tuple[str, ...]:
        """Every region that holds Coiled's repository: the cluster region first, then the others."""
        return tuple(dict.fromkeys((self.region, *self.registry_regions))) if self.gar else ()


@dataclass
class Options(Placement):
    project: str = ""
    workspace: str | None = None
    region: str = DEFAULT_REGION
    zone: str | None = None
    service_account: str = DEFAULT_ACCOUNT_ID  # account id or email
    key_file: Path | None = None
    no_local_key: bool = False
    role_id: str = DEFAULT_ROLE_ID
    gar: bool = True
    bigquery: bool = True  # enable BigQuery, where Coiled's log sink writes (as Coiled's own setup does)
    allow_log_sink_exception: bool = False  # lift domain restricted sharing while Coiled makes its log sink
    instance_service_account: str | None = None
    create_instance_service_account: bool = False
    no_instance_service_account: bool = False
    preemptible: bool = True
    firewall_cidr: str = OPEN_CIDR
    firewall_ports: tuple[int, ...] = DEFAULT_PORTS
    upload: bool = True
    write_dask_config: bool = False  # also write coiled.backend-options into the dask config (older clients)
    dry_run: bool = False
    yes: bool = False
    interactive: bool = True
    output: str = "text"
    wait_timeout: float = 600.0
    coiled_server: str | None = None
    allow_privileged_key: bool = False  # hand Coiled a key of an owner/editor/IAM-admin account anyway
    max_age: float | None = None  # rotate-key: rotate only a key older than this many days
    delete_repository: bool = False  # teardown: the repository too (it holds images)
    # More regions for Coiled's repository (--registry-regions); the cluster region always has one.
    registry_regions: tuple[str, ...] = ()
    explicit: set[str] = field(default_factory=set)  # flags the user gave

    @property
    def account_id(self) -> str:
        return self.service_account.split("@", 1)[0]

    @property
    def account_email(self) -> str:
        if "@" in self.service_account:
            return self.service_account
        return f"{self.service_account}@{self.project}.iam.gserviceaccount.com"

    @property
    def instance_email(self) -> str | None:
        """The instance account this run sets up, if any."""
        if self.instance_service_account:
            return self.instance_service_account
        if self.create_instance_service_account:
            return default_instance_email(self.project)
        return None

    @property
    def repositories(self) -> list[str]:
        return [repository_name(self.project, r) for r in self.repo_regions]

    @property
    def open_firewall(self) -> bool:
        return is_open(self.firewall_cidr)


def is_open(cidr) -> bool:
    """Whether a firewall network admits every address (0.0.0.0/0); a malformed one admits none."""
    try:
        return ipaddress.ip_network(str(cidr), strict=False).prefixlen == 0
    except ValueError:
        return False


def _named(flag: str, value) -> str:
    """How a message names the input: the flag and the value, or (at a prompt) the value alone."""
    return f"{flag} {value!r}" if flag else repr(value)


# Each rule answers one sentence saying what is wrong, or None: the flags (validate) and the interactive
# prompts (their validate=) share them, so an answer a prompt accepts is never refused later.

def project_error(project: str, flag: str = "--project") -> str | None:
    if not PROJECT_ID_RE.match(project or ""):
        return (f"{_named(flag, project)} is not a valid project id: use 6 to 30 lowercase letters, digits or "
                "hyphens, starting with a letter and not ending with a hyphen.")
    return None


def account_error(value: str, project: str, flag: str = "--service-account") -> str | None:
    if "@" in value:
        m = SA_EMAIL_RE.match(value)
        if not m:
            return f"{_named(flag, value)} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)."
        if m.group(3) != project:
            return (f"{_named(flag, value)} belongs to project {m.group(3)}, not {project}: name an account of "
                    f"{project}.")
        value = m.group(1)
    if not (6 <= len(value) <= 30 and ACCOUNT_ID_RE.match(value)):
        return (f"{_named(flag, value)} is not a valid account id: use 6 to 30 lowercase letters, digits or "
                "hyphens, starting with a letter and not ending with a hyphen.")
    return None


def role_id_error(role_id: str, flag: str = "--role-id") -> str | None:
    if not ROLE_ID_RE.match(role_id):
        return f"{_named(flag, role_id)} is not valid: use 3 to 64 letters, digits, underscores or periods."
    return None


def region_error(region: str, gar: bool, flag: str = "--region") -> str | None:
    if region not in REGIONS:
        return f"{_named(flag, region)} is not a Google Cloud region (for example us-east1)."
    if gar and region not in GAR_REGIONS:
        return (f"{_named(flag, region)} cannot hold Coiled's Artifact Registry repository: use us-east1 or "
                "us-central1, or pass --no-gar to use another registry.")
    return None


def parse_regions(text: str) -> tuple[str, ...]:
    """--registry-regions us-east1,us-central1: each region once, in the order given."""
    return tuple(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))


def registry_regions_error(regions: tuple[str, ...], gar: bool, flag: str = "--registry-regions") -> str | None:
    if not regions:
        return None
    if not gar:
        return f"{flag} needs Artifact Registry: leave out --no-gar, or leave out {flag}."
    for r in regions:
        if r not in REGIONS:
            return (f"{_named(flag, ','.join(regions))} names {r!r}, which is not a Google Cloud region (for example "
                    "us-east1).")
        if r not in GAR_REGIONS:
            return (f"{_named(flag, ','.join(regions))} names {r}, which cannot hold Coiled's Artifact Registry "
                    "repository: use us-east1 or us-central1.")
    return None


def zone_error(zone: str, region: str, flag: str = "--zone") -> str | None:
    if not re.match(rf"^{re.escape(region)}-[a-f]$", zone):
        return f"{_named(flag, zone)} is not a zone of region {region} (for example {region}-c)."
    return None


def cidr_error(cidr: str, flag: str = "--firewall-cidr") -> str | None:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        return f"{_named(flag, cidr)} is not a network in CIDR notation (for example 203.0.113.0/24)."
    if net.version != 4:
        return f"{_named(flag, cidr)} must be an IPv4 network."
    return None


def ports_error(ports: tuple[int, ...]) -> str | None:
    if not ports or any(not (1 <= p <= 65535) for p in ports):
        return "--firewall-ports must list ports from 1 to 65535, for example 22,8786,8787."
    return None


def instance_account_error(email: str, account_email: str | None,
                           flag: str = "--instance-service-account") -> str | None:
    if not EMAIL_RE.match(email) or not email.endswith(".gserviceaccount.com"):
        return f"{_named(flag, email)} is not a service account email."
    if email == account_email:
        return (f"{flag or 'The instance service account'} must differ from the Coiled service account: instances "
                "should get least privilege.")
    return None


def output_error(output: str) -> str | None:
    if output not in ("text", "json"):
        return f"--output {output!r} is not known: use text or json."
    return None


def _check(error: str | None) -> None:
    if error:
        raise BadInput(error)


def check_project(project: str) -> None:
    _check(project_error(project))


def check_account(value: str, project: str, flag: str = "--service-account") -> None:
    _check(account_error(value, project, flag))


def validate(o: Options, *, accounts_known: bool = True) -> None:
    """Raises BadInput naming the first input that breaks a rule.

    accounts_known=False: Coiled's account may still change (to what is in place), so the instance account is
    not compared with it yet."""
    _check(project_error(o.project))
    _check(account_error(o.service_account, o.project))
    _check(role_id_error(o.role_id))
    _check(region_error(o.region, o.gar))
    _check(registry_regions_error(o.registry_regions, o.gar))
    if o.zone is None:
        o.zone = f"{o.region}-{DEFAULT_ZONE_SUFFIX}"
    _check(zone_error(o.zone, o.region))
    _check(cidr_error(o.firewall_cidr))
    _check(ports_error(o.firewall_ports))
    if o.instance_service_account and o.create_instance_service_account:
        raise BadInput("Use either --instance-service-account or --create-instance-service-account, not both.")
    if o.no_instance_service_account and (o.instance_service_account or o.create_instance_service_account):
        raise BadInput("Use --no-instance-service-account alone, without --instance-service-account or "
                       "--create-instance-service-account.")
    if o.instance_service_account:
        _check(instance_account_error(o.instance_service_account, o.account_email if accounts_known else None))
    if accounts_known and o.create_instance_service_account and o.instance_email == o.account_email:
        raise BadInput(f"The separate instance account would be {o.account_email}, the Coiled service account "
                       "itself: choose another --service-account, or leave out --create-instance-service-account.")
    if o.key_file is not None:
        if o.no_local_key:
            raise BadInput("Use either --key-file or --no-local-key, not both.")
        if o.key_file.exists() and not o.key_file.is_file():
            raise BadInput(f"--key-file {str(o.key_file)!r} is not a file.")
        parent = o.key_file.parent
        if not o.key_file.exists() and parent.exists() and not parent.is_dir():
            raise BadInput(f"--key-file {str(o.key_file)!r} cannot be written: its parent is not a directory.")
    _check(output_error(o.output))
    if o.wait_timeout <= 0:
        raise BadInput("--wait-timeout must be a positive number of seconds.")
    check_wait_timeout(o.wait_timeout)
    check_zone_exists(o.region, o.zone)


def check_wait_timeout(seconds: float) -> None:
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_WAIT_TIMEOUT:
        raise BadInput(f"--wait-timeout {seconds} is not usable: give a number of seconds above 0 and at "
                       f"most {int(MAX_WAIT_TIMEOUT)}, for example 600.")


def check_zone_exists(region: str, zone: str | None) -> None:
    letters = ZONES.get(region, "")
    if zone and letters and zone.startswith(f"{region}-") and zone[-1] not in letters:
        names = ", ".join(f"{region}-{c}" for c in letters)
        raise BadInput(f"--zone {zone!r} does not exist: the zones of {region} are {names}.")


def refuse_empty(flags: dict[str, str | None]) -> None:
    """A flag given as "" is a mistake (an unset shell variable), not a request for the default."""
    for flag, value in flags.items():
        if value is not None and not value.strip():
            raise BadInput(f"{flag} is empty: give a value, or leave the flag out for the default.")


def read_network(cidr: str) -> tuple[str, str | None]:
    """The network a firewall reads from `cidr` (10.1.2.3/24 → 10.1.2.0/24, 10.0.0.7 → 10.0.0.7/32), and a
    sentence saying so when that is not what was written; text that is no network comes back as it is."""
    text = cidr.strip()
    if "/" not in text and cidr_error(f"{text}/32", "") is None:
        return f"{text}/32", f"Firewall network {text} has no prefix length: using {text}/32, that one address only."
    try:
        ipaddress.ip_network(text, strict=True)
        return text, None
    except ValueError:
        pass
    try:
        net = str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text, None
    return net, f"Firewall network {text} has host bits set: using its network {net}."


def parse_ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise BadInput(f"--firewall-ports {text!r} must be comma-separated port numbers, for example "
                       "22,8786,8787.") from None
    return tuple(sorted(set(ports)))  # each port once; a firewall's ports have no order
