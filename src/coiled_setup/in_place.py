"""What is in place now (Coiled's workspace, the dask config, the journal): the defaults of a re-run.

A setting the user does not give (flag or answer) keeps its value in place, so a re-run never undoes an
earlier choice it was not asked about."""

from __future__ import annotations

from dataclasses import dataclass, field

from coiled_setup import context
from coiled_setup.cloud import run_all
from coiled_setup.errors import BadInput
from coiled_setup.options import (
    DEFAULT_ZONE_SUFFIX,
    SA_EMAIL_RE,
    Options,
    cidr_error,
    default_instance_email,
    ports_error,
    region_error,
    zone_error,
)


@dataclass
class InPlace:
    account: str | None = None  # the control-plane account (email)
    account_source: str = ""  # where it was found, for the prompt
    instance: str | None = None  # the instance account Coiled holds (email), None when none
    firewall_cidr: str | None = None
    firewall_ports: tuple[int, ...] | None = None
    region: str | None = None
    zone: str | None = None
    preemptible: bool | None = None
    gar: bool | None = None  # False: set up without Artifact Registry
    # Which key Coiled holds ({client_email, private_key_id}); never the private half.
    coiled_credentials: dict = field(default_factory=dict)


def _project_of(email) -> str | None:
    m = SA_EMAIL_RE.match(email or "") if isinstance(email, str) else None
    return m.group(3) if m else None


def _firewall(spec) -> tuple[str | None, tuple[int, ...] | None]:
    """The first ingress rule of a firewall spec ({"ingress": [{"ports", "cidr"}]}) or a dask config firewall."""
    if isinstance(spec, dict) and isinstance(spec.get("ingress"), list):
        spec = spec["ingress"][0] if spec["ingress"] else None
    if not isinstance(spec, dict):
        return None, None
    cidr = spec.get("cidr") if isinstance(spec.get("cidr"), str) else None
    ports = spec.get("ports")
    ok = isinstance(ports, list) and ports and all(isinstance(p, int) and not isinstance(p, bool) for p in ports)
    return cidr, (tuple(ports) if ok else None)


def read(o: Options, coiled, journal) -> InPlace:
    """What Coiled's workspace holds (when uploading), else what this tool recorded locally."""
    cur = InPlace()
    config = context.backend_options_in_config()
    bo, settings, regions = {}, None, []
    if coiled is not None:  # the workspace's own settings and regions are where its defaults live (and take effect)
        bo, settings, regions = run_all([lambda: coiled.backend_options(keep=True),
                                         lambda: coiled.get_settings(keep=True),
                                         lambda: coiled.get_regions(keep=True)])
    options = (bo or {}).get("options") or {}
    creds = options.get("gcp_service_creds_dict") or {}
    cur.coiled_credentials = {k: creds.get(k) for k in ("client_email", "private_key_id") if creds.get(k)}
    # The accounts only count for the project they belong to; the firewall and region are the workspace's.
    if _project_of(creds.get("client_email")) == o.project:
        cur.account, cur.account_source = creds["client_email"], "what Coiled uses now"
        instance = options.get("instance_service_account")
        cur.instance = instance if isinstance(instance, str) and instance else None
        registry = options.get("registry") or {}
        if registry.get("type") != "gar" and not (journal.get("created") or {}).get("repository"):
            cur.gar = False
    elif _project_of(journal.get("account")) == o.project:
        cur.account, cur.account_source = journal.get("account"), "what coiled-setup set up last"
    if coiled is None:  # not uploading: the instance account this tool created, if any
        made = (journal.get("created") or {}).get("instance_account")
        cur.instance = made if _project_of(made) == o.project else None
    spec = settings.get("scheduler_firewall") if settings is not None else options.get("firewall_spec")
    cur.firewall_cidr, cur.firewall_ports = _firewall(spec)
    if cur.firewall_cidr is None:  # an earlier choice kept only in the dask config is not widened silently
        ingress = config.get("ingress")
        cur.firewall_cidr, cur.firewall_ports = _firewall({"ingress": ingress} if isinstance(ingress, list)
                                                          else config.get("firewall"))
    default = next((r.get("region") for r in regions if isinstance(r, dict) and r.get("default")), None)
    config_region = _first(config, "region_name", "region")
    region = default or options.get("gcp_region_name") or config_region
    cur.region = region if isinstance(region, str) else None
    # Zone and spot have no workspace setting: only the dask config (current names first) holds them.
    zone = _first(config, "zone_name", "zone")
    cur.zone = zone if isinstance(zone, str) and config_region == cur.region else None
    spot = _first(config, "spot", "preemptible")
    cur.preemptible = spot if isinstance(spot, bool) else None
    return cur


def _first(config: dict, *names):
    return next((config[n] for n in names if config.get(n) is not None), None)


def keep(o: Options, cur: InPlace) -> None:
    """Every setting the user did not give takes the value in place (when it is still a valid one)."""
    given = o.explicit
    if "service_account" not in given and cur.account:
        o.service_account = cur.account
    if "instance" not in given and cur.instance:
        # The account this tool creates keeps being maintained (its role and binding); another is only used.
        if cur.instance == default_instance_email(o.project):
            o.create_instance_service_account = True
        else:
            o.instance_service_account = cur.instance
    if "gar" not in given and cur.gar is False:
        o.gar = False
    if "firewall_cidr" not in given and cur.firewall_cidr and not cidr_error(cur.firewall_cidr):
        o.firewall_cidr = cur.firewall_cidr
    if "firewall_ports" not in given and cur.firewall_ports and not ports_error(cur.firewall_ports):
        o.firewall_ports = cur.firewall_ports
    if "region" not in given and cur.region and not region_error(cur.region, o.gar):
        o.region = cur.region
    if "zone" not in given:
        kept = cur.zone if cur.zone and cur.region == o.region and not zone_error(cur.zone, o.region) else None
        # gcloud's compute/zone, when it is in the region, else the default zone.
        default = o.zone if o.zone and not zone_error(o.zone, o.region) else f"{o.region}-{DEFAULT_ZONE_SUFFIX}"
        o.zone = kept or default
    if "preemptible" not in given and cur.preemptible is not None:
        o.preemptible = cur.preemptible


def check_instance_differs(o: Options) -> None:
    """The instance account kept from what is in place must not be the (newly chosen) Coiled account."""
    if "instance" not in o.explicit and o.instance_email and o.instance_email == o.account_email:
        raise BadInput(f"Coiled's instance account {o.instance_email} would be the Coiled service account itself: "
                       "pass --no-instance-service-account, or --instance-service-account with another account.")
